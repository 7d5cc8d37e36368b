"""The one adapter over the Vagrant CLI: every `vagrant` call of the program goes through `Vagrant`.

It hides Vagrant's quirks (docs/field-notes.md §1) from the rest of the program:
- commands run with `--machine-readable`; fields are decoded (`%!(VAGRANT_COMMA)` → `,`, literal `\\n` →
  newline) and an `error-exit` line becomes a `LabError` naming what went wrong (a provider Vagrant cannot use
  → `ToolMissing`), instead of a bare non-zero exit;
- the environment is completed, never replaced, and Vagrant's update checks are switched off so nothing
  talks to the internet behind the user's back;
- stdout and stderr are both kept: every call appends them to `DIR/.lab/logs/<command>[-<machine>].log`,
  and a failure quotes the relevant tail of that run plus the log's path.

The calls go to the `vagrant` executable through `proc` (the program's one subprocess wrapper) rather than
through python-vagrant's `Vagrant` class: that class sends stderr to /dev/null unless given a file, drops the
`error-exit` line of a failed `status`/`ssh-config`, never decodes machine-readable fields, replaces the
environment with `env=` and cannot pin a box version in `box_add` — each of which this module exists to avoid.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreos_lab import proc
from coreos_lab.errors import LabError, ToolMissing
from coreos_lab.vagrant.providers import PROVIDERS

ENCODED_COMMA = "%!(VAGRANT_COMMA)"

# Vagrant phones home (checkpoint) and checks for box updates unless told not to; a lab must stay offline.
OFFLINE_ENV = {
    "VAGRANT_CHECKPOINT_DISABLE": "1",
    "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
    "VAGRANT_NO_COLOR": "1",
}

INSTALL_HINT = "install it: apt-get install -y --no-install-recommends vagrant (Debian/Ubuntu), or see vagrantup.com"

# Errors that mean "this provider cannot run here": the user must install or fix something, exit 4.
PROVIDER_ERRORS = {"ProviderNotUsable", "NoDefaultProvider", "ProviderNotFound", "ProviderNotFoundSuggestion"}


def decode(field: str) -> str:
    """Undo Vagrant's machine-readable escaping of one field."""
    return field.replace(ENCODED_COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


@dataclass(frozen=True)
class MachineLine:
    """One `timestamp,target,type,data…` line of `--machine-readable` output, decoded."""

    timestamp: int
    target: str
    kind: str
    data: tuple[str, ...]

    @property
    def text(self) -> str:
        """What a person would have read: the message of a `ui` line, or the data joined."""
        if self.kind in ("ui", "error-exit") and len(self.data) >= 2:
            return self.data[1]
        return ", ".join(self.data)


_LINE_RE = re.compile(r"^(\d+),([^,]*),([^,]+)(?:,(.*))?$")


def parse_line(raw: str) -> MachineLine | None:
    """A machine-readable line, or None for anything else Vagrant or Ruby printed (warnings, plugin noise)."""
    match = _LINE_RE.match(raw.rstrip("\r\n"))
    if not match:
        return None
    timestamp, target, kind, rest = match.groups()
    data = tuple(decode(part) for part in rest.split(",")) if rest is not None else ()
    return MachineLine(int(timestamp), decode(target), kind, data)


def parse_machine_readable(text: str) -> list[MachineLine]:
    return [line for line in map(parse_line, text.splitlines()) if line is not None]


@dataclass(frozen=True)
class MachineStatus:
    name: str
    state: str  # Vagrant's state id: not_created, running, poweroff, saved, aborted, shutoff, …
    provider: str | None
    description: str = ""  # Vagrant's short human text ("not created", "running")

    @property
    def created(self) -> bool:
        return self.state != "not_created"

    @property
    def running(self) -> bool:
        return self.state == "running"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "provider": self.provider, "description": self.description}


def parse_status(lines: Iterable[MachineLine]) -> list[MachineStatus]:
    """Machine states from `vagrant status --machine-readable`, in Vagrantfile order."""
    fields: dict[str, dict[str, str]] = {}
    for line in lines:
        if not line.target or line.kind not in ("provider-name", "state", "state-human-short"):
            continue
        fields.setdefault(line.target, {})[line.kind] = line.data[0] if line.data else ""
    return [
        MachineStatus(
            name=name,
            state=info.get("state", "unknown"),
            provider=info.get("provider-name"),
            description=info.get("state-human-short", ""),
        )
        for name, info in fields.items()
    ]


@dataclass(frozen=True)
class InstalledBox:
    name: str
    provider: str
    version: str


