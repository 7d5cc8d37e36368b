"""Registry authentication's own rules: WWW-Authenticate challenges and Docker's config.json credentials.
(The flows themselves run against a real registry and token service in tests/test_image_fetch.py.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.images.auth import (
    Challenge,
    Credentials,
    RegistryAuth,
    docker_config_credentials,
    docker_config_path,
    parse_challenge,
)
from coreos_lab.mirror.images.reference import parse_reference


def test_challenges() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"', "x"
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="Registry Realm"', "x").scheme == "basic"
    with pytest.raises(LabError, match="no realm"):
        parse_challenge('Bearer service="registry.example"', "https://r.example/v2/")
    with pytest.raises(LabError, match="unsupported authentication 'Negotiate'"):
        parse_challenge("Negotiate", "https://r.example/v2/")


def _config(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_docker_config_credentials(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {
            "https://quay.io": _auth("quser", "qpass:with:colons"),
            "https://index.docker.io/v1/": _auth("huser", "hpass"),
            "127.0.0.1:5000": _auth("local", "pw"),
            "helper.example": {},  # a credential helper's entry: no auth field
        },
    )
    quay = docker_config_credentials("quay.io", path)
    assert quay is not None and (quay.username, quay.password) == ("quser", "qpass:with:colons")
    hub = docker_config_credentials("docker.io", path)
    assert hub is not None and hub.username == "huser" and hub.origin == str(path)
    local = docker_config_credentials("127.0.0.1:5000", path)
    assert local is not None and local.password == "pw"
    assert docker_config_credentials("127.0.0.1:5001", path) is None
    assert docker_config_credentials("helper.example", path) is None
    assert docker_config_credentials("quay.io", tmp_path / "absent.json") is None


def test_a_registry_host_in_any_case_finds_its_credentials(tmp_path: Path) -> None:
    path = _config(tmp_path, {"Quay.IO": _auth("quser", "qpass")})
    registry = parse_reference("QUAY.io/coreos/etcd:v1").registry
    assert registry == "quay.io"  # as requests sends it
    found = docker_config_credentials(registry, path)
    assert found is not None and found.username == "quser"


def test_damaged_docker_configs_name_the_file_and_field(tmp_path: Path) -> None:
    path = _config(tmp_path, {"quay.io": {"auth": "not base64!"}})
    with pytest.raises(BadInput, match=r"auths\['quay.io'\].auth is not base64 of user:password") as info:
        docker_config_credentials("quay.io", path)
    assert str(path) in info.value.message
    path.write_text("{ half")
    with pytest.raises(BadInput, match="cannot read Docker's credentials"):
        docker_config_credentials("quay.io", path)


def test_docker_config_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_path() == tmp_path / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert docker_config_path() == tmp_path / "home" / ".docker" / "config.json"


def test_the_default_image_is_the_distros_etcd_image() -> None:
    """`lab mirror image fetch` without REFERENCE takes `--distro`'s etcd image from the distro table."""
    from coreos_lab.cli.mirror_image import default_reference
    from coreos_lab.distros import DISTROS

    assert DISTROS["flatcar"].etcd_image is not None
    assert default_reference("flatcar") == DISTROS["flatcar"].etcd_image
    # CoreOS runs etcd2 on the host: there is no image to fetch, and the refusal says how to name one.
    with pytest.raises(BadInput, match="coreos runs no etcd image") as info:
        default_reference("coreos")
    assert info.value.hint is not None and "lab mirror image fetch REFERENCE" in info.value.hint


def test_credentials_go_to_a_plain_http_realm_only_when_insecure() -> None:
    import requests

    credentials = Credentials("alice", "secret", "--password")
    auth = RegistryAuth(requests.Session(), "quay.io", "coreos/etcd", credentials)
    with pytest.raises(LabError, match=r"realm http://auth\.example/token is not HTTPS.*'alice'") as info:
        auth.authenticate(Challenge("bearer", {"realm": "http://auth.example/token"}), "test")
    assert info.value.hint is not None and "--insecure" in info.value.hint
