#!/usr/bin/env python3
"""A stand-in `vagrant` executable for orchestration tests that need a working provider.

VirtualBox cannot run on the test machines, so `lab up` past its preflight cannot be driven by the real Vagrant
there. This script answers the few commands lifecycle uses, in Vagrant's own machine-readable format, and keeps
machine state the way Vagrant does (`.vagrant/machines/NAME/PROVIDER/id`). It records every call (argv, start,
end) as JSON lines in $STANDIN_CALLS so tests can check order and concurrency.

Knobs: STANDIN_MACHINES (comma-separated names), STANDIN_FAIL (a machine whose `up` fails),
STANDIN_UP_SECONDS (how long an `up` takes to boot), STANDIN_PROVISION_SECONDS (and then to provision; with
STANDIN_PROVISION_UNTIL_SSH_CONFIG=1, until `vagrant ssh-config` has run, for at most that long),
STANDIN_SSH_CONFIG (a file `vagrant ssh-config` prints); VAGRANT_LOG adds a log line on stderr, as Vagrant's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROVIDER = os.environ.get("VAGRANT_DEFAULT_PROVIDER", "virtualbox")


def emit(target: str, kind: str, *data: str) -> None:
    fields = [d.replace(",", "%!(VAGRANT_COMMA)").replace("\n", "\\n") for d in data]
    print(",".join([str(int(time.time())), target, kind, *fields]), flush=True)


def machines() -> list[str]:
    return [m for m in os.environ.get("STANDIN_MACHINES", "").split(",") if m]


def machine_dir(name: str) -> Path:
    return Path.cwd() / ".vagrant" / "machines" / name / PROVIDER


def state(name: str) -> str:
    directory = machine_dir(name)
    if not (directory / "id").is_file():
        return "not_created"
    return "poweroff" if (directory / "halted").exists() else "running"


def ssh_config_marker() -> Path:
    """Exists once `vagrant ssh-config` has run in this lab."""
    return Path.cwd() / ".vagrant" / "standin-ssh-config-ran"


def provision() -> None:
    """What Vagrant does after boot: takes STANDIN_PROVISION_SECONDS, or lasts until ssh-config has run."""
    seconds = float(os.environ.get("STANDIN_PROVISION_SECONDS", "0"))
    if not os.environ.get("STANDIN_PROVISION_UNTIL_SSH_CONFIG"):
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while not ssh_config_marker().exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# Vagrant 2.3.4's message (templates/locales/en.yml, ssh_not_ready), as `vagrant ssh-config` prints it on stderr.
SSH_NOT_READY = """The provider for this Vagrant-managed machine is reporting that it
is not yet ready for SSH. Depending on your provider this can carry
different meanings. Make sure your machine is created and running and
try again. Additionally, check the output of `vagrant status` to verify
that the machine is in the state that you expect. If you continue to
get this error message, please view the documentation for the provider
you're using."""


def host_blocks(config: str, names: list[str]) -> str:
    """The `Host NAME` blocks of an OpenSSH config for `names` (all of them when none are named)."""
    blocks = [b for b in re.split(r"(?m)^(?=Host )", config) if b.startswith("Host ")]
    return "".join(b for b in blocks if not names or b.split()[1] in names)


def boxes_file() -> Path:
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    home.mkdir(parents=True, exist_ok=True)
    return home / "standin-boxes.json"


