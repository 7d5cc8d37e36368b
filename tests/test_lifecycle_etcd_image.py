"""Flatcar's etcd image as a prerequisite: `lab up`'s preflight and `lab doctor` find it in the mirror or name the
command that puts it there, before anything is rendered or created.

Where they look is where the box check looked: the mirror answering at the lab's URL, asked as a registry (here
Debian's Distribution registry, seeded with skopeo), else the local store that `lab up` then serves (filled
through the store's API). `lab up` runs against the stand-in `vagrant` (tests/harness/standin_vagrant.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from harness.cli import lab
from harness.etcd_image import (
    TestImage,
    index_of,
    oci_layout_tar,
    push,
    put_in_store,
    small_image,
    write_oci_layout,
)
from harness.lifecycle_labs import install_standins, make_lab
from harness.registry import registry

from coreos_lab.doctor import check_etcd_image
from coreos_lab.errors import ExitCode
from coreos_lab.lab.plan import load_plan
from coreos_lab.mirror.images.store import ImageStore
from coreos_lab.prerequisites import DoctorContext, DoctorFinding

pytestmark = pytest.mark.integration

NODES = ["core-01", "core-02", "core-03"]
IMAGE = "quay.io/coreos/etcd:v3.5.16"  # Flatcar's, as the distro table says
FETCH = f"lab mirror image fetch {IMAGE}"


def flatcar_lab(base: Path, **etcd: str) -> tuple[Path, dict[str, str]]:
    lab_dir, env = make_lab(base, distro="flatcar", with_image=False)
    if etcd:
        set_lab_yaml(lab_dir, etcd=etcd)
    return lab_dir, env


def set_lab_yaml(lab_dir: Path, **settings: object) -> None:
    doc = yaml.safe_load((lab_dir / "lab.yaml").read_text())
    for key, value in settings.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    (lab_dir / "lab.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def image_findings(lab_dir: Path, *, mirror_answers: bool) -> list[DoctorFinding]:
    """What the check says for the lab, with a mirror answering at its URL (as check_mirror found) or not."""
    plan = load_plan(lab_dir)
    assert plan.mirror_root is not None
    ctx = DoctorContext(plan, plan.provider, plan.mirror_root)
    ctx.facts["mirror_metadata"] = {"versions": []} if mirror_answers else None
    return list(check_etcd_image(ctx))


def test_the_local_store_without_the_image_fails_with_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab_dir, env = flatcar_lab(tmp_path)
    root = Path(env["LAB_MIRROR_ROOT"])
    monkeypatch.setenv("LAB_MIRROR_ROOT", str(root))  # the lab's root is where `lab mirror` looks anyway
    [missing] = image_findings(lab_dir, mirror_answers=False)
    assert (missing.check, missing.level) == ("mirror-image", "fail")
    assert missing.detail == (
        f"etcd image {IMAGE} (as coreos/etcd:v3.5.16) is not in the mirror for linux/amd64 ({root}); "
        "the flatcar guests pull it from there"
    )
    assert missing.fix is not None and missing.fix.startswith(FETCH + " (or `lab mirror image import`")
    assert "etcd.image_source: upstream" in missing.fix

    put_in_store(root, small_image(), "coreos/etcd", "v3.5.16")
    [found] = image_findings(lab_dir, mirror_answers=False)
    assert (found.level, found.detail) == (
        "ok",
        f"etcd image {IMAGE} (as coreos/etcd:v3.5.16) is in the mirror ({root})",
    )


def test_the_fetch_command_names_the_labs_root_when_lab_mirror_would_look_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab_dir, env = flatcar_lab(tmp_path)
    monkeypatch.delenv("LAB_MIRROR_ROOT", raising=False)  # lab.yaml's root, then; `lab mirror`'s default is elsewhere
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(lab_dir)
    [missing] = image_findings(lab_dir, mirror_answers=False)
    assert missing.fix is not None and missing.fix.startswith(f"{FETCH} --root {env['LAB_MIRROR_ROOT']} (or")


def test_another_tag_of_the_image_is_not_the_image(tmp_path: Path) -> None:
    lab_dir, env = flatcar_lab(tmp_path, image="quay.io/coreos/etcd:v3.5.17")
    put_in_store(Path(env["LAB_MIRROR_ROOT"]), small_image(), "coreos/etcd", "v3.5.16")
    [finding] = image_findings(lab_dir, mirror_answers=False)
    assert finding.level == "fail" and finding.fix is not None
    assert finding.fix.startswith("lab mirror image fetch quay.io/coreos/etcd:v3.5.17")


def test_the_stored_image_must_hold_the_guests_platform(tmp_path: Path) -> None:
    """The guests are linux/amd64: an image (or an index) without that platform would 404 on their pull."""
    lab_dir, env = flatcar_lab(tmp_path)
    root = Path(env["LAB_MIRROR_ROOT"])
    arm, amd = small_image("arm", architecture="arm64"), small_image("amd")
    put_in_store(root, arm, "coreos/etcd", "v3.5.16")
    [plain] = image_findings(lab_dir, mirror_answers=False)
    assert plain.level == "fail" and "not in the mirror for linux/amd64" in plain.detail

    def store_index(images: dict[str, TestImage]) -> None:
        top = index_of(images)
        store = ImageStore(root)
        for img in images.values():
            for blob in img.blobs:
                store.write_blob(blob.data, blob.digest)
        store.write_blob(top.data, top.digest)
        store.tag_image("coreos/etcd", "v3.5.16", top.descriptor, source=None, platforms="all")

    store_index({"linux/arm64": arm})
    [arm_only] = image_findings(lab_dir, mirror_answers=False)
    assert arm_only.level == "fail"
    store_index({"linux/arm64": arm, "linux/amd64": amd})
    [both] = image_findings(lab_dir, mirror_answers=False)
    assert both.level == "ok", both


@pytest.mark.registry
def test_a_mirror_answering_at_the_labs_url_is_asked_as_a_registry(tmp_path: Path) -> None:
    """HEAD /v2/<repository>/manifests/<tag or digest>, as Docker asks; the local store is not looked at."""
    lab_dir, env = flatcar_lab(tmp_path)
    put_in_store(Path(env["LAB_MIRROR_ROOT"]), small_image(), "coreos/etcd", "v3.5.16")  # not where it is asked
    img = small_image()
    layout = write_oci_layout(tmp_path / "layout", img.manifest, list(img.blobs[1:]), "v3.5.16")
    with registry(tmp_path / "registry") as upstream:
        set_lab_yaml(lab_dir, mirror={"url": upstream.url})
        [missing] = image_findings(lab_dir, mirror_answers=True)
        assert missing.level == "fail" and missing.detail.endswith(f"not in the mirror for linux/amd64 ({upstream.url}); " + (
            "the flatcar guests pull it from there"
        ))  # fmt: skip
        push(layout, "v3.5.16", upstream.host, "coreos/etcd:v3.5.16")
        [found] = image_findings(lab_dir, mirror_answers=True)
        assert (found.level, found.detail) == (
            "ok",
            f"etcd image {IMAGE} (as coreos/etcd:v3.5.16) is in the mirror ({upstream.url})",
        )
        pinned = f"quay.io/coreos/etcd@{img.manifest.digest}"
        set_lab_yaml(lab_dir, etcd={"image": pinned})
        [by_digest] = image_findings(lab_dir, mirror_answers=True)
        assert by_digest.level == "ok", by_digest


def test_pulling_from_upstream_needs_nothing_in_the_mirror_and_coreos_no_image(tmp_path: Path) -> None:
    (tmp_path / "flatcar").mkdir()
    (tmp_path / "coreos").mkdir()
    lab_dir, _ = flatcar_lab(tmp_path / "flatcar", image_source="upstream")
    [upstream] = image_findings(lab_dir, mirror_answers=False)
    assert (upstream.level, upstream.detail) == (
        "ok",
        f"the guests pull {IMAGE} from its registry (etcd.image_source)",
    )
    coreos_dir, _ = make_lab(tmp_path / "coreos")
    assert image_findings(coreos_dir, mirror_answers=False) == []


@pytest.fixture
def standins(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    lab_dir, env = flatcar_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    return lab_dir, env


def test_up_without_the_image_exits_4_with_the_fetch_command_and_creates_nothing(
    standins: tuple[Path, dict[str, str]],
) -> None:
    lab_dir, env = standins
    run = lab("up", lab_dir, "--no-wait", env=env)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    assert f"error: etcd image {IMAGE} (as coreos/etcd:v3.5.16) is not in the mirror" in run.stderr
    assert f"hint: {FETCH} (or `lab mirror image import`" in run.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == ["lab.yaml"]  # nothing rendered, no token, no machine

    doctor = lab("doctor", lab_dir, "--json", env=env)
    assert doctor.returncode == ExitCode.MISSING_TOOL, doctor.stderr
    by_check = {f["check"]: f for f in doctor.json()["findings"]}
    assert by_check["mirror-image"]["level"] == "fail" and by_check["mirror-image"]["fix"].startswith(FETCH)
    assert by_check["mirror-box"]["level"] == "ok"


def test_up_with_the_image_in_the_store_renders_the_guests_pull_from_the_mirror(
    standins: tuple[Path, dict[str, str]],
) -> None:
    lab_dir, env = standins
    put_in_store(Path(env["LAB_MIRROR_ROOT"]), small_image(), "coreos/etcd", "v3.5.16")
    doctor = lab("doctor", lab_dir, "--json", env=env)
    assert {f["check"]: f["level"] for f in doctor.json()["findings"]}["mirror-image"] == "ok"
    run = lab("up", lab_dir, "--no-wait", "--json", env=env)
    assert run.returncode == 0, run.stderr
    user_data = (lab_dir / "user-data" / "core-01.yaml").read_text()
    assert 'Environment="ETCD_IMAGE=10.0.2.2:' in user_data and "/coreos/etcd:v3.5.16" in user_data


def test_up_pulling_from_upstream_needs_no_image_in_the_mirror(standins: tuple[Path, dict[str, str]]) -> None:
    lab_dir, env = standins
    run = lab("up", lab_dir, "--no-wait", "--json", env={**env, "LAB_ETCD_IMAGE_SOURCE": "upstream"})
    assert run.returncode == 0, run.stderr
    assert "ETCD_IMAGE=" not in (lab_dir / "user-data" / "core-01.yaml").read_text()


def test_doctor_asks_lab_mirror_serve_running_at_the_labs_url(standins: tuple[Path, dict[str, str]]) -> None:
    """The mirror answering at mirror.url is our own server: its registry answers the HEAD of the manifest."""
    from coreos_lab.server import EmbeddedServer

    lab_dir, env = standins
    plan = load_plan(lab_dir)
    assert plan.mirror_root is not None
    with EmbeddedServer(plan.mirror_root, port=plan.mirror_port):
        before = {f["check"]: f for f in lab("doctor", lab_dir, "--json", env=env).json()["findings"]}
        put_in_store(plan.mirror_root, small_image(), "coreos/etcd", "v3.5.16")
        after = {f["check"]: f for f in lab("doctor", lab_dir, "--json", env=env).json()["findings"]}
    assert before["mirror"]["detail"] == f"mirror reachable at {plan.mirror_url}"
    assert before["mirror-image"]["level"] == "fail" and f"({plan.mirror_url})" in before["mirror-image"]["detail"]
    assert after["mirror-image"]["level"] == "ok" and f"({plan.mirror_url})" in after["mirror-image"]["detail"]


def test_an_image_imported_with_lab_mirror_image_import_satisfies_preflight(
    tmp_path: Path, standins: tuple[Path, dict[str, str]]
) -> None:
    """The sneakernet way the VM end-to-end takes: an OCI layout tarball imported under the mirror's name."""
    lab_dir, env = standins
    img = small_image("imported")
    archive = oci_layout_tar(tmp_path / "etcd.tar", img.manifest, list(img.blobs[1:]), "v3.5.16")
    imported = lab("mirror", "image", "import", archive, "--name", "coreos/etcd:v3.5.16", env=env)
    assert imported.returncode == 0, imported.stderr
    run = lab("up", lab_dir, "--no-wait", "--json", env=env)
    assert run.returncode == 0, run.stderr