def parse_box_list(lines: Iterable[MachineLine]) -> list[InstalledBox]:
    """Boxes from `vagrant box list --machine-readable`: `box-name`, `box-provider`, `box-version` per box."""
    boxes: list[InstalledBox] = []
    current: dict[str, str] = {}
    for line in lines:
        if line.kind not in ("box-name", "box-provider", "box-version"):
            continue
        if line.kind == "box-name" and current:
            boxes.append(_box(current))
            current = {}
        current[line.kind] = line.data[0] if line.data else ""
    if current:
        boxes.append(_box(current))
    return boxes


def _box(fields: dict[str, str]) -> InstalledBox:
    return InstalledBox(fields.get("box-name", ""), fields.get("box-provider", ""), fields.get("box-version", ""))


def box_on_disk(home: Path, name: str, version: str | None, provider: str) -> bool:
    """Whether Vagrant's box directory holds the box, as `vagrant box list` would find it (Vagrant 2.3's
    BoxCollection#all: HOME/boxes/NAME/VERSION/PROVIDER/metadata.json, a `/` in the name spelt -VAGRANTSLASH-;
    Vagrant 2.4 puts an architecture directory before PROVIDER). Only a yes is certain: on no, ask Vagrant."""
    box_dir = home / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    for version_dir in [box_dir / version] if version else box_dir.glob("[!.]*"):
        for metadata in (version_dir / provider / "metadata.json", *version_dir.glob(f"*/{provider}/metadata.json")):
            if metadata.is_file():
                return True
    return False


def machine_id(lab_dir: Path, name: str, provider: str) -> str | None:
    """The provider's id of a created machine (a VirtualBox VM's UUID, a libvirt domain's), as Vagrant records it in
    `.vagrant/machines/NAME/PROVIDER/id`; None when it was never created."""
    try:
        return (lab_dir / ".vagrant" / "machines" / name / provider / "id").read_text().strip() or None
    except OSError:
        return None


# What Vagrant's SSH communicator prints, at most every 10 s, while the guest's sshd refuses its key; it goes on until
# config.vm.boot_timeout. Seen this often (≥ 20 s of refusals), the key is not going to be accepted.
KEY_REFUSED = "Warning: Authentication failure. Retrying..."
KEY_REFUSED_REPORTS = 3


class KeyRefused(LabError):
    """A guest's SSH server kept refusing Vagrant's key: the box does not keep its side of the contract."""

    def __init__(self, machine: str, log_path: Path | None):
        where = f" (full log: {log_path})" if log_path else ""
        super().__init__(f"{machine}: its SSH server refuses Vagrant's key{where}")
        self.machine = machine
        self.log_path = log_path


class _KeyRefusals:
    """Counts Vagrant's authentication-failure reports per machine, passing every progress line on."""

    def __init__(self, on_progress: ProgressCallback | None):
        self.on_progress = on_progress
        self.counts: dict[str, int] = {}
        self.machine: str | None = None  # the first machine that kept refusing

    def __call__(self, target: str, text: str) -> None:
        if text.endswith(KEY_REFUSED):
            self.counts[target] = self.counts.get(target, 0) + 1
            if self.counts[target] >= KEY_REFUSED_REPORTS and self.machine is None:
                self.machine = target
        if self.on_progress is not None:
            self.on_progress(target, text)

    def tripped(self) -> bool:
        return self.machine is not None


