"""The rendered etcd settings really form a cluster, on nodes with a network of their own.

A lab (3 machines) is rendered with the discovery service bound on the harness bridge (172.17.8.1, what
the guests' host address is in a real lab); each machine's etcd environment, exactly as its user-data gives it
(`harness.user_data.etcd_environments`), is applied to a real etcd 3.4 in the namespace at the machine's
rendered IP — listening on 0.0.0.0 as rendered. Only what the node itself supplies is added: a data dir (the
etcd unit sets it) and the v2 API (etcd2 on CoreOS serves it by itself). Then `lab health` must call it healthy,
with the configured members by name.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from harness.netns import BRIDGE_IP, netns_cluster, node_ip
from harness.user_data import etcd_environments

from coreos_lab.lab.config import load_config
from coreos_lab.lab.render import render_lab

pytestmark = [pytest.mark.integration, pytest.mark.etcd, pytest.mark.netns]

VERSIONS = {"coreos": "1068.8.0", "flatcar": "3815.2.0"}


@pytest.mark.parametrize("nodes", [3, 4], ids=["3-members", "3-members-1-proxy"])
@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_rendered_lab_forms_a_healthy_cluster(tmp_path: Path, mirror_root: Path, distro: str, nodes: int) -> None:
    mirror_with_boxes(mirror_root)
    with netns_cluster(tmp_path / "nodes", nodes) as cluster:
        server = cluster.start_discovery(mirror_root)
        lab_dir = write_lab(
            tmp_path / "lab",
            mirror_root,
            distro=distro,
            version=VERSIONS[distro],
            nodes=nodes,
            etcd={"members": 3},
            discovery={"mode": "local"},
            mirror={"url": server, "guest_host": BRIDGE_IP},
        )
        config = load_config(lab_dir, environ={})
        render_lab(config)
        environments = etcd_environments(lab_dir)
        assert [n.name for n in config.nodes] == [f"core-0{i}" for i in range(1, nodes + 1)]
        for node in config.nodes:
            assert node.ip == node_ip(node.index)  # the harness sits exactly where the lab's machines would
            env = environments[node.name]
            assert env["ETCD_DISCOVERY"].startswith(f"http://{BRIDGE_IP}:")
            cluster.start_etcd(node.index, dict(env))
        cluster.wait_etcd()

        listing = subprocess.run(
            [*cluster.nodes[2].prefix, "etcdctl", "member", "list", "-w", "json"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        members = json.loads(listing.stdout)["members"]
        assert sorted((m["name"], m["peerURLs"][0]) for m in members) == [
            (f"core-0{i}", f"http://172.17.8.10{i}:2380") for i in (1, 2, 3)
        ]

        config_path = cluster.write_ssh_config(tmp_path / "ssh_config")
        run = lab(
            "health", "--ssh-config", config_path, "--distro", distro, "--members", str(config.etcd_members),
            "--check", "etcd", "--check", "members", "--json",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        report = run.json()
        assert report["healthy"] is True and report["expected_members"] == 3
        for node in report["nodes"].values():
            assert "(core-01, core-02, core-03)" in node["checks"]["members"]["detail"]
