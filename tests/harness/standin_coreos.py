#!/usr/bin/env python3
"""Stand-in `systemctl` and `fleetctl` for nodes in network namespaces (tests/harness/netns.py).

systemd and fleet cannot run in a namespace, so this program (installed under both names) answers what the health
checks and the smoke's fleet stage ask, with outputs recorded from the real tools (tests/fixtures/README.md):

- `systemctl is-active UNIT`: what systemd 252 printed, and its exit code, for a unit in the state the test set
  (tests/fixtures/systemd-252/is-active.<state>.*).
- `fleetctl list-machines`: fleet's sample machine list minus the machines the test says are gone (fleet lists only
  live machines), in fleetctl's tab layout; or one of fleet's recorded failures, with its exit code.
- `fleetctl start FILE`, `list-units`, `destroy UNIT`: fleet's messages and layout, with the cluster's units kept in
  one registry file shared by every node, as fleet keeps them in etcd. A started unit is listed `inactive dead`
  at first (scheduled, not yet started by systemd on its machine), then as the registry says it comes up.

Each node's answers are in `standin.json` beside the program; `install` writes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.netns import NetnsCluster

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HEALTHY_UNITS = {"etcd2": "active", "fleet": "active"}


def install(
    cluster: NetnsCluster,
    i: int,
    *,
    units: dict[str, str] | None = None,
    list_machines: str = "list-machines.coreos-vagrant",
    gone: tuple[str, ...] = (),
) -> None:
    """Put both stand-ins on node i with its answers: `units` maps a unit to its state (a recorded one: active,
    inactive, failed, activating, …); `list_machines` names the fleet fixture to answer with; `gone` are the IPs of
    machines fleet no longer lists."""
    # The system's python3: the nodes' root has a home of its own, where a per-user Python would be hidden.
    program = "#!/usr/bin/python3\n" + Path(__file__).read_text().split("\n", 1)[1]
    for name in ("systemctl", "fleetctl"):
        cluster.install_tool(i, name, program)
    view = {
        "fixtures": str(FIXTURES),
        "registry": str(registry_path(cluster)),
        "units": HEALTHY_UNITS if units is None else units,
        "list_machines": list_machines,
        "gone": list(gone),
    }
    (cluster.nodes[i].bin / "standin.json").write_text(json.dumps(view))


def registry_path(cluster: NetnsCluster) -> Path:
    return cluster.workdir / "fleet-registry.json"


def read_registry(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"units": {}, "started": [], "destroyed": [], "comes_up": ["active", "running"]}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write_registry(path: Path, registry: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(registry))
    os.replace(temporary, path)


# ---------------------------------------------------------------- the program


def replay(recorded: Path) -> int:
    """Print a recorded output (`.stdout`, `.stderr`, whichever exist) and return its exit code (`.rc`, else 0)."""
    for suffix, stream in ((".stdout", sys.stdout), (".stderr", sys.stderr)):
        if recorded.with_name(recorded.name + suffix).exists():
            stream.write(recorded.with_name(recorded.name + suffix).read_text())
    rc = recorded.with_name(recorded.name + ".rc")
    return int(rc.read_text()) if rc.exists() else 0


def table(rows: list[list[str]], legend: bool) -> str:
    """fleetctl's tabwriter layout (minimum width 0, tab width 8, padding 1, padded with tabs); row 0 is the legend."""
    rows = rows if legend else rows[1:]
    if not rows:
        return ""
    widths = [-(-(max(len(row[c]) for row in rows) + 1) // 8) * 8 for c in range(len(rows[0]) - 1)]
    return "".join(
        "".join(cell + "\t" * -(-(width - len(cell)) // 8) for cell, width in zip(row, widths, strict=False))
        + row[-1]
        + "\n"
        for row in rows
    )


def recorded_rows(path: Path) -> list[list[str]]:
    return [[cell for cell in line.split("\t") if cell] for line in path.read_text().splitlines()]


def systemctl(view: dict[str, Any], args: list[str]) -> int:
    if len(args) != 2 or args[0] != "is-active":
        print(f"stand-in systemctl: only `is-active UNIT` is recorded, not {args}", file=sys.stderr)
        return 2
    state = view["units"].get(args[1], "not-found")  # systemd 252 says "inactive" for a unit it does not know
    return replay(Path(view["fixtures"]) / "systemd-252" / f"is-active.{state}")


def fleetctl(view: dict[str, Any], args: list[str]) -> int:
    fleet = Path(view["fixtures"]) / "fleet"
    registry_file = Path(view["registry"])
    command, flags = args[0] if args else "", set(args[1:])
    legend = "--no-legend" not in flags
    if command == "list-machines":
        recorded = fleet / view["list_machines"]
        if recorded.with_name(recorded.name + ".rc").exists():
            return replay(recorded)  # one of fleet's recorded failures
        rows = recorded_rows(recorded.with_name(recorded.name + ".stdout"))
        sys.stdout.write(table([row for row in rows if row[1] not in view["gone"]], legend))
        return 0
    registry = read_registry(registry_file)
    if command == "start":
        path = Path(args[-1])
        if not path.is_file():
            print(
                f"Error creating units: unable to find Unit({path.name}) in Registry or on filesystem", file=sys.stderr
            )
            return 1
        machine = "/".join(recorded_rows(fleet / "list-machines.coreos-vagrant.stdout")[1][:2])
        registry["units"][path.name] = {"machine": machine, "listed": 0}
        registry["started"].append({"file": str(path), "text": path.read_text()})
        write_registry(registry_file, registry)
        print(f"Unit {path.name} launched on {machine}")
        return 0
    if command == "list-units":
        rows = recorded_rows(fleet / "list-units.coreos-vagrant.stdout")
        for name, unit in registry["units"].items():
            active, sub = ["inactive", "dead"] if unit["listed"] == 0 else registry["comes_up"]
            rows.append([name, unit["machine"], active, sub])
            unit["listed"] += 1
        write_registry(registry_file, registry)
        sys.stdout.write(table(rows, legend))
        return 0
    if command == "destroy":
        for name in args[1:]:
            if registry["units"].pop(name, None) is not None:  # fleet ignores units it does not have
                registry["destroyed"].append(name)
                print(f"Destroyed {name}")
        write_registry(registry_file, registry)
        return 0
    print(f"stand-in fleetctl: {command!r} is not recorded", file=sys.stderr)
    return 2


def main() -> int:
    view = json.loads((Path(sys.argv[0]).parent / "standin.json").read_text())
    tool = systemctl if Path(sys.argv[0]).name == "systemctl" else fleetctl
    return tool(view, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
