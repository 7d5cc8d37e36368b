"""The one check of a URL the user gives (options, lab.yaml, environment): is it an http(s) URL?

Each caller words its own refusal, naming the option or setting the URL came from.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def is_http_url(url: str, *, base: bool = False) -> bool:
    """An absolute http or https URL with a host (and a port that is a number from 0 to 65535, when it names
    one). With `base`, also without query or fragment: a URL that paths are appended to."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # also a malformed IPv6 literal
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return not (base and (parts.query or parts.fragment))
