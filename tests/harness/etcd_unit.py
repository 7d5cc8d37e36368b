"""A stand-in `systemctl` for the etcd unit of a node in a network namespace (tests/harness/netns.py).

systemd cannot run in a namespace, so what `lab drill` does with systemctl over SSH (stop and start the etcd unit)
meets this script there instead. It drives the node's real etcd as the harness started it (its settings in
`etcd.env`, its PID in `etcd.pid`): `stop` ends it with SIGTERM and waits for it, as systemd stops a unit; `start`
runs it again with the same settings; `is-active` says which, in systemctl's words and exit codes. Only the etcd
units (etcd2, etcd-member) exist. With `ignore_stop` the unit ignores `stop`: the sabotage that a drill must notice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.netns import NetnsCluster

SCRIPT = r"""#!/bin/sh
dir=__WORKDIR__
unit=${2%.service}
running() {  # a zombie (exited, not yet reaped by the harness) is not running
  [ -s "$dir/etcd.pid" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$(cat "$dir/etcd.pid")/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}
case "$unit" in
  etcd2|etcd-member) ;;
  *) echo "Failed to $1 $2: Unit $2 not found." >&2; exit 5 ;;
esac
case "$1" in
  is-active)
    if running; then echo active; else echo inactive; exit 3; fi ;;
  stop)
    __STOP__ ;;
  start)
    running && exit 0
    (set -a; . "$dir/etcd.env"; exec etcd >>"$dir/etcd.log" 2>&1 </dev/null) &
    echo $! >"$dir/etcd.pid" ;;
  *)
    echo "stand-in systemctl: $1 is not supported" >&2; exit 1 ;;
esac
"""
STOP = """running || exit 0
    pid=$(cat "$dir/etcd.pid")
    kill "$pid"
    i=0
    while running && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done"""
IGNORE_STOP = ": this unit ignores stop"


def install(cluster: NetnsCluster, i: int, *, ignore_stop: bool = False) -> None:
    """The stand-in `systemctl` on node i, in charge of the etcd the harness started there."""
    script = SCRIPT.replace("__WORKDIR__", str(cluster.nodes[i].workdir))
    cluster.install_tool(i, "systemctl", script.replace("__STOP__", IGNORE_STOP if ignore_stop else STOP))


def install_all(cluster: NetnsCluster) -> None:
    for i in cluster.nodes:
        install(cluster, i)
