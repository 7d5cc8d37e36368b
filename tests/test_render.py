"""`lab render`: golden outputs, user-data that reads back as intended, edit protection, the token lifecycle.

Golden files live in tests/golden/<case>/; the discovery token (random) is written there as `<token>`.
After an intended template change, regenerate and review them as tests/golden/README.md says.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from harness.user_data import etcd_environment, etcd_environments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coreos_lab.errors import BadInput, ExitCode, LabError
from coreos_lab.lab.config import load_config
from coreos_lab.lab.render import render_lab
from coreos_lab.lab.state import LabState
from coreos_lab.paths import discovery_dir

GOLDEN = Path(__file__).parent / "golden"
DOCKER_DROP_IN = {
    "name": "20-coreos-lab.conf",
    "content": '[Service]\nEnvironment="DOCKER_OPTS=--insecure-registry=10.0.2.2:8080"\n',
}
UNIT = "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/usr/bin/echo hello # not a comment\n"

CASES: dict[str, dict[str, Any]] = {
    "coreos-1": {"nodes": 1},
    "coreos-3": {},
    "coreos-5-proxies-extras": {
        "nodes": 5,
        "etcd": {"members": 3},
        "memory": 2048,
        "cpus": 2,
        "serial_logging": True,
        "expose_docker_tcp": 2375,
        "fleet": {"metadata": {"region": "lab"}},
        "machines": {"core-05": {"ip": "172.17.8.150", "metadata": {"disk": "ssd"}}},
        "forwarded_ports": [
            {"guest": 80, "host": 8080},
            {"guest": 53, "host": 5353, "protocol": "udp", "node": "core-02"},
        ],
        "shared_folders": [{"host": ".", "guest": "/home/core/share"}],
        "units": [
            {"name": "hello.service", "command": "start", "content": UNIT, "machines": ["core-01"]},
            {
                "name": "docker.service",
                "drop_ins": [{"name": "50-opts.conf", "content": '[Service]\nEnvironment="A=b c"'}],
            },
        ],
    },
    "coreos-3-static": {"discovery": {"mode": "static"}},
    "flatcar-3": {"distro": "flatcar", "version": "3815.2.0"},
    "flatcar-5-static": {"distro": "flatcar", "version": "3815.2.0", "nodes": 5, "discovery": {"mode": "static"}},
    "flatcar-1-upstream-image": {
        "distro": "flatcar",
        "version": "3815.2.0",
        "nodes": 1,
        "etcd": {"image_source": "upstream", "image": "registry.internal/etcd:v3.5.16"},
    },
}


@pytest.fixture
def mirror(mirror_root: Path) -> Path:
    mirror_with_boxes(mirror_root)
    return mirror_root


def render(lab_dir: Path, **kwargs: Any) -> Any:
    return render_lab(load_config(lab_dir, environ={}), **kwargs)


def rendered_files(lab_dir: Path) -> dict[str, str]:
    files = [lab_dir / "Vagrantfile", lab_dir / "config.rb", *sorted((lab_dir / "user-data").glob("*.yaml"))]
    return {str(p.relative_to(lab_dir)): p.read_text() for p in files}


@pytest.mark.parametrize("case", CASES)
def test_golden(tmp_path: Path, mirror: Path, case: str) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, **CASES[case])
    render(lab_dir)
    state = LabState.load(lab_dir)
    files = rendered_files(lab_dir)
    if state.token is not None:
        files = {rel: text.replace(state.token.token, "<token>") for rel, text in files.items()}
    golden_dir = GOLDEN / case
    expected = {str(p.relative_to(golden_dir)): p.read_text() for p in golden_dir.rglob("*") if p.is_file()}
    if os.environ.get("UPDATE_GOLDEN"):
        if os.environ.get("CI"):
            pytest.fail("UPDATE_GOLDEN is set in CI: goldens are regenerated and reviewed locally, never in CI")
        if files != expected:
            rewrite_golden(golden_dir, files)
            changed = sorted(rel for rel in files.keys() | expected.keys() if files.get(rel) != expected.get(rel))
            # A rewrite is a change to review, never a pass: the next run without UPDATE_GOLDEN compares.
            pytest.fail(
                f"goldens of {case} rewritten ({', '.join(changed)}): review `git diff tests/golden`, commit them"
            )
    assert files == expected


def rewrite_golden(golden_dir: Path, files: dict[str, str]) -> None:
    """The case's golden folder holds exactly `files`: stale ones go, so a renamed output shows in git diff."""
    for stale in (p for p in golden_dir.rglob("*") if p.is_file() and str(p.relative_to(golden_dir)) not in files):
        stale.unlink()
    for rel, text in files.items():
        (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (golden_dir / rel).write_text(text)


@pytest.mark.parametrize("case", CASES)
def test_user_data_reads_back(tmp_path: Path, mirror: Path, case: str) -> None:
    """Every user-data is `#cloud-config` YAML whose values read back exactly as the lab intends."""
    lab_dir = write_lab(tmp_path / "lab", mirror, **CASES[case])
    config = load_config(lab_dir, environ={})
    result = render_lab(config)
    members = [n for n in config.nodes if n.etcd_member]
    for node in config.nodes:
        text = (lab_dir / node.user_data).read_text()
        assert text.startswith("#cloud-config\n")
        doc = yaml.safe_load(text)
        coreos = doc["coreos"]
        assert coreos["update"]["reboot-strategy"] == "off"  # a string, not YAML's false
        env = etcd_environment(text)
        assert env["ETCD_NAME"] == node.name
        assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://0.0.0.0:2379"
        if node.etcd_member:
            assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{node.ip}:2379"
            assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{node.ip}:2380"
            assert env["ETCD_LISTEN_PEER_URLS"] == f"http://{node.ip}:2380"
            assert "ETCD_PROXY" not in env
        else:
            assert env["ETCD_PROXY"] == "on"
        if config.discovery_mode == "static":
            assert env["ETCD_INITIAL_CLUSTER"] == ",".join(f"{m.name}=http://{m.ip}:2380" for m in members)
            assert "ETCD_DISCOVERY" not in env
        else:
            assert result.discovery is not None and env["ETCD_DISCOVERY"] == result.discovery.url
            assert env["ETCD_DISCOVERY"].startswith("http://10.0.2.2:8080/")
        units = {u["name"]: u for u in coreos["units"]}
        if config.distro == "coreos":
            assert {k: v for k, v in coreos["etcd2"].items()} == {
                k.removeprefix("ETCD_").lower().replace("_", "-"): v for k, v in env.items()
            }
            assert coreos["fleet"] == {"public-ip": node.ip, "metadata": node.fleet_metadata}
            assert units["etcd2.service"]["command"] == units["fleet.service"]["command"] == "start"
            assert "ETCD_IMAGE" not in env  # etcd2 is on the host
        else:
            assert "etcd2" not in coreos and "fleet" not in coreos and "fleet.service" not in units
            assert units["etcd-member.service"]["command"] == "start"
            assert env["ETCD_ENABLE_V2"] == "true"
            assert env.get("ETCD_IMAGE") == config.guest_etcd_image
            if config.insecure_registry:  # etcd's image from the mirror: Docker may pull from it, and only it
                assert env["ETCD_IMAGE"] == "10.0.2.2:8080/coreos/etcd:v3.5.16"
                assert units["docker.service"] == {"name": "docker.service", "drop-ins": [DOCKER_DROP_IN]}
            else:
                assert "docker.service" not in units
    if case == "coreos-5-proxies-extras":
        first = yaml.safe_load((lab_dir / "user-data/core-01.yaml").read_text())["coreos"]
        units = {u["name"]: u for u in first["units"]}
        assert units["hello.service"]["content"] == UNIT
        assert units["docker.service"]["drop-ins"] == [
            {"name": "50-opts.conf", "content": '[Service]\nEnvironment="A=b c"\n'}
        ]
        assert "ListenStream=2375" in units["docker-tcp.socket"]["content"]
        second = yaml.safe_load((lab_dir / "user-data/core-02.yaml").read_text())["coreos"]
        assert "hello.service" not in {u["name"] for u in second["units"]}
        assert second["fleet"]["metadata"] == "role=services,region=lab"
        fifth = yaml.safe_load((lab_dir / "user-data/core-05.yaml").read_text())["coreos"]
        assert fifth["fleet"] == {"public-ip": "172.17.8.150", "metadata": "role=worker,region=lab,disk=ssd"}


def test_etcd_environments_per_machine(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, distro="flatcar", version="3815.2.0", nodes=4, etcd={"members": 3})
    render(lab_dir)
    envs = etcd_environments(lab_dir)
    assert list(envs) == ["core-01", "core-02", "core-03", "core-04"]
    assert envs["core-04"]["ETCD_PROXY"] == "on"
    token = LabState.load(lab_dir).token
    assert token is not None and envs["core-01"]["ETCD_DISCOVERY"] == f"http://10.0.2.2:8080/{token.token}"


def test_box_pins_and_provisioning_in_vagrantfile(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(
        tmp_path / "lab", mirror, distro="flatcar", version="3815.2.0", mirror={"url": "http://127.0.0.1:8181"}
    )
    render(lab_dir)
    text = (lab_dir / "Vagrantfile").read_text()
    assert 'BOX_NAME = "flatcar-stable"' in text and 'BOX_VERSION = "3815.2.0"' in text
    assert 'BOX_URL = "http://127.0.0.1:8181/flatcar-stable"' in text
    assert "config.ssh.insert_key = false" in text
    assert 'USER_DATA_DIR = "/var/lib/flatcar-vagrant"' in text
    assert 'destination: "/tmp/vagrantfile-user-data"' in text
    # Ruby 3.3 removed File.exists?; Kernel#open no longer opens URLs.
    assert "exists?" not in text and "open(" not in text
    token = LabState.load(lab_dir).token
    assert token is not None and token.guest_url == f"http://10.0.2.2:8181/{token.token}"


def test_rerender_is_stable_and_keeps_the_token(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    first = render(lab_dir)
    assert first.token == "new" and len(first.written) == 5
    token = LabState.load(lab_dir).token
    assert token is not None and token.size == 3 and token.mode == "local"
    # The token exists in the discovery store the mirror server serves, sized to the etcd members.
    from coreos_lab.discovery.store import DiscoveryStore

    store = DiscoveryStore(discovery_dir(mirror))
    try:
        stored = store.token(token.token)
    finally:
        store.close()
    assert stored is not None and stored.size == 3
    second = render(lab_dir)
    assert second.token == "kept" and second.written == [] and len(second.unchanged) == 5
    assert LabState.load(lab_dir).token == token


def test_token_lifecycle(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=5, etcd={"members": 3})
    render(lab_dir)
    state = LabState.load(lab_dir)
    first = state.token
    assert first is not None and first.size == 3

    # Before the cluster exists, a changed member count retires the token (etcd may have registered with it).
    write_lab(lab_dir, mirror, nodes=5, etcd={"members": 5})
    assert render(lab_dir).token == "new"
    state = LabState.load(lab_dir)
    second = state.token
    assert second is not None and second.size == 5 and state.used_tokens == [first.token]

    # An existing cluster keeps its token, and refuses a lab.yaml that would need another.
    state.mark_created()
    assert render(lab_dir).token == "kept"
    write_lab(lab_dir, mirror, nodes=5, etcd={"members": 3})
    with pytest.raises(
        BadInput,
        match=r"the cluster exists and was created with a local discovery token for 5 etcd members at http://10\.0\.2\.2:8080/",
    ):
        render(lab_dir)
    assert LabState.load(lab_dir).token == second

    # Destroyed: the token is used up and never rendered again.
    LabState.load(lab_dir).mark_destroyed()
    state = LabState.load(lab_dir)
    assert state.token is None and state.used_tokens == [first.token, second.token] and not state.cluster_exists
    assert render(lab_dir).token == "new"
    third = LabState.load(lab_dir).token
    assert third is not None and third.token not in (first.token, second.token) and third.size == 3
    user_data = "".join(rendered_files(lab_dir).values())
    assert third.token in user_data and first.token not in user_data and second.token not in user_data


def test_static_mode_needs_no_token(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, discovery={"mode": "static"})
    assert render(lab_dir).token == "none"
    assert LabState.load(lab_dir).token is None
    assert not discovery_dir(mirror).exists()


def test_edited_file_is_refused_then_force_keeps_copy(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    render(lab_dir)
    vagrantfile = lab_dir / "Vagrantfile"
    edited = vagrantfile.read_text() + "# my tweak\n"
    vagrantfile.write_text(edited)
    before = rendered_files(lab_dir)
    write_lab(lab_dir, mirror, memory=2048)
    with pytest.raises(LabError, match="Vagrantfile: was edited since the last render") as caught:
        render(lab_dir)
    assert caught.value.exit_code == ExitCode.USAGE
    assert rendered_files(lab_dir) == before  # nothing written

    result = render(lab_dir, force=True)
    assert len(result.kept_copies) == 1 and result.kept_copies[0].startswith("Vagrantfile.orig-")
    assert (lab_dir / result.kept_copies[0]).read_text() == edited
    assert "# my tweak" not in vagrantfile.read_text()
    assert "$vm_memory = 2048" in (lab_dir / "config.rb").read_text()
    assert render(lab_dir).written == []  # and the new file is ours again


def test_cli_force_replaces_an_edited_file_and_keeps_the_edit(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    assert lab("render", lab_dir).returncode == 0
    vagrantfile = lab_dir / "Vagrantfile"
    rendered = vagrantfile.read_text()
    vagrantfile.write_text(rendered + "# my tweak\n")
    refused = lab("render", lab_dir)
    assert refused.returncode == ExitCode.USAGE
    assert "Vagrantfile: was edited since the last render" in refused.stderr and "--force" in refused.stderr
    forced = lab("render", lab_dir, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    doc = forced.json()
    assert doc["written"] == ["Vagrantfile"] and doc["token"] == "kept"
    (copy,) = doc["kept_copies"]
    assert copy.startswith("Vagrantfile.orig-") and (lab_dir / copy).read_text() == rendered + "# my tweak\n"
    assert vagrantfile.read_text() == rendered


def test_foreign_file_is_not_overwritten(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    (lab_dir / "user-data").mkdir()
    (lab_dir / "user-data" / "core-02.yaml").write_text("#cloud-config\n# hand written\n")
    run = lab("render", lab_dir)
    assert run.returncode == ExitCode.USAGE
    assert "core-02.yaml: exists and was not written by `lab render`" in run.stderr
    assert not (lab_dir / "Vagrantfile").exists() and not (lab_dir / ".lab").exists()


def test_fewer_machines_removes_their_user_data(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=3, discovery={"mode": "static"})
    render(lab_dir)
    write_lab(lab_dir, mirror, nodes=1, discovery={"mode": "static"})
    result = render(lab_dir)
    assert result.removed == ["user-data/core-02.yaml", "user-data/core-03.yaml"]
    assert sorted(p.name for p in (lab_dir / "user-data").iterdir()) == ["core-01.yaml"]
    assert [n["name"] for n in LabState.load(lab_dir).nodes] == ["core-01"]


def test_user_template_override(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, discovery={"mode": "static"})
    (lab_dir / "templates").mkdir()
    (lab_dir / "templates" / "config.rb.j2").write_text(
        "# {{ generated_mark }}\n$vm_memory = {{ settings.memory }}\n$vm_cpus = 4\n"
        "$vm_gui = false\n$vb_cpuexecutioncap = 50\n$forwarded_ports = []\n$shared_folders = {}\n"
        "$share_home = false\n$expose_docker_tcp = nil\n$enable_serial_logging = false\n"
    )
    render(lab_dir)
    assert "$vm_cpus = 4" in (lab_dir / "config.rb").read_text()
    (lab_dir / "templates" / "config.rb.j2").write_text("{{ no_such_thing }}\n")
    with pytest.raises(BadInput, match=r"config.rb.j2:1: template error: 'no_such_thing' is undefined"):
        render(lab_dir)


def test_cli_render_json(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=2)
    run = lab("render", lab_dir, "--json", "--distro", "flatcar", "--version", "3815.2.0")
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["written"] == ["Vagrantfile", "config.rb", "user-data/core-01.yaml", "user-data/core-02.yaml"]
    assert doc["token"] == "new" and doc["discovery"]["url"].startswith("http://10.0.2.2:8080/")
    assert "etcd-member.service" in (lab_dir / "user-data" / "core-01.yaml").read_text()


def test_flatcar_docker_drop_ins_of_the_lab_and_the_user_both_stay(tmp_path: Path, mirror: Path) -> None:
    """The user's own docker.service drop-in is a unit entry of its own beside the lab's registry drop-in:
    coreos-cloudinit writes both."""
    own = {"name": "50-opts.conf", "content": '[Service]\nEnvironment="A=b"\n'}
    units = [{"name": "docker.service", "drop_ins": [own]}]
    lab_dir = write_lab(tmp_path / "lab", mirror, distro="flatcar", version="3815.2.0", nodes=1, units=units)
    render(lab_dir)
    entries = yaml.safe_load((lab_dir / "user-data/core-01.yaml").read_text())["coreos"]["units"]
    docker = [u["drop-ins"] for u in entries if u["name"] == "docker.service"]
    assert docker == [[DOCKER_DROP_IN], [own]]


def test_cli_render_refuses_a_flatcar_mirror_with_a_path(tmp_path: Path, mirror: Path) -> None:
    """Docker finds a registry only at /v2/ of a host:port: a mirror under a path cannot serve etcd's image."""
    lab_dir = write_lab(tmp_path / "lab", mirror, distro="flatcar", version="3815.2.0")
    run = lab("render", lab_dir, "--mirror-url", "http://127.0.0.1:8080/mirror")
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "mirror.url (from flag --mirror-url): 'http://127.0.0.1:8080/mirror' has a path (/mirror)" in run.stderr
    assert "etcd.image_source: upstream" in run.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == ["lab.yaml"]
    upstream = lab("render", lab_dir, "--mirror-url", "http://127.0.0.1:8080/mirror", "--etcd-image-source", "upstream")
    assert upstream.returncode == 0, upstream.stderr
    text = (lab_dir / "user-data/core-01.yaml").read_text()
    assert "ETCD_IMAGE=" not in text and "docker.service" not in text  # the unit's default image, from upstream


def test_public_mode_asks_the_discovery_service(tmp_path: Path, mirror: Path) -> None:
    """A second server on loopback stands in for a public discovery service (`/new?size=N`)."""
    from coreos_lab.server import EmbeddedServer

    with EmbeddedServer(tmp_path / "public", port=0) as public:
        lab_dir = write_lab(
            tmp_path / "lab", mirror, nodes=4, etcd={"members": 3}, discovery={"mode": "public", "url": public.url}
        )
        result = render(lab_dir)
        token = LabState.load(lab_dir).token
        assert token is not None and token.mode == "public" and token.size == 3
        assert token.url.startswith(public.url + "/") and token.guest_url == token.url
        assert etcd_environments(lab_dir)["core-04"]["ETCD_DISCOVERY"] == token.url
        size = json.loads(urllib.request.urlopen(f"{token.url}/_config/size", timeout=5).read())
        assert size["node"]["value"] == "3"
        assert result.token == "new" and render(lab_dir).token == "kept"


def test_public_mode_with_the_service_unreachable_writes_nothing(tmp_path: Path, mirror: Path) -> None:
    import socket

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    lab_dir = write_lab(tmp_path / "lab", mirror, discovery={"mode": "public", "url": url})
    with pytest.raises(LabError) as caught:
        render(lab_dir)
    assert f"{url}/new?size=3 is unreachable" in caught.value.message
    assert caught.value.hint is not None and "discovery.url in lab.yaml" in caught.value.hint
    assert sorted(p.name for p in lab_dir.iterdir()) == ["lab.yaml"]


@pytest.mark.parametrize("template", ["user-data-coreos.yaml.j2", "Vagrantfile.j2"])
def test_a_failed_template_render_mints_no_token(tmp_path: Path, mirror: Path, template: str) -> None:
    """A broken template is found by a trial render before the token is minted: the discovery store gains no
    token, the lab no state; once the template is fixed, the render mints one."""
    from coreos_lab.discovery.store import DiscoveryStore

    lab_dir = write_lab(tmp_path / "lab", mirror)
    (lab_dir / "templates").mkdir()
    (lab_dir / "templates" / template).write_text("{{ discovery.url }} {{ no_such_thing }}\n")
    run = lab("render", lab_dir)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"{template}:1: template error: 'no_such_thing' is undefined" in run.stderr
    assert not discovery_dir(mirror).exists() and not (lab_dir / ".lab").exists()
    (lab_dir / "templates" / template).unlink()
    assert render(lab_dir).token == "new"
    store = DiscoveryStore(discovery_dir(mirror))
    try:
        assert [t.token for t in store.tokens()] == [LabState.load(lab_dir).token.token]  # type: ignore[union-attr]
    finally:
        store.close()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_STATE_KEYS = ("created_at", "token", "used_tokens", "cluster_created_at", "destroyed_at", "rendered", "pending")
_TOKEN = {"token": "t", "url": "u", "guest_url": "g", "size": 3, "mode": "local", "server": "s", "created_at": "c"}


@st.composite
def _damaged_states(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": 1, "created_at": "2020-01-01T00:00:00Z", "token": dict(_TOKEN)}
    doc.update(draw(st.dictionaries(st.sampled_from(_STATE_KEYS), _JSON, max_size=3)))
    if isinstance(doc.get("token"), dict):
        doc["token"].update(draw(st.dictionaries(st.sampled_from(sorted(_TOKEN)), _JSON, max_size=2)))
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=_damaged_states())
def test_a_damaged_state_file_is_named_never_a_crash(tmp_path: Path, mirror: Path, state: dict[str, Any]) -> None:
    """`.lab/state.json` with any JSON in its fields (edited, or from an older version): render works or refuses
    with exit 2 naming the file."""
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=1)
    (lab_dir / ".lab").mkdir(exist_ok=True)
    (lab_dir / ".lab" / "state.json").write_text(json.dumps(state))
    for name in ("Vagrantfile", "config.rb", "user-data/core-01.yaml"):
        (lab_dir / name).unlink(missing_ok=True)
    try:
        render(lab_dir)
    except BadInput as exc:
        assert exc.exit_code == ExitCode.USAGE
        assert "state.json: damaged lab state" in exc.message or "the cluster exists" in exc.message


def test_a_deeply_nested_state_file_is_named(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    (lab_dir / ".lab").mkdir()
    (lab_dir / ".lab" / "state.json").write_text('{"created_at": ' + "[" * 100_000 + "]" * 100_000 + "}")
    run = lab("render", lab_dir)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"{lab_dir / '.lab' / 'state.json'}: damaged lab state (RecursionError" in run.stderr


def test_an_edited_state_file_cannot_make_render_delete_other_files(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=1)
    render(lab_dir)
    victim = tmp_path / "victim.yaml"
    victim.write_text("mine\n")
    state = json.loads((lab_dir / ".lab" / "state.json").read_text())
    state["rendered"]["user-data/../../victim.yaml"] = "0" * 64
    (lab_dir / ".lab" / "state.json").write_text(json.dumps(state))
    assert render(lab_dir).removed == []
    assert victim.read_text() == "mine\n"
