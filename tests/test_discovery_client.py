"""Token client helpers that need no network: server choice, token URLs, member values."""

from __future__ import annotations

import pytest

from coreos_lab.discovery.client import PUBLIC_SERVER, RegisteredMember, TokenInfo, server_url, token_of
from coreos_lab.errors import BadInput


def test_public_is_only_used_when_asked_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_MIRROR_URL", "http://127.0.0.1:9999")
    assert server_url(None) == "http://127.0.0.1:9999"
    assert server_url("public") == PUBLIC_SERVER == "https://discovery.etcd.io"
    assert server_url("http://10.0.2.2:8080/") == "http://10.0.2.2:8080"


@pytest.mark.parametrize("bad", ["localhost:8080", "ftp://h", "http://", "publics"])
def test_bad_server_urls_are_named(bad: str) -> None:
    with pytest.raises(BadInput, match=f"invalid discovery server {bad!r}"):
        server_url(bad)


def test_token_of_accepts_our_urls_and_etcd_backed_ones() -> None:
    assert token_of("http://127.0.0.1:8080/" + "a" * 32) == "a" * 32
    assert token_of("http://127.0.0.1:2379/v2/keys/mytoken/") == "mytoken"
    for bad in ("a" * 32, "http://host/", "file:///tmp/x"):
        with pytest.raises(BadInput, match="invalid discovery token URL"):
            token_of(bad)


def test_member_value_with_several_peer_urls() -> None:
    member = RegisteredMember.from_node(
        "/tok/8e9e05c52164694d", "core-01=http://172.17.8.101:2380,core-01=http://[::1]:2380", 7
    )
    assert (member.id, member.name, member.created_index) == ("8e9e05c52164694d", "core-01", 7)
    assert member.peer_urls == ("http://172.17.8.101:2380", "http://[::1]:2380")
    info = TokenInfo("http://h:8080/tok", 3, (member,), "server")
    assert not info.complete and info.as_dict()["registered"] == 1 and info.token == "tok"
