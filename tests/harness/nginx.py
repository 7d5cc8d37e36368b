"""Debian's nginx on 127.0.0.1 serving a directory, with its own config, pid file and logs under the test's
directory; stopped by PID. `PUBLISHED_SITE` is the server block the README gives for a directory written by `lab
mirror publish`, so the tests serve exactly what users are told to configure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import processes
from harness.ports import free_port
from harness.waiting import wait_until

# Keep in step with README.md ("Publishing the mirror").
PUBLISHED_SITE = """\
    server {{
        listen {listen};
        root {root};
        index index.html;
        location / {{
            try_files $uri $uri.json $uri/ =404;
        }}
    }}
"""

CONFIG = """\
{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
{site}}}
"""


class Nginx:
    def __init__(self, prefix: Path, port: int, process: subprocess.Popen[bytes]):
        self.prefix = prefix
        self.url = f"http://127.0.0.1:{port}"
        self.process = process

    def access_log(self) -> str:
        log = self.prefix / "access.log"
        return log.read_text() if log.exists() else ""


@contextmanager
def nginx_serving(root: Path, prefix: Path) -> Iterator[Nginx]:
    """nginx serving `root` with the README's site config; its own files in `prefix`."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    # As root the workers would run as nobody, who cannot enter the test's private tmp directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    site = PUBLISHED_SITE.format(listen=f"127.0.0.1:{port}", root=root)
    config = prefix / "nginx.conf"
    config.write_text(CONFIG.format(user=user, prefix=prefix, site=site))
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: _listening(port, process), f"nginx listening on 127.0.0.1:{port}", timeout=60)
        yield Nginx(prefix, port, process)
    finally:
        processes.stop(process)


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise RuntimeError(f"nginx exited with {process.returncode}: {stderr}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
