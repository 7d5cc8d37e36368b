"""lab.yaml: defaults, precedence with sources, node layout, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coreos_lab.distros import DISTROS
from coreos_lab.errors import BadInput, ExitCode
from coreos_lab.lab.config import load_config
from coreos_lab.lab.labfile import init_lab
from coreos_lab.lab.render import render_files
from coreos_lab.lab.settings import SETTINGS, SETTINGS_BY_PATH, STRUCTURED
from coreos_lab.lab.tokens import Discovery


@pytest.fixture
def mirror(mirror_root: Path) -> Path:
    mirror_with_boxes(mirror_root)
    return mirror_root


def test_defaults_follow_coreos_vagrant(tmp_path: Path, mirror: Path) -> None:
    config = load_config(write_lab(tmp_path / "lab", mirror), environ={})
    assert config.box_name == "coreos-stable"
    assert [(n.name, n.ip, n.etcd_member) for n in config.nodes] == [
        ("core-01", "172.17.8.101", True),
        ("core-02", "172.17.8.102", True),
        ("core-03", "172.17.8.103", True),
    ]
    assert config.box_metadata_url == "http://127.0.0.1:8080/coreos-stable"
    assert config.guest_mirror_url == "http://10.0.2.2:8080"
    assert config.user_data_dir == "/var/lib/coreos-vagrant"
    assert config.sources["nodes"] == "default"
    assert config.sources["version"] == "lab.yaml"


def test_precedence_default_file_env_flag(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=5, memory=2048, cpus=2)
    env = {"LAB_NODES": "4", "LAB_MEMORY": "1536", "LAB_GUI": "yes"}
    config = load_config(lab_dir, environ=env, flags={"nodes": 2, "memory": None})
    assert (config["nodes"], config.sources["nodes"]) == (2, "flag --nodes")
    assert (config["memory"], config.sources["memory"]) == (1536, "env LAB_MEMORY")
    assert (config["cpus"], config.sources["cpus"]) == (2, "lab.yaml")
    assert (config["gui"], config.sources["gui"]) == (True, "env LAB_GUI")
    assert (config["subnet"], config.sources["subnet"]) == ("172.17.8.0/24", "default")
    # Dependent defaults: members follow the node count (up to 3).
    assert config.etcd_members == 2


def test_every_setting_has_env_and_flag_names() -> None:
    envs = {s.env for s in SETTINGS}
    assert "LAB_ETCD_MEMBERS" in envs and "LAB_MIRROR_URL" in envs and "LAB_MIRROR_ROOT" in envs
    assert len(envs) == len(SETTINGS)
    assert {s.flag for s in SETTINGS if s.path in ("etcd.members", "mirror.root")} == {"--etcd-members", "--root"}


def test_members_proxies_roles_and_metadata(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(
        tmp_path / "lab",
        mirror,
        nodes=5,
        subnet="10.9.0",
        fleet={"metadata": {"region": "lab", "role": "overridden"}},
        machines={"core-04": {"ip": "10.9.0.50", "metadata": {"disk": "ssd"}}},
    )
    config = load_config(lab_dir, environ={})
    assert config.etcd_members == 3
    assert [n.ip for n in config.nodes] == ["10.9.0.101", "10.9.0.102", "10.9.0.103", "10.9.0.50", "10.9.0.105"]
    assert [n.etcd_member for n in config.nodes] == [True, True, True, False, False]
    assert config.nodes[0].fleet_metadata == "role=overridden,region=lab"
    assert config.nodes[3].fleet_metadata == "role=overridden,region=lab,disk=ssd"


def test_flatcar_lts_and_guest_host(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(
        tmp_path / "lab",
        mirror,
        distro="flatcar",
        channel="lts",
        version="3033.3.18",
        mirror={"url": "http://127.0.0.1:9999/", "guest_host": "192.168.121.1"},
    )
    config = load_config(lab_dir, environ={})
    assert config.box_name == "flatcar-lts"
    assert config.user_data_dir == "/var/lib/flatcar-vagrant"
    assert config.mirror_url == "http://127.0.0.1:9999"
    assert config.guest_mirror_url == "http://192.168.121.1:9999"


FLATCAR: dict[str, Any] = {"distro": "flatcar", "version": "3815.2.0"}
DIGEST = "sha256:" + "ab" * 32

ETCD_IMAGES: list[tuple[str, dict[str, Any], dict[str, str], str | None, str | None]] = [
    # (case, lab.yaml settings, environment, the guests' ETCD_IMAGE, the registry Docker allows over HTTP)
    ("flatcar default", FLATCAR, {}, "10.0.2.2:8080/coreos/etcd:v3.5.16", "10.0.2.2:8080"),
    (
        "own registry with a port",
        {**FLATCAR, "etcd": {"image": "registry.internal:5000/team/etcd:v3.5.17"}},
        {},
        "10.0.2.2:8080/team/etcd:v3.5.17",
        "10.0.2.2:8080",
    ),
    ("docker hub name", FLATCAR, {"LAB_ETCD_IMAGE": "etcd"}, "10.0.2.2:8080/library/etcd:latest", "10.0.2.2:8080"),
    (
        "pinned by digest",
        {**FLATCAR, "etcd": {"image": f"quay.io/coreos/etcd@{DIGEST}"}},
        {},
        f"10.0.2.2:8080/coreos/etcd@{DIGEST}",
        "10.0.2.2:8080",
    ),
    (
        "libvirt guests, another port",
        {**FLATCAR, "mirror": {"url": "http://127.0.0.1:9999", "guest_host": "192.168.121.1"}},
        {},
        "192.168.121.1:9999/coreos/etcd:v3.5.16",
        "192.168.121.1:9999",
    ),
    (
        "https mirror",
        {**FLATCAR, "mirror": {"url": "https://mirror.internal"}},
        {},
        "10.0.2.2:443/coreos/etcd:v3.5.16",
        None,
    ),
    ("upstream: the unit's default", {**FLATCAR, "etcd": {"image_source": "upstream"}}, {}, None, None),
    (
        "upstream, an image named",
        {**FLATCAR, "etcd": {"image_source": "upstream", "image": "registry.internal/etcd:v3.5.16"}},
        {},
        "registry.internal/etcd:v3.5.16",
        None,
    ),
    (
        "upstream from env, a mirror with a path is fine",
        {**FLATCAR, "mirror": {"url": "http://127.0.0.1:8080/boxes"}},
        {"LAB_ETCD_IMAGE_SOURCE": "upstream"},
        None,
        None,
    ),
    ("coreos: etcd2 on the host", {"mirror": {"url": "http://127.0.0.1:8080/boxes"}}, {}, None, None),
]


@pytest.mark.parametrize(
    ("settings", "env", "etcd_image", "insecure"), [c[1:] for c in ETCD_IMAGES], ids=[c[0] for c in ETCD_IMAGES]
)
def test_where_the_guests_pull_etcds_image(
    tmp_path: Path, mirror: Path, settings: dict[str, Any], env: dict[str, str], etcd_image: str | None,
    insecure: str | None,
) -> None:  # fmt: skip
    config = load_config(write_lab(tmp_path / "lab", mirror, **settings), environ=env)
    assert config.guest_etcd_image == etcd_image
    assert config.insecure_registry == insecure


def test_flatcar_etcd_image_defaults_to_the_distros_from_the_mirror(tmp_path: Path, mirror: Path) -> None:
    config = load_config(write_lab(tmp_path / "lab", mirror, **FLATCAR), environ={})
    assert (config["etcd.image"], config.sources["etcd.image"]) == (DISTROS["flatcar"].etcd_image, "default")
    assert (config["etcd.image_source"], config.sources["etcd.image_source"]) == ("mirror", "default")
    assert config.etcd_image_from_mirror
    coreos = load_config(write_lab(tmp_path / "coreos", mirror), environ={})
    assert coreos["etcd.image"] is None and not coreos.etcd_image_from_mirror


BAD_CONFIGS: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    # (case, lab.yaml settings, environment, expected text in the message)
    ("no nodes", {"nodes": 0}, {}, "lab.yaml: nodes: 0 is out of range; allowed: 1 to 99"),
    ("too many nodes", {"nodes": 100}, {}, "lab.yaml: nodes: 100 is out of range; allowed: 1 to 99"),
    ("nodes from env", {}, {"LAB_NODES": "many"}, "environment LAB_NODES: 'many' is not an integer"),
    ("nodes in other digits", {}, {"LAB_NODES": "٣"}, "environment LAB_NODES: '٣' is not an integer"),
    ("memory with underscores", {}, {"LAB_MEMORY": "1_024"}, "environment LAB_MEMORY: '1_024' is not an integer"),
    ("nodes not a number", {"nodes": "three"}, {}, "lab.yaml: nodes: 'three' is not an integer"),
    ("nodes a boolean", {"nodes": True}, {}, "lab.yaml: nodes: True is not an integer"),
    ("unknown key", {"num_instances": 3}, {}, "lab.yaml: num_instances: unknown key; allowed:"),
    ("misspelt key", {"chanel": "beta"}, {}, "lab.yaml: chanel: unknown key (did you mean 'channel'?)"),
    (
        "unknown nested key",
        {"etcd": {"size": 3}},
        {},
        "lab.yaml: etcd.size: unknown key; allowed: image, image_source, members",
    ),
    ("section not a mapping", {"etcd": 3}, {}, "lab.yaml: etcd: expected a mapping, found 3"),
    ("members > nodes", {"nodes": 2, "etcd": {"members": 3}}, {}, "etcd.members: 3 etcd members but only 2 nodes"),
    ("members 0", {"etcd": {"members": 0}}, {}, "lab.yaml: etcd.members: 0 is out of range"),
    (
        "ip outside subnet",
        {"machines": {"core-02": {"ip": "10.0.0.5"}}},
        {},
        "machines.core-02.ip: 10.0.0.5 is outside the subnet 172.17.8.0/24",
    ),
    (
        "ip clash",
        {"machines": {"core-02": {"ip": "172.17.8.101"}}},
        {},
        "machines.core-02.ip: 172.17.8.101 is already core-01's address",
    ),
    (
        "ip clash later",
        {"machines": {"core-01": {"ip": "172.17.8.102"}}},
        {},
        "machines.core-01.ip: 172.17.8.102 is core-02's default address",
    ),
    ("host address", {"machines": {"core-01": {"ip": "172.17.8.1"}}}, {}, "172.17.8.1 is reserved"),
    (
        "ip not an ip",
        {"machines": {"core-01": {"ip": "core"}}},
        {},
        "machines.core-01.ip: 'core' is not an IPv4 address",
    ),
    (
        "unknown machine",
        {"machines": {"core-09": {"ip": "172.17.8.150"}}},
        {},
        "machines.core-09: no such machine; machines are core-01 … core-03",
    ),
    ("bad subnet", {"subnet": "172.17.8.1/24"}, {}, "subnet: '172.17.8.1/24' is not an IPv4 network"),
    ("small subnet", {"subnet": "172.17.8.0/26"}, {}, "subnet: 172.17.8.0/26 is too small for 3 nodes"),
    ("bad distro", {"distro": "fedora"}, {}, "distro: 'fedora' is not allowed; choose one of coreos, flatcar"),
    (
        "bad channel",
        {"channel": "lts"},
        {},
        "channel: 'lts' is not a coreos channel; choose one of alpha, beta, stable",
    ),
    ("bad provider", {"provider": "vmware"}, {}, "provider: 'vmware' is not allowed; choose one of virtualbox"),
    ("version a number", {"version": 1068.8}, {}, "version: 1068.8 is a number; write it as a quoted string"),
    ("bad version", {"version": "latest!"}, {}, "version: 'latest!' is not a box version"),
    ("bad prefix", {"name_prefix": "Core_"}, {}, "name_prefix: 'Core_' is not allowed"),
    ("bad discovery mode", {"discovery": {"mode": "dns"}}, {}, "discovery.mode: 'dns' is not allowed"),
    ("bad mirror url", {"mirror": {"url": "ftp://x"}}, {}, "mirror.url: 'ftp://x' is not an http(s) base URL"),
    (
        "bad cpu cap",
        {"virtualbox": {"cpu_execution_cap": 101}},
        {},
        "virtualbox.cpu_execution_cap: 101 is out of range",
    ),
    (
        "bad reboot strategy",
        {"update": {"reboot_strategy": False}},
        {},
        "update.reboot_strategy: False is not a string",
    ),
    (
        "bad port",
        {"forwarded_ports": [{"guest": 80, "host": 70000}]},
        {},
        "forwarded_ports[0].host: 70000 is not a port number",
    ),
    ("port shape", {"forwarded_ports": {"80": 8080}}, {}, "forwarded_ports: expected a list of {guest, host}"),
    (
        "port clash",
        {"forwarded_ports": [{"guest": 80, "host": 8080}, {"guest": 81, "host": 8080}]},
        {},
        "forwarded_ports[1].host: host port 8080/tcp is already forwarded by [0]",
    ),
    (
        "port unknown node",
        {"forwarded_ports": [{"guest": 80, "host": 8080, "node": "core-07"}]},
        {},
        "forwarded_ports[0].node: 'core-07' is not a machine",
    ),
    (
        "missing folder",
        {"shared_folders": [{"host": "./nope", "guest": "/home/core/nope"}]},
        {},
        "shared_folders[0].host: './nope' is not a directory",
    ),
    (
        "relative guest folder",
        {"shared_folders": [{"host": ".", "guest": "share"}]},
        {},
        "shared_folders[0].guest: 'share' is not an absolute path",
    ),
    ("bad unit name", {"units": [{"name": "hello"}]}, {}, "units[0].name: 'hello' is not a systemd unit name"),
    (
        "bad unit command",
        {"units": [{"name": "a.service", "command": "go"}]},
        {},
        "units[0].command: 'go' is not allowed",
    ),
    (
        "unit for unknown machine",
        {"units": [{"name": "a.service", "machines": ["x"]}]},
        {},
        "units[0].machines: a list is not a list of this lab's machines",
    ),
    ("bad metadata", {"fleet": {"metadata": {"zone": "a,b"}}}, {}, "fleet.metadata.zone: 'a,b' is not allowed"),
    (
        "fleet on flatcar",
        {"distro": "flatcar", "version": "3815.2.0", "fleet": {"metadata": {"a": "b"}}},
        {},
        "fleet.metadata: Flatcar has no fleet",
    ),
    ("bool from env", {}, {"LAB_GUI": "maybe"}, "environment LAB_GUI: 'maybe' is not a boolean"),
    (
        "etcd image on coreos",
        {"etcd": {"image": "quay.io/coreos/etcd:v3.5.16"}},
        {},
        "lab.yaml: etcd.image: 'quay.io/coreos/etcd:v3.5.16' is not used: CoreOS runs etcd on the host",
    ),
    (
        "bad etcd image",
        {**FLATCAR, "etcd": {"image": "quay.io/CoreOS/etcd:v3.5.16"}},
        {},
        "lab.yaml: etcd.image: invalid image reference 'quay.io/CoreOS/etcd:v3.5.16': repository 'CoreOS/etcd'",
    ),
    (
        "bad etcd image source",
        {**FLATCAR, "etcd": {"image_source": "quay"}},
        {},
        "lab.yaml: etcd.image_source: 'quay' is not allowed; choose one of mirror, upstream",
    ),
    (
        "bad etcd image source from env",
        FLATCAR,
        {"LAB_ETCD_IMAGE_SOURCE": "docker"},
        "etcd.image_source (from env LAB_ETCD_IMAGE_SOURCE): 'docker' is not allowed",
    ),
    (
        "flatcar mirror with a path",
        {**FLATCAR, "mirror": {"url": "http://127.0.0.1:8080/boxes"}},
        {},
        "lab.yaml: mirror.url: 'http://127.0.0.1:8080/boxes' has a path (/boxes); Flatcar guests pull etcd's image "
        "from the mirror as a registry, which Docker finds only at the root of a host:port (/v2/)",
    ),
]


@pytest.mark.parametrize(("settings", "env", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_path_value_and_allowed(
    tmp_path: Path, mirror: Path, settings: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, **settings)
    with pytest.raises(BadInput) as caught:
        load_config(lab_dir, environ=env)
    assert expected in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_all_problems_reported_at_once(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=3, cpus=0, distro="fedora", extra=1)
    with pytest.raises(BadInput) as caught:
        load_config(lab_dir, environ={})
    message = caught.value.message
    assert "3 problems" in message
    assert "cpus: 0" in message and "fedora" in message and "extra: unknown key" in message


def test_a_bad_node_count_is_reported_once(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=0)
    with pytest.raises(BadInput) as caught:
        load_config(lab_dir, environ={})
    assert "1 problem" in caught.value.message
    assert "nodes: 0 is out of range" in caught.value.message


def test_version_not_in_mirror_names_what_it_has_and_how_to_fetch(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, version="9999.0.0")
    with pytest.raises(BadInput) as caught:
        load_config(lab_dir, environ={})
    assert "lab.yaml: version: '9999.0.0' is not in the mirror" in caught.value.message
    assert "it has 1010.5.0, 1068.8.0" in caught.value.message
    assert (
        caught.value.hint is not None
        and "lab mirror fetch --distro coreos --channel stable --version 9999.0.0" in caught.value.hint
    )


def test_box_for_channel_missing(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, channel="beta")
    with pytest.raises(BadInput, match="it has no coreos-beta box for virtualbox"):
        load_config(lab_dir, environ={})


def test_invalid_yaml_names_line(tmp_path: Path, mirror: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    (lab_dir / "lab.yaml").write_text("nodes: 3\nchannel: [stable\n")
    with pytest.raises(BadInput, match=r"lab.yaml: not valid YAML at line 3"):
        load_config(lab_dir, environ={})


def test_init_pins_newest_and_reads_back(tmp_path: Path, mirror: Path) -> None:
    result = init_lab(tmp_path / "lab", flags={"mirror.root": str(mirror), "nodes": 5}, environ={})
    reloaded = load_config(tmp_path / "lab", environ={})
    assert reloaded.version == "1068.8.0"
    assert reloaded["nodes"] == 5 and reloaded.etcd_members == 3
    assert dict(reloaded.values) == dict(result.config.values)
    text = result.path.read_text()
    assert 'version: "1068.8.0"' in text and "# machines:" in text


@pytest.mark.parametrize(
    ("flags", "env", "written"),
    [
        ({}, {}, ['# image: "quay.io/coreos/etcd:v3.5.16"   # default: the distro\'s', 'image_source: "mirror"']),
        (
            {"etcd.image": "registry.internal/etcd:v3.5.17", "etcd.image_source": "upstream"},
            {},
            ['  image: "registry.internal/etcd:v3.5.17"\n', 'image_source: "upstream"'],
        ),
        (
            {},
            {"LAB_ETCD_IMAGE": "registry.internal/etcd:v3.5.17"},
            ['# image: "registry.internal/etcd:v3.5.17"   # set by env LAB_ETCD_IMAGE'],
        ),
    ],
    ids=["defaults", "flags", "env"],
)
def test_init_writes_flatcars_etcd_image_and_reads_back(
    tmp_path: Path, mirror: Path, flags: dict[str, str], env: dict[str, str], written: list[str]
) -> None:
    all_flags = {"mirror.root": str(mirror), "distro": "flatcar", **flags}
    result = init_lab(tmp_path / "lab", flags=all_flags, environ=env)
    assert dict(load_config(tmp_path / "lab", environ=env).values) == dict(result.config.values)
    text = result.path.read_text()
    assert all(line in text for line in written), text


def test_init_writes_no_etcd_image_for_coreos(tmp_path: Path, mirror: Path) -> None:
    result = init_lab(tmp_path / "lab", flags={"mirror.root": str(mirror)}, environ={})
    assert "image:" not in result.path.read_text() and "image_source" not in result.path.read_text()
    upstream = init_lab(
        tmp_path / "up", flags={"mirror.root": str(mirror), "etcd.image_source": "upstream"}, environ={}
    )  # irrelevant for CoreOS, but what was asked for is written
    assert dict(load_config(tmp_path / "up", environ={}).values) == dict(upstream.config.values)


def test_init_refuses_unknown_version_and_empty_mirror(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(BadInput, match=r"'1\.2\.3' is not in the mirror"):
        init_lab(tmp_path / "a", flags={"mirror.root": str(mirror), "version": "1.2.3"}, environ={})
    empty = tmp_path / "empty-mirror"
    with pytest.raises(BadInput, match="has no flatcar-beta box for virtualbox: nothing to pin") as caught:
        init_lab(tmp_path / "b", flags={"mirror.root": str(empty), "distro": "flatcar", "channel": "beta"}, environ={})
    assert caught.value.hint is not None and "lab mirror fetch --distro flatcar --channel beta" in caught.value.hint
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_init_refuses_overwrite_then_force_keeps_copy(tmp_path: Path, mirror: Path) -> None:
    lab_dir = tmp_path / "lab"
    first = lab("init", lab_dir, "--root", mirror, "--distro", "flatcar")
    assert first.returncode == 0, first.stderr
    (lab_dir / "lab.yaml").write_text((lab_dir / "lab.yaml").read_text() + "# mine\n")
    again = lab("init", lab_dir, "--root", mirror)
    assert again.returncode == ExitCode.USAGE
    assert "lab.yaml exists; not overwriting it" in again.stderr
    assert (lab_dir / "lab.yaml").read_text().endswith("# mine\n")
    forced = lab("init", lab_dir, "--root", mirror, "--json", "--nodes", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    doc = forced.json()
    assert Path(doc["kept_copy"]).read_text().endswith("# mine\n")
    assert [n["name"] for n in doc["config"]["nodes"]] == ["core-01"]


def test_cli_config_json_shows_sources(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=4)
    run = lab("config", lab_dir, "--json", "--memory", "512", env={"LAB_CPUS": "2"})
    assert run.returncode == 0, run.stderr
    settings = run.json()["settings"]
    assert settings["nodes"] == {"value": 4, "source": "lab.yaml"}
    assert settings["memory"] == {"value": 512, "source": "flag --memory"}
    assert settings["cpus"] == {"value": 2, "source": "env LAB_CPUS"}
    assert settings["channel"] == {"value": "stable", "source": "default"}
    # The table shows the same values and sources, one row per setting.
    human = lab("config", lab_dir, "--memory", "512", env={"LAB_CPUS": "2"})
    assert human.returncode == 0, human.stderr
    rows = {words[0]: words[1:] for words in map(str.split, human.stdout.splitlines()) if words}
    assert rows["nodes"] == ["4", "lab.yaml"] and rows["channel"] == ["stable", "default"]
    assert rows["memory"] == ["512", "flag", "--memory"] and rows["cpus"] == ["2", "env", "LAB_CPUS"]


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=0, machines={"core-01": {"ip": "10.1.1.1"}})
    run = lab("render", lab_dir)
    assert run.returncode == ExitCode.USAGE
    assert "lab.yaml: nodes: 0 is out of range; allowed: 1 to 99" in run.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == ["lab.yaml"]


def test_cli_missing_lab_yaml(tmp_path: Path) -> None:
    run = lab("render", tmp_path)
    assert run.returncode == ExitCode.USAGE
    assert f"no lab.yaml in {tmp_path}" in run.stderr and "lab init" in run.stderr


def test_cli_init_pins_the_mirror_it_checked(tmp_path: Path, mirror: Path) -> None:
    """`./boxes` is the default mirror only from where `lab init` runs: lab.yaml keeps the root it pinned from."""
    assert mirror == tmp_path / "boxes"
    run = lab("init", "lab", cwd=tmp_path, env={"LAB_MIRROR_ROOT": ""})
    assert run.returncode == 0, run.stderr
    shown = lab("config", ".", "--json", cwd=tmp_path / "lab", env={"LAB_MIRROR_ROOT": ""})
    assert shown.returncode == 0, shown.stderr
    assert shown.json()["settings"]["mirror.root"] == {"value": str(mirror), "source": "lab.yaml"}
    assert shown.json()["box"]["version"] == "1068.8.0"


@pytest.mark.parametrize(("members", "survived"), [(2, "none"), (4, "1")])
def test_an_even_etcd_member_count_is_warned_about(tmp_path: Path, mirror: Path, members: int, survived: str) -> None:
    """One line, no error, from init and from render: an even count survives no more failures than one fewer."""
    lab_dir = tmp_path / "lab"
    warning = f"warning: etcd.members is {members}: {members} members survive no more failures than {members - 1}"
    init = lab("init", lab_dir, "--root", mirror, "--nodes", "5", "--etcd-members", str(members), "--json")
    assert init.returncode == 0, init.stderr
    assert init.json()["path"]  # the JSON document is untouched; the warning is on stderr
    assert warning in init.stderr and f"({survived})" in init.stderr
    render = lab("render", lab_dir, "--discovery-mode", "static", env={"HOME": str(tmp_path)})
    assert render.returncode == 0, render.stderr
    assert warning in render.stderr
    odd = lab("render", lab_dir, "--discovery-mode", "static", "--etcd-members", "3", env={"HOME": str(tmp_path)})
    assert odd.returncode == 0, odd.stderr
    assert "etcd.members" not in odd.stderr


# -- hostile lab.yaml: whatever the values, exit 2 naming the field, never "unexpected" ---------------------------

# Every key lab.yaml knows at any level, so that generated documents reach the deep checks.
_KEYS = sorted(
    {part for path in [*SETTINGS_BY_PATH, *STRUCTURED] for part in path.split(".")}
    | {"ip", "metadata", "guest", "host", "node", "protocol", "name", "command", "enable", "content", "drop_ins"}
    | {"core-01", "core-02", "role"}
)
_TEXTS = (
    *("core-01", "tcp", "a.service", "a.conf", "start", "~nosuchuser/x", "172.17.8.150", "1068.8.0", "flatcar"),
    *("http://127.0.0.1:99999", "http://[::1", "http://h:8080/p", "172.17.8.0/24", "virtualbox", "local"),
)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(_TEXTS),
    st.binary(max_size=4),  # !!binary
    st.dates(),  # a YAML timestamp
    st.sets(st.text(max_size=3), max_size=3),  # !!set
)
_YAMLISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(_KEYS), _SCALARS.filter(_hashable)), inner, max_size=4)
    ),
    max_leaves=24,
)


# A lab.yaml with every structure in it; the property replaces parts of it, at any depth, by anything.
_FULL: dict[str, Any] = {
    "version": "1068.8.0",
    "nodes": 3,
    "name_prefix": "core",
    "subnet": "172.17.8.0/24",
    "memory": 1024,
    "gui": False,
    "etcd": {"members": 1},
    "discovery": {"mode": "local", "url": "https://discovery.etcd.io"},
    "mirror": {"url": "http://127.0.0.1:8080", "guest_host": "10.0.2.2"},
    "virtualbox": {"cpu_execution_cap": 100},
    "fleet": {"metadata": {"region": "lab"}},
    "machines": {"core-02": {"ip": "172.17.8.150", "metadata": {"disk": "ssd"}}},
    "forwarded_ports": [{"guest": 80, "host": 8080, "protocol": "tcp", "node": "core-01"}],
    "shared_folders": [{"host": ".", "guest": "/home/core/share"}],
    "units": [
        {
            "name": "a.service",
            "command": "start",
            "enable": True,
            "content": "[Service]\nExecStart=/bin/true\n",
            "drop_ins": [{"name": "a.conf", "content": "[Service]\n"}],
            "machines": ["core-01"],
        }
    ],
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, inner in items:
        found += _paths(inner, (*prefix, key))
    return found


_PATHS = _paths(_FULL)


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`doc` with the value at `path` replaced (where the path still leads somewhere after earlier changes)."""
    if not path:
        return value
    if isinstance(doc, dict) and _hashable(path[0]):
        return {**doc, path[0]: _replaced(doc.get(path[0]), path[1:], value)}
    if isinstance(doc, list) and isinstance(path[0], int) and path[0] < len(doc):
        return [_replaced(v, path[1:], value) if i == path[0] else v for i, v in enumerate(doc)]
    return doc


