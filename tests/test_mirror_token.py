"""A private mirror (`lab mirror serve --token-file`) against real clients: HTTP requests, and the real Vagrant
CLI (2.3.4) sending the token the ways it can (VAGRANT_SERVER_URL + VAGRANT_CLOUD_TOKEN, as a header or, with
VAGRANT_SERVER_ACCESS_TOKEN_BY_URL, as `?access_token=`)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.boxes import add_box
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from harness.mirror import MirrorProcess, mirror_server
from test_mirror_vagrant import installed_boxes, vagrant
from test_render_vagrant import vagrant as vagrant_in_lab

from coreos_lab.doctor import fetch_box_metadata
from coreos_lab.errors import ExitCode
from coreos_lab.lab.config import load_config
from coreos_lab.lab.plan import plan_from_config
from coreos_lab.lab.render import render_lab
from coreos_lab.mirror.store import MirrorStore

pytestmark = pytest.mark.integration

TOKEN = "s3cret-Token_0123456789abcdef"


def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "mirror-token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def server(mirror_root: Path, token_file: Path) -> Iterator[MirrorProcess]:
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    with mirror_server(mirror_root, "--token-file", str(token_file)) as srv:
        yield srv


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/coreos-stable", {}),
        ("/coreos-stable", {"Authorization": "Bearer wrong"}),
        ("/coreos-stable", {"Authorization": f"Bearer {TOKEN}x"}),
        ("/coreos-stable", {"Authorization": f"Basic {TOKEN}"}),
        ("/coreos-stable?access_token=wrong", {}),
        ("/coreos-stable/1.0.0/virtualbox-amd64.box", {}),
        ("/", {}),
    ],
    ids=["missing", "wrong", "longer", "not-bearer", "wrong-query", "box", "index"],
)
def test_missing_or_wrong_token_is_a_401(server: MirrorProcess, path: str, headers: dict[str, str]) -> None:
    status, answer_headers = status_of(server.url + path, headers)
    assert status == 401
    assert answer_headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/coreos-stable", {"Authorization": f"Bearer {TOKEN}"}),
        ("/coreos-stable/1.0.0/virtualbox-amd64.box", {"Authorization": f"bearer {TOKEN}"}),
        (f"/coreos-stable?access_token={TOKEN}", {}),
    ],
    ids=["header", "header-box", "query"],
)
def test_the_token_opens_the_mirror(server: MirrorProcess, path: str, headers: dict[str, str]) -> None:
    assert status_of(server.url + path, headers)[0] == 200


def test_the_access_log_does_not_keep_a_token_sent_in_the_url(server: MirrorProcess) -> None:
    assert status_of(f"{server.url}/coreos-stable?access_token={TOKEN}")[0] == 200
    (line,) = server.access_lines("/coreos-stable?access_token=***")
    assert " 200 " in line
    assert TOKEN not in "\n".join(server.lines)


def test_discovery_and_the_registry_stay_open_for_guests(server: MirrorProcess) -> None:
    assert status_of(f"{server.url}/v2/")[0] == 200
    assert status_of(f"{server.url}/new")[0] != 401
    assert status_of(f"{server.url}/{'0' * 32}")[0] != 401


@pytest.mark.parametrize("content", ["", "  \n", "two words\n"], ids=["empty", "blank", "two-words"])
def test_unusable_token_file_is_a_usage_error(mirror_root: Path, tmp_path: Path, content: str) -> None:
    bad = tmp_path / "token"
    bad.write_text(content)
    run = lab("mirror", "serve", "--root", mirror_root, "--port", "0", "--token-file", bad)
    assert run.returncode == ExitCode.USAGE
    assert f"--token-file {bad}" in run.stderr


def test_missing_token_file_is_a_usage_error(mirror_root: Path, tmp_path: Path) -> None:
    run = lab("mirror", "serve", "--root", mirror_root, "--port", "0", "--token-file", tmp_path / "nope")
    assert run.returncode == ExitCode.USAGE
    assert "nope" in run.stderr


@pytest.mark.vagrant
@pytest.mark.parametrize("by_url", [False, True], ids=["header", "access_token"])
def test_vagrant_box_add_with_the_token(server: MirrorProcess, tmp_path: Path, by_url: bool) -> None:
    home = tmp_path / "vagrant-home"
    home.mkdir()
    env = {"VAGRANT_SERVER_URL": server.url, "VAGRANT_CLOUD_TOKEN": TOKEN}
    if by_url:
        env["VAGRANT_SERVER_ACCESS_TOKEN_BY_URL"] = "1"
    run = vagrant(home, "box", "add", f"{server.url}/coreos-stable", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(home) == [("coreos-stable", "1.0.0")]
    assert TOKEN not in "\n".join(server.lines)


@pytest.mark.vagrant
def test_vagrant_box_add_without_the_token_fails_clearly(server: MirrorProcess, tmp_path: Path) -> None:
    home = tmp_path / "vagrant-home"
    home.mkdir()
    run = vagrant(home, "box", "add", f"{server.url}/coreos-stable")
    assert run.returncode != 0
    assert "401" in run.stdout + run.stderr
    assert installed_boxes(home) == []


def lab_files_text(lab_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(lab_dir.rglob("*")) if p.is_file())


@pytest.mark.vagrant
def test_rendered_vagrantfile_reads_the_token_file_and_holds_no_secret(tmp_path: Path, mirror_root: Path) -> None:
    mirror_with_boxes(mirror_root)
    token_file = tmp_path / "secrets" / "mirror-token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    lab_dir = write_lab(tmp_path / "lab", mirror_root, mirror={"token_file": str(token_file)})
    render_lab(load_config(lab_dir, environ={}))
    assert TOKEN not in lab_files_text(lab_dir)
    assert f"MIRROR_TOKEN_FILE = {str(token_file)!r}".replace("'", '"') in (lab_dir / "Vagrantfile").read_text()
    run = vagrant_in_lab(lab_dir, tmp_path / "vagrant.d", "validate", "--ignore-provider")
    assert run.returncode == 0, run.stdout + run.stderr
    token_file.unlink()
    run = vagrant_in_lab(lab_dir, tmp_path / "vagrant.d", "validate", "--ignore-provider")
    assert run.returncode != 0
    assert f"mirror.token_file (lab.yaml): {token_file} is not a file" in run.stdout + run.stderr


@pytest.mark.vagrant
@pytest.mark.parametrize("right_token", [True, False], ids=["right", "wrong"])
def test_vagrant_sends_the_token_from_the_rendered_vagrantfile(
    tmp_path: Path, mirror_root: Path, token_file: Path, right_token: bool
) -> None:
    """`vagrant box outdated` in the lab fetches the box metadata with the Vagrantfile's box_download_options
    (the path `vagrant up` takes, HandleBox, passes the same options; VirtualBox cannot run here, so a stand-in
    `VBoxManage` answers the `--version` Vagrant's provider asks first)."""
    mirror_with_boxes(mirror_root)
    with mirror_server(mirror_root, "--token-file", str(token_file)) as srv:
        home = tmp_path / "vagrant.d"
        home.mkdir()
        env = {"VAGRANT_SERVER_URL": srv.url, "VAGRANT_CLOUD_TOKEN": TOKEN}
        run = vagrant(home, "box", "add", "--box-version", "1068.8.0", f"{srv.url}/coreos-stable", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        lab_token = tmp_path / "lab-token"
        lab_token.write_text(TOKEN if right_token else "not-the-token")
        lab_dir = write_lab(tmp_path / "lab", mirror_root, mirror={"url": srv.url, "token_file": str(lab_token)})
        render_lab(load_config(lab_dir, environ={}))
        stand_in = tmp_path / "bin"
        stand_in.mkdir()
        (stand_in / "VBoxManage").write_text(
            '#!/bin/sh\nif [ "$1" = "--version" ]; then echo 7.0.14r161095; exit 0; fi\nexit 1\n'
        )
        (stand_in / "VBoxManage").chmod(0o755)
        srv.lines.clear()
        run = vagrant_in_lab(lab_dir, home, "box", "outdated", "--force", "--machine", "core-01", path_prefix=stand_in)
        metadata_lines = srv.access_lines("/coreos-stable")
    output = run.stdout + run.stderr
    assert metadata_lines, output
    if right_token:
        assert run.returncode == 0, output
        assert "outdated!" in output or "up to date" in output, output
        assert all('" 200 ' in line for line in metadata_lines), metadata_lines
    else:
        assert all('" 401 ' in line for line in metadata_lines), metadata_lines
        assert "401" in output, output


def test_lab_init_records_the_token_file_path_never_the_token(tmp_path: Path, mirror_root: Path) -> None:
    mirror_with_boxes(mirror_root)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mirror-token").write_text(TOKEN + "\n")
    lab_dir = tmp_path / "lab"
    run = lab("init", lab_dir, "--root", mirror_root, "--mirror-token-file", "secrets/mirror-token", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    absolute = str(tmp_path / "secrets" / "mirror-token")
    assert f'token_file: "{absolute}"' in (lab_dir / "lab.yaml").read_text()
    assert lab("render", lab_dir).returncode == 0
    assert f'MIRROR_TOKEN_FILE = "{absolute}"' in (lab_dir / "Vagrantfile").read_text()
    assert TOKEN not in lab_files_text(lab_dir)


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_lab_preflight_reads_a_private_mirror_with_the_labs_token(
    tmp_path: Path, mirror_root: Path, token_file: Path, with_token: bool
) -> None:
    """What `lab up`/`lab doctor` ask the mirror before starting: its metadata for the lab's box."""
    mirror_with_boxes(mirror_root)
    with mirror_server(mirror_root, "--token-file", str(token_file)) as srv:
        mirror = {"url": srv.url, **({"token_file": str(token_file)} if with_token else {})}
        lab_dir = write_lab(tmp_path / "lab", mirror_root, mirror=mirror)
        metadata = fetch_box_metadata(plan_from_config(load_config(lab_dir, environ={})))
    if with_token:
        assert metadata is not None and metadata["name"] == "coreos-stable"
    else:
        assert metadata is None
