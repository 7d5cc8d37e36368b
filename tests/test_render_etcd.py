"""The rendered etcd settings really form a cluster: real etcd 3.4 processes run with exactly the environment
each machine's user-data gives etcd (coreos-cloudinit's key → ETCD_* mapping; Flatcar's drop-in), bootstrapping
through the lab's own discovery server.

Here all "machines" share the host's network stack, so each one gets its own loopback address (the whole of
127.0.0.0/8 is local on Linux; the subnet is picked per process so parallel runs do not meet) and the two
things only a separate machine would give are supplied: a data directory (the etcd unit sets it) and a client
listen address on the machine's IP instead of 0.0.0.0. Everything else is the rendered environment as is.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from harness.labs import mirror_with_boxes, write_lab
from harness.user_data import etcd_environments

from coreos_lab.lab.config import load_config
from coreos_lab.lab.render import render_lab
from coreos_lab.server import EmbeddedServer

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

VERSIONS = {"coreos": "1068.8.0", "flatcar": "3815.2.0"}


def get_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("distro", "mode"), [("coreos", "local"), ("flatcar", "local"), ("flatcar", "static")])
def test_rendered_etcd_environment_forms_a_cluster(tmp_path: Path, mirror_root: Path, distro: str, mode: str) -> None:
    mirror_with_boxes(mirror_root)
    subnet = f"127.{30 + os.getpid() % 200}.{8 + ['coreos', 'flatcar'].index(distro) * 2 + (mode == 'static')}"
    processes: list[subprocess.Popen[bytes]] = []
    with EmbeddedServer(mirror_root, port=0) as server:
        lab_dir = write_lab(
            tmp_path / "lab",
            mirror_root,
            distro=distro,
            version=VERSIONS[distro],
            nodes=4,
            etcd={"members": 3},
            subnet=subnet,
            discovery={"mode": mode},
            mirror={"url": server.url, "guest_host": "127.0.0.1"},
        )
        config = load_config(lab_dir, environ={})
        render_lab(config)
        environments = etcd_environments(lab_dir)
        try:
            for node in config.nodes:
                env = dict(environments[node.name])
                assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://0.0.0.0:2379"
                env["ETCD_LISTEN_CLIENT_URLS"] = f"http://{node.ip}:2379"
                env["ETCD_DATA_DIR"] = str(tmp_path / f"{node.name}.etcd")
                env["ETCD_ENABLE_V2"] = "true"  # etcd2 on CoreOS serves v2 itself; etcd 3.4 needs asking
                base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
                with open(tmp_path / f"{node.name}.log", "wb") as log:
                    processes.append(
                        subprocess.Popen(["etcd"], env=base | env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                    )
            first, proxy = config.nodes[0], config.nodes[3]

            def members() -> list[str]:
                doc = get_json(f"http://{first.ip}:2379/v2/members")
                assert isinstance(doc, dict)
                return sorted(m["name"] for m in doc["members"] if m.get("clientURLs"))

            def logs() -> str:
                return "\n".join((tmp_path / f"{n.name}.log").read_text(errors="replace")[-1500:] for n in config.nodes)

            try:
                wait_for(lambda: members() == ["core-01", "core-02", "core-03"], 120, "three started members")
                wait_for(lambda: get_json(f"http://{first.ip}:2379/health") == {"health": "true"}, 120, "health")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{logs()}") from None
            # The proxy machine serves clients on its own address and reaches the members.
            request = urllib.request.Request(f"http://{proxy.ip}:2379/v2/keys/lab", data=b"value=formed", method="PUT")
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
            wait_for(
                lambda: urllib.request.urlopen(request, timeout=2).status in (200, 201), 120, "a write via the proxy"
            )
            # A quorum read: a plain v2 read is served from the member's own, possibly lagging, copy.
            doc = get_json(f"http://{config.nodes[1].ip}:2379/v2/keys/lab?quorum=true")
            assert isinstance(doc, dict) and doc["node"]["value"] == "formed"
            result = subprocess.run(
                ["etcdctl", "--endpoints", f"http://{first.ip}:2379", "cluster-health"],
                env=dict(os.environ, ETCDCTL_API="2"),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0 and "cluster is healthy" in result.stdout, result.stdout + result.stderr
            assert all(p.poll() is None for p in processes), logs()
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