@st.composite
def _hostile_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: Any = _FULL
    for path, value in draw(st.lists(st.tuples(st.sampled_from(_PATHS), _YAMLISH), min_size=1, max_size=3)):
        doc = _replaced(doc, path, value)
    extra = draw(st.dictionaries(st.sampled_from(_KEYS), _YAMLISH, max_size=2))  # and keys in odd places
    return {**doc, **extra}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_hostile_docs())
def test_any_yamlish_document_is_a_config_or_bad_input(tmp_path: Path, mirror: Path, doc: dict[str, Any]) -> None:
    """Documents as a YAML loader can make them (mappings, lists, every scalar type, sets, dates, bytes) at every
    key lab.yaml knows, written as YAML and read back as `lab` reads it: either a configuration that renders, or
    `BadInput` (exit 2) naming lab.yaml; never another exception."""
    doc = {"version": "1068.8.0", **doc}
    if isinstance(doc.get("mirror", {}), dict):
        doc["mirror"] = {"root": str(mirror), **doc.get("mirror", {})}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        config = load_config(tmp_path, environ={}, check_mirror=True)
    except BadInput as exc:
        assert exc.exit_code == ExitCode.USAGE and "lab.yaml" in exc.message
        return
    render_files(config, Discovery("static", None, "core-01=http://172.17.8.101:2380"), "kvm")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "http://127.0.0.1:0", "http://[::1", "http://h:abc", "http://h:８０", "ftp://h"]
)
def test_a_bad_mirror_url_is_refused_by_init_and_config(tmp_path: Path, mirror: Path, url: str) -> None:
    """Refused where it is given, not by the render or doctor that would use it later."""
    init = lab("init", tmp_path / "new", "--root", mirror, "--mirror-url", url)
    assert init.returncode == ExitCode.USAGE, init.stderr
    assert f"mirror.url (from flag --mirror-url): {url!r} " in init.stderr
    assert not (tmp_path / "new").exists()
    in_file = lab("config", write_lab(tmp_path / "file", mirror, mirror={"url": url}))
    assert in_file.returncode == ExitCode.USAGE and f"lab.yaml: mirror.url: {url!r} " in in_file.stderr
    in_env = lab("config", write_lab(tmp_path / "env", mirror), env={"LAB_MIRROR_URL": url})
    assert in_env.returncode == ExitCode.USAGE
    assert f"mirror.url (from env LAB_MIRROR_URL): {url!r} " in in_env.stderr


