"""The embedded server also listens where guests reach the host (libvirt's gateway), and nowhere wider."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = """
import sys, time
from pathlib import Path
from coreos_lab.server import EmbeddedServer
srv = EmbeddedServer(Path(sys.argv[1]), host="127.0.0.1", port=0, guest_hosts=[sys.argv[2]]).start()
print(srv.port, flush=True)
time.sleep(600)
"""


@pytest.mark.integration
@pytest.mark.netns
def test_listens_on_the_gateway_before_it_exists(tmp_path: Path) -> None:
    """In a namespace of its own: the gateway address is added only after the server started (IP_FREEBIND),
    as vagrant-libvirt creates its bridge after `lab up` started serving."""
    ns = f"labsrv{os.getpid()}"
    gateway = "10.251.0.1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    child = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        child = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, str(tmp_path), gateway],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        port = int(child.stdout.readline())
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{gateway}/24", "dev", "lo"], check=True)
        for host in ("127.0.0.1", gateway):
            deadline = time.monotonic() + 120  # about a hang, not speed
            while True:
                out = subprocess.run(
                    ["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://{host}:{port}/"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if out.stdout == "200" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert out.stdout == "200", (host, out.stdout, out.stderr)
        listening = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        locals_ = sorted(word for word in listening if word.endswith(f":{port}"))
        assert locals_ == sorted([f"127.0.0.1:{port}", f"{gateway}:{port}"])
    finally:
        if child is not None:
            child.kill()
            child.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
