"""The one check of a user-given URL, and the refusals that use it."""

from __future__ import annotations

import pytest

from coreos_lab.discovery.client import server_url, token_of
from coreos_lab.errors import BadInput
from coreos_lab.mirror.upstream import release_channel
from coreos_lab.urls import is_http_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "https://mirror.example/boxes/",
        "http://[::1]:8080",
        "https://{channel}.release.flatcar-linux.net",
        "http://h:65535/x?q=1#f",
    ],
)
def test_http_urls(url: str) -> None:
    assert is_http_url(url)


@pytest.mark.parametrize(
    "url", ["10.0.2.2:8080", "ftp://x", "http://", "http://:8080", "http://h:99999", "http://h:port", "http://[::1"]
)
def test_not_http_urls(url: str) -> None:
    assert not is_http_url(url) and not is_http_url(url, base=True)


def test_a_base_url_has_no_query_or_fragment() -> None:
    assert is_http_url("http://h/x", base=True)
    assert not is_http_url("http://h/?q=1", base=True) and not is_http_url("http://h/#f", base=True)


def test_refusals_keep_their_wording() -> None:
    with pytest.raises(BadInput, match=r"^--upstream 'ftp://x' is not an http\(s\) URL \(e.g. http://mirror"):
        release_channel("flatcar", "stable", "ftp://x")
    with pytest.raises(BadInput, match=r"^invalid discovery server 'x': an http\(s\) URL such as .*, or public$"):
        server_url("x")
    with pytest.raises(BadInput, match=r"^invalid discovery token URL 'http://h/': expected http\(s\)://HOST"):
        token_of("http://h/")
    assert token_of("http://h:8080/v2/keys/abc") == "abc"