NO_SUCH_HOME = "~no-such-user-of-coreos-lab"


def test_a_home_of_no_user_is_named(tmp_path: Path, mirror: Path) -> None:
    root = f"{NO_SUCH_HOME}/boxes"
    why = f"{root!r}: {NO_SUCH_HOME} names no user with a home directory"
    in_file = lab("config", write_lab(tmp_path / "file", mirror, mirror={"root": root}))
    assert in_file.returncode == ExitCode.USAGE and f"lab.yaml: mirror.root: {why}" in in_file.stderr
    flag = lab("config", write_lab(tmp_path / "flag", mirror), "--root", root)
    assert flag.returncode == ExitCode.USAGE and f"mirror.root (from flag --root): {why}" in flag.stderr
    folder = write_lab(tmp_path / "folder", mirror, shared_folders=[{"host": root, "guest": "/x"}])
    shared = lab("config", folder)
    assert shared.returncode == ExitCode.USAGE and f"lab.yaml: shared_folders[0].host: {why}" in shared.stderr
    env = lab("mirror", "list", env={"LAB_MIRROR_ROOT": root})
    assert env.returncode == ExitCode.USAGE and f"environment LAB_MIRROR_ROOT: {why}" in env.stderr


@pytest.mark.parametrize("flag, value", [("--nodes", "٣"), ("--memory", "1_024"), ("--etcd-members", "²")])
def test_a_flag_takes_digits_0_to_9_only(tmp_path: Path, mirror: Path, flag: str, value: str) -> None:
    """int() reads "٣" as 3 and "1_024" as 1024; as a setting they are typos, refused like any non-number."""
    run = lab("config", write_lab(tmp_path / "lab", mirror), flag, value)
    assert run.returncode == ExitCode.USAGE
    assert f"Invalid value for '{flag}': {value!r} is not an integer in digits 0-9" in run.stderr


