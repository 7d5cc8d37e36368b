"""The registry client against a tiny HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.download import download
from coreos_lab.mirror.images.auth import Challenge
from coreos_lab.mirror.images.reference import parse_reference
from coreos_lab.mirror.images.registry_client import RegistryClient
from coreos_lab.progress import SilentReporter

Answer = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Answer]]]:
    """A server answering each path with the function the test puts in the dict."""
    answers: dict[str, Answer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            answers[self.path.partition("?")[0]](self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", answers
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(host: str) -> RegistryClient:
    made = RegistryClient(parse_reference(f"{host}/coreos/etcd:v1"), credentials=None)
    made.base = f"http://{host}"  # as ping() finds it for a plain-HTTP loopback registry
    return made


def cut_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"schemaVersion": 2')
    handler.wfile.flush()
    handler.close_connection = True


def test_a_manifest_cut_mid_body_is_a_network_error(server: tuple[str, dict[str, Answer]]) -> None:
    host, answers = server
    answers["/v2/coreos/etcd/manifests/v1"] = cut_body
    with pytest.raises(LabError, match=f"cannot download http://{host}/v2/coreos/etcd/manifests/v1"):
        client(host).manifest("v1")


def endless(status: int, content_type: str = "application/json") -> Answer:
    """An answer whose body never ends (chunked), until the client hangs up."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            while True:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            handler.close_connection = True

    return answer


def test_an_endless_error_body_is_read_only_so_far(server: tuple[str, dict[str, Answer]]) -> None:
    host, answers = server
    answers["/v2/coreos/etcd/manifests/v1"] = endless(404)
    with pytest.raises(BadInput, match="HTTP 404"):
        client(host).manifest("v1")


def test_an_endless_token_answer_is_read_only_so_far(server: tuple[str, dict[str, Answer]]) -> None:
    host, answers = server
    answers["/token"] = endless(200)
    made = client(host)
    with pytest.raises(LabError, match="the answer holds no token"):
        made.auth.authenticate(Challenge("bearer", {"realm": f"http://{host}/token"}), "test")


def test_an_endless_blob_body_stops_one_byte_past_its_size(
    server: tuple[str, dict[str, Answer]], tmp_path: Path
) -> None:
    host, answers = server
    answers["/v2/coreos/etcd/blobs/sha256:" + "0" * 64] = endless(200, "application/octet-stream")
    made = client(host)
    with open(tmp_path / "blob.part", "w+b") as part:
        got = download(made.http, made.blob_url("sha256:" + "0" * 64), part, ["sha256"], SilentReporter(), limit=10)
    assert got.size == 11 and (tmp_path / "blob.part").stat().st_size == 11


def test_the_client_closes_its_own_session() -> None:
    closed: list[bool] = []
    with RegistryClient(parse_reference("127.0.0.1:1/coreos/etcd:v1"), credentials=None) as made:
        made.http.close = lambda: closed.append(True)  # type: ignore[method-assign]
    assert closed == [True]
