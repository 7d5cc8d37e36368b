"""One access-log line per request on stderr (`lab mirror serve`)."""

from __future__ import annotations

import re
import sys
import time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


def printable(text: str) -> str:
    """Client-supplied text made safe for one log line: control characters escaped, quotes escaped."""
    out = []
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


# Vagrant sends the mirror's token as `?access_token=` when VAGRANT_SERVER_ACCESS_TOKEN_BY_URL is set; the log
# must not keep it.
_ACCESS_TOKEN_RE = re.compile(r"(?i)([?&]access_token=)[^&#]*")


def without_secrets(raw_path: str) -> str:
    return _ACCESS_TOKEN_RE.sub(r"\1***", raw_path)


class AccessLog(AbstractAccessLogger):
    """`client [time] "METHOD path HTTP/x.y" status bytes seconds "user-agent"`.

    Written to the current `sys.stderr` at each call, so lines go above the live view when one is shown.
    `bytes` counts the body only (for box files: what was handed to the kernel; sendfile bypasses aiohttp's counters).
    """

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        sent = getattr(response, "bytes_sent", None)
        if sent is None:
            body = getattr(response, "body", None)
            sent = len(body) if isinstance(body, bytes) and request.method != "HEAD" else 0
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        version = f"{request.version.major}.{request.version.minor}"
        agent = printable(request.headers.get("User-Agent", "-"))
        line = (
            f'{request.remote or "-"} [{stamp}] "{request.method} {printable(without_secrets(request.raw_path))} HTTP/{version}" '
            f'{response.status} {sent} {time_taken:.3f}s "{agent}"\n'
        )
        sys.stderr.write(line)
        sys.stderr.flush()