def main(argv: list[str]) -> int:
    if os.environ.get("VAGRANT_LOG"):
        # Like Vagrant, whose log (VAGRANT_LOG=info, a user debugging it) goes to stderr, timestamped on request.
        timestamped = os.environ.get("VAGRANT_LOG_TIMESTAMP")
        prefix = time.strftime("%Y-%m-%d %H:%M:%S [ INFO] ") if timestamped else " INFO global: "
        print(f"{prefix}Vagrant version: 2.3.4", file=sys.stderr, flush=True)
    words = [a for a in argv if not a.startswith("--")]
    command = words[0] if words else ""
    if argv[:1] == ["--version"]:
        print("Vagrant 2.3.4")
        return 0
    if command == "status":
        for name in machines():
            emit(name, "provider-name", PROVIDER)
            emit(name, "state", state(name))
            emit(name, "state-human-short", state(name).replace("_", " "))
        return 0
    if command == "box" and words[1:2] == ["list"]:
        for box in json.loads(boxes_file().read_text()) if boxes_file().exists() else []:
            emit("", "box-name", box["name"])
            emit("", "box-provider", box["provider"])
            emit("", "box-version", box["version"])
        return 0
    if command == "box" and words[1:2] == ["add"]:
        url = words[2]
        version = argv[argv.index("--box-version") + 1] if "--box-version" in argv else "0"
        name = url.rstrip("/").rsplit("/", 1)[-1]
        emit("box", "ui", "info", f"==> box: Loading metadata for box '{url}'")
        existing = json.loads(boxes_file().read_text()) if boxes_file().exists() else []
        existing.append({"name": name, "provider": PROVIDER, "version": version})
        boxes_file().write_text(json.dumps(existing))
        emit("box", "ui", "success", f"==> box: Successfully added box '{name}' (v{version}) for '{PROVIDER}'!")
        return 0
    if command == "up":
        name = words[1]
        emit(name, "ui", "info", f"Bringing machine '{name}' up with '{PROVIDER}' provider...")
        time.sleep(float(os.environ.get("STANDIN_UP_SECONDS", "0")))
        if name == os.environ.get("STANDIN_FAIL"):
            message = (
                "Timed out while waiting for the machine to boot. This means that\n"
                "Vagrant was unable to communicate with the guest machine within\n"
                'the configured ("config.vm.boot_timeout" value) time period.'
            )
            emit(name, "ui", "info", f"==> {name}: Waiting for machine to boot. This may take a few minutes...")
            emit("", "ui", "error", message)
            emit("", "error-exit", "Vagrant::Errors::VMBootTimeout", message)
            return 1
        directory = machine_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "id").write_text(f"standin-{name}")
        (directory / "halted").unlink(missing_ok=True)
        emit(name, "ui", "info", f"==> {name}: Machine booted and ready!")
        provision()
        emit(name, "ui", "info", f"==> {name}: Running provisioner: shell...")
        return 0
    if command == "halt":
        for name in words[1:] or machines():
            if state(name) == "running":
                (machine_dir(name) / "halted").write_text("")
                emit(name, "ui", "info", f"==> {name}: Attempting graceful shutdown of VM...")
        return 0
    if command == "destroy":
        for name in words[1:] or machines():
            if state(name) != "not_created":
                for path in sorted(machine_dir(name).iterdir()):
                    path.unlink()
                emit(name, "ui", "info", f"==> {name}: Destroying VM and associated drives...")
        return 0
    if command == "ssh-config":
        # The machines' OpenSSH config: the Host blocks of a file the test wrote (e.g. for nodes in network
        # namespaces), of the machines named or of every one. Like Vagrant, it fails when one is not running.
        config = os.environ.get("STANDIN_SSH_CONFIG")
        ssh_config_marker().parent.mkdir(parents=True, exist_ok=True)
        ssh_config_marker().touch()
        names = words[1:] or machines()
        if any(state(name) != "running" for name in names):
            print(SSH_NOT_READY, file=sys.stderr)
            return 1
        if config:
            print(host_blocks(Path(config).read_text(), words[1:]), end="")
        return 0
    if command == "ssh":
        # The guest's shell: runs the command here, exit code passed through like `vagrant ssh -c`.
        script = argv[argv.index("-c") + 1] if "-c" in argv else "true"
        return subprocess.run(["sh", "-c", script], check=False).returncode
    print(f"standin vagrant: unsupported command {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    started = time.time()
    code = main(sys.argv[1:])
    calls = os.environ.get("STANDIN_CALLS")
    if calls:
        with open(calls, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": sys.argv[1:], "start": started, "end": time.time(), "rc": code}) + "\n")
    sys.exit(code)