class VagrantFailed(LabError):
    """A Vagrant command failed; the message quotes the relevant tail of its output and names the log."""

    def __init__(self, message: str, *, error_class: str | None, log_path: Path | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.error_class = error_class
        self.log_path = log_path


def error_from_output(
    argv: Sequence[str], returncode: int, output: str, *, provider: str | None, log_path: Path | None
) -> LabError:
    """Turn a failed run's output into the clearest error: the `error-exit` line if there is one."""
    lines = parse_machine_readable(output)
    exits = [line for line in lines if line.kind == "error-exit"]
    where = f" (full log: {log_path})" if log_path else ""
    if exits:
        error_class = exits[-1].data[0] if exits[-1].data else ""
        message = exits[-1].data[1] if len(exits[-1].data) > 1 else ""
        short_class = error_class.rsplit("::", 1)[-1]
        if short_class in PROVIDER_ERRORS:
            reason = _provider_reason(message)
            named = f"provider {provider}" if provider else "no usable provider"
            spec = PROVIDERS.get(provider or "")
            return ToolMissing(
                f"Vagrant cannot use {named}: {reason}",
                hint=spec.install_hint if spec else "install a provider Vagrant supports, e.g. VirtualBox",
            )
        return VagrantFailed(
            f"vagrant {_verb(argv)} failed ({short_class}): {message.strip()}{where}",
            error_class=error_class,
            log_path=log_path,
        )
    tail = "\n".join(_human_lines(output)[-15:])
    return VagrantFailed(
        f"vagrant {_verb(argv)} failed (exit {returncode}){where}" + (f"\n{tail}" if tail else ""),
        error_class=None,
        log_path=log_path,
    )


def _provider_reason(message: str) -> str:
    """The one sentence that matters: Vagrant puts the provider's own reason after 'shown below:'."""
    body = message.split("shown below:", 1)[-1].strip() if "shown below:" in message else message.strip()
    first = body.split("\n\n", 1)[0].replace("\n", " ").strip()
    return first or "the provider is not usable"


def _verb(argv: Sequence[str]) -> str:
    words = [a for a in argv[1:] if not a.startswith("-")]
    return " ".join(words[:3])


def _human_lines(output: str) -> list[str]:
    """Output as a person would read it: decoded messages, progress noise dropped."""
    lines: list[str] = []
    for raw in output.splitlines():
        parsed = parse_line(raw)
        if parsed is None:
            if raw.strip():
                lines.append(raw)
        elif parsed.kind in ("ui", "error-exit") and not parsed.text.startswith("Progress:"):
            lines.extend(parsed.text.splitlines())
    return lines


# (machine, message): the machine a Vagrant message is about ("" when it concerns none in particular).
ProgressCallback = Callable[[str, str], None]


class Vagrant:
    """Vagrant commands run in one lab directory with one provider, logging into `log_dir`.

    `keep_logs=False` is for checks that must leave nothing behind (preflight): output is still captured for
    errors, but no log file is written.
    """

    def __init__(
        self,
        lab_dir: Path,
        *,
        provider: str | None = None,
        log_dir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        keep_logs: bool = True,
    ):
        self.lab_dir = Path(lab_dir)
        self.keep_logs = keep_logs
        self.provider = provider
        self.log_dir = log_dir if log_dir is not None else self.lab_dir / ".lab" / "logs"
        self.env = dict(OFFLINE_ENV)
        if provider:
            # Machines not yet created are reported (and created) with the default provider.
            self.env["VAGRANT_DEFAULT_PROVIDER"] = provider
        self.env.update(extra_env or {})
        self.timeout = timeout

    @staticmethod
    def executable() -> str:
        return proc.which("vagrant", hint=INSTALL_HINT)

    # -- queries ----------------------------------------------------------------------------------------------

    def version(self) -> str:
        result = proc.run([self.executable(), "--version"], extra_env=self.env, check=False, timeout=60)
        match = re.search(r"Vagrant (\S+)", result.stdout + result.stderr)
        if not result.succeeded or not match:
            raise VagrantFailed(
                f"`vagrant --version` failed (exit {result.returncode}): {(result.stdout + result.stderr).strip()}",
                error_class=None,
                log_path=None,
            )
        return match.group(1)

    def status(self) -> list[MachineStatus]:
        """Every machine of the Vagrantfile with its state. Raises on any failure (never an empty list)."""
        output = self._run(["status"], log_name="status")
        statuses = parse_status(parse_machine_readable(output))
        if not statuses:
            raise VagrantFailed(
                f"`vagrant status` in {self.lab_dir} listed no machines", error_class=None, log_path=self._log("status")
            )
        return statuses

    def ssh_config(self, *names: str) -> str:
        """The OpenSSH config of the machines named, or of every machine (`vagrant ssh-config [NAME…]`). Vagrant
        fails it, "not yet ready for SSH", when one of them is not running."""
        # --machine-readable would wrap the config in ui lines; the plain output is the config itself. Only
        # stdout, though: stderr may hold Vagrant's own log (VAGRANT_LOG) or a plugin's Ruby warnings.
        args = ["ssh-config", *names]
        log_name = f"ssh-config-{names[0]}" if len(names) == 1 else "ssh-config"
        return self._run(args, log_name=log_name, machine_readable=False, stdout_only=True)

    def box_list(self) -> list[InstalledBox]:
        return parse_box_list(parse_machine_readable(self._run(["box", "list"], log_name="box")))

    def has_box(self, name: str, version: str | None, provider: str) -> bool:
        """Whether Vagrant has the box: seen in its box directory (no Ruby start-up), else `vagrant box list`."""
        if box_on_disk(self.home(), name, version, provider):
            return True
        return any(
            b.name == name and b.provider == provider and (version is None or b.version == version)
            for b in self.box_list()
        )

    def home(self) -> Path:
        """Vagrant's home (boxes, plugins): VAGRANT_HOME, else ~/.vagrant.d."""
        return Path(self.env.get("VAGRANT_HOME") or os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")

    # -- actions ----------------------------------------------------------------------------------------------

    def box_add(
        self,
        url: str,
        *,
        version: str | None,
        provider: str,
        name: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Add a box from box metadata at `url` (pinned to `version`), or a box file named `name`."""
        args = ["box", "add", url, "--provider", provider]
        if version:
            args += ["--box-version", version]
        if name:
            args += ["--name", name]
        self._run(args, log_name="box", on_progress=on_progress)

    def up(self, names: Sequence[str], *, on_progress: ProgressCallback | None = None) -> None:
        """`vagrant up NAME…`: one machine per process, or several that the provider brings up in parallel."""
        args = ["up", *names]
        if self.provider:
            args.append(f"--provider={self.provider}")
        log_name = f"up-{names[0]}" if len(names) == 1 else "up"
        # A guest that refuses Vagrant's key would keep `vagrant up` waiting until its boot timeout: stopped early.
        refusals = _KeyRefusals(on_progress)
        try:
            self._run(args, log_name=log_name, on_progress=refusals, stop_when=refusals.tripped)
        except LabError:
            if refusals.machine is None:
                raise
        if refusals.machine is not None:
            raise KeyRefused(refusals.machine, self._log(log_name) if self.keep_logs else None)

    def halt(self, names: Sequence[str] = (), *, on_progress: ProgressCallback | None = None) -> None:
        self._run(["halt", *names], log_name="halt", on_progress=on_progress)

    def destroy(self, names: Sequence[str] = (), *, on_progress: ProgressCallback | None = None) -> None:
        self._run(["destroy", "--force", *names], log_name="destroy", on_progress=on_progress)

    def ssh_argv(self, name: str, command: Sequence[str] = ()) -> list[str]:
        """The command line of `vagrant ssh`, for the caller to exec (a terminal session needs the real tty).

        With a command, `vagrant ssh -c` runs it and exits with its exit code.
        """
        import shlex

        argv = [self.executable(), "ssh", name]
        if command:
            argv += ["-c", shlex.join(command)]
        return argv

    def exec_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # -- the one place a vagrant command runs ---------------------------------------------------------------

    def _log(self, log_name: str) -> Path:
        return self.log_dir / f"{log_name}.log"

    def _run(
        self,
        args: list[str],
        *,
        log_name: str,
        on_progress: ProgressCallback | None = None,
        machine_readable: bool = True,
        stdout_only: bool = False,
        stop_when: Callable[[], bool] | None = None,
    ) -> str:
        """Run `vagrant ARGS`, logging its output; returns stdout+stderr merged, or with `stdout_only` stdout."""
        argv = [self.executable(), *args]
        if machine_readable:
            argv.append("--machine-readable")
        log_path: Path | None = None
        if self.keep_logs:
            log_path = self._log(log_name)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path or os.devnull, "a", encoding="utf-8") as log:
            log.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(argv)}\n")
            log.flush()

            def on_line(raw: str) -> None:
                parsed = parse_line(raw) if machine_readable else None
                if parsed is None:
                    log.write(raw + "\n")
                    log.flush()
                    return
                prefix = f"[{parsed.target}] " if parsed.target else ""
                if parsed.kind in ("ui", "error-exit"):
                    for text_line in parsed.text.splitlines() or [""]:
                        log.write(prefix + text_line + "\n")
                    if on_progress and parsed.kind == "ui" and parsed.text.strip():
                        on_progress(parsed.target, parsed.text.strip().splitlines()[0])
                else:
                    log.write(f"{prefix}{parsed.kind}: {', '.join(parsed.data)}\n")
                log.flush()  # a user may be following the log while Vagrant works

            if stdout_only:
                result = proc.run(argv, cwd=self.lab_dir, extra_env=self.env, timeout=self.timeout, check=False)
                for raw in (result.stdout + result.stderr).splitlines():
                    on_line(raw)
            else:
                result = proc.stream(
                    argv, on_line, cwd=self.lab_dir, extra_env=self.env, timeout=self.timeout, stop_when=stop_when
                )
            log.write(f"== exit {result.returncode}\n")
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise error_from_output(argv, result.returncode, output, provider=self.provider, log_path=log_path)
        return result.stdout
