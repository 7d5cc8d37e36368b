"""A plain HTTP/1.1 client for the mirror tests: exactly the request asked for, the answer as it came."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit


class Client:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def raw(self, request_line: str, extra: str = "") -> tuple[int, bytes]:
        """Send exactly `request_line` (no client-side path normalisation); returns status and body."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(
                f"{request_line}\r\nHost: {self.host}:{self.port}\r\n{extra}Connection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body