def test_the_yaml_bounds_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from coreos_lab.lab import bounded_yaml

    assert bounded_yaml.load("[" * 32 + "]" * 32) is not None
    with pytest.raises(bounded_yaml.TooLarge, match="nested more than 32 levels deep"):
        bounded_yaml.load("[" * 33 + "]" * 33)
    # Depth through an alias counts where it is used: the mapping, 28 lists and the 3 levels of [[1]] fit, 29 do not.
    assert bounded_yaml.load("a: &a [[1]]\nb: " + "[" * 28 + "*a" + "]" * 28)
    with pytest.raises(bounded_yaml.TooLarge, match=r"nested more than 32 levels deep \(through alias \*a\)"):
        bounded_yaml.load("a: &a [[1]]\nb: " + "[" * 29 + "*a" + "]" * 29)
    assert len(bounded_yaml.load("[" + "0, " * 99_999 + "]")) == 99_999  # the list and its items: 100 000 values
    with pytest.raises(bounded_yaml.TooLarge, match="more than 100000 values"):
        bounded_yaml.load("[" + "0, " * 100_000 + "]")
    # An alias counts as all it names: the mapping, three keys, the list of two and two aliases of it = 13.
    text = "x: &x [1, 2]\ny: *x\nz: *x\n"
    monkeypatch.setattr(bounded_yaml, "MAX_VALUES", 13)
    assert bounded_yaml.load(text) == {"x": [1, 2], "y": [1, 2], "z": [1, 2]}
    monkeypatch.setattr(bounded_yaml, "MAX_VALUES", 12)
    with pytest.raises(bounded_yaml.TooLarge, match=r"more than 12 values once alias \*x is expanded"):
        bounded_yaml.load(text)
