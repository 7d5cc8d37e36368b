"""SSH to cluster nodes with paramiko, configured from an OpenSSH config (what `vagrant ssh-config` prints).

The config is read with `paramiko.SSHConfig` and mapped key by key (HostName, User, Port, IdentityFile,
IdentitiesOnly, StrictHostKeyChecking, UserKnownHostsFile). Host keys are checked against a known_hosts file
only when the config asks for it; otherwise (lab VMs: `StrictHostKeyChecking no`) they are accepted in
memory. Nothing is ever written to the user's known_hosts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coreos_lab.errors import BadInput, ExitCode, LabError
from coreos_lab.proc import CommandResult


def _import_paramiko_without_invoke() -> None:
    """paramiko's config module imports invoke (about half of paramiko's import time) only to run `Match exec`
    lines (paramiko/config.py keeps the ImportError and raises it for such a line). `vagrant ssh-config` writes
    none: keep invoke out, and load it only for a config that has one (`_allow_match_exec`)."""
    if "invoke" in sys.modules:  # loaded already: nothing to save
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]  # "import invoke" now raises ImportError
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]


_import_paramiko_without_invoke()
import paramiko  # noqa: E402  # already imported, without invoke


def _allow_match_exec() -> None:
    """Give paramiko's config module the invoke it runs `Match exec` lines with."""
    import invoke

    paramiko.config.invoke = invoke  # type: ignore[attr-defined]


# paramiko logs transport errors (e.g. a banner timeout) from its own thread; without a handler Python would
# print them raw on stderr next to our report. They reach the root handler with --debug.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 30.0

_HOST_LINE = re.compile(r"^\s*Host\s+(.+?)\s*$", re.IGNORECASE)
_MATCH_EXEC = re.compile(r"^\s*Match\s.*\bexec\b", re.IGNORECASE | re.MULTILINE)


class SSHError(LabError):
    """A node could not be reached, or the connection to it broke."""


class CommandTimeout(SSHError):
    """A command did not finish in time (a deadline passed: exit 5); the connection itself may still be fine."""

    exit_code = ExitCode.TIMEOUT


@dataclass(frozen=True)
class SSHTarget:
    """One node as the OpenSSH config describes it."""

    name: str
    hostname: str
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    strict_host_key_checking: str = "ask"  # yes | no | accept-new | ask (OpenSSH's default)
    known_hosts_files: tuple[str, ...] = field(default=())

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "on")


def parse_ssh_config(text: str, *, source: str = "ssh-config") -> list[SSHTarget]:
    """The concrete hosts of an OpenSSH config, in file order (patterns like `*` only supply defaults)."""
    if _MATCH_EXEC.search(text):
        _allow_match_exec()
    try:
        config = paramiko.SSHConfig.from_text(text)
    except Exception as exc:  # paramiko raises several types for malformed lines
        raise BadInput(f"{source}: cannot parse OpenSSH config: {exc}") from exc
    names: list[str] = []
    for line in text.splitlines():
        match = _HOST_LINE.match(line)
        if not match:
            continue
        for name in shlex.split(match.group(1)):
            if not any(c in name for c in "*?!") and name not in names:
                names.append(name)
    targets = [_target(name, config.lookup(name), source) for name in names]
    if not targets:
        raise BadInput(f"{source}: no Host entries found", hint="expected the output of `vagrant ssh-config`")
    return targets


def _target(name: str, entry: Mapping[str, object], source: str) -> SSHTarget:
    def one(key: str) -> str | None:
        value = entry.get(key)
        return str(value) if value is not None else None

    def many(key: str) -> tuple[str, ...]:
        value = entry.get(key)
        if value is None:
            return ()
        items = value if isinstance(value, list) else str(value).split()
        return tuple(os.path.expanduser(str(v).strip('"')) for v in items)

    port_text = one("port") or "22"
    try:
        port = int(port_text)
    except ValueError:
        raise BadInput(f"{source}: Host {name}: Port must be a number, not {port_text!r}") from None
    return SSHTarget(
        name=name,
        hostname=one("hostname") or name,
        port=port,
        user=one("user"),
        identity_files=many("identityfile"),
        identities_only=_truthy(one("identitiesonly")),
        strict_host_key_checking=(one("stricthostkeychecking") or "ask").lower(),
        known_hosts_files=many("userknownhostsfile"),
    )


class AcceptForThisConnection(paramiko.MissingHostKeyPolicy):
    """Accept a host key nobody knows yet, for this connection only; never write it anywhere.

    Lab VMs get new host keys each time they are recreated, which is why `vagrant ssh-config` prints
    `StrictHostKeyChecking no` and `UserKnownHostsFile /dev/null`: there is no key to check against, and a remembered
    one would make the next lab's look like an attack. paramiko's own AutoAddPolicy would instead save the key into
    the known_hosts file last loaded (the user's own, with `accept-new`).
    """

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)


def host_key_policy(target: SSHTarget) -> paramiko.MissingHostKeyPolicy:
    """What to do with a host key that no known_hosts file names, as OpenSSH's StrictHostKeyChecking says: accept
    it for this connection (`no`, `accept-new`) or refuse it (`yes`, and `ask`: there is nobody to ask)."""
    if target.strict_host_key_checking in ("no", "accept-new"):
        return AcceptForThisConnection()
    return paramiko.RejectPolicy()


def known_hosts_files(target: SSHTarget) -> list[str]:
    """The existing known_hosts files to check host keys against: none with `StrictHostKeyChecking no`, otherwise
    UserKnownHostsFile (OpenSSH's default ~/.ssh/known_hosts)."""
    if target.strict_host_key_checking == "no":
        return []
    files = [f for f in target.known_hosts_files if f != "/dev/null"] or [os.path.expanduser("~/.ssh/known_hosts")]
    return [f for f in files if os.path.exists(f)]


_identities: dict[tuple[str, int, int], paramiko.PKey | None] = {}
_identities_lock = threading.Lock()


def identity(path: str) -> paramiko.PKey | None:
    """The private key at `path`, read once per process (again only if the file changed), or None when it cannot
    be read without a passphrase or is no key paramiko knows: paramiko then tries the file itself.

    A cluster's nodes share one key as a rule, and loading an RSA key costs ~50 ms of CPU here (cryptography
    checks it): Vagrant's insecure key and the keys Vagrant 2.3 inserts are RSA, and nine sessions loading it
    each, one thread at a time under the GIL, spent half a second on it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    cached = (path, stat.st_mtime_ns, stat.st_size)
    with _identities_lock:  # the sessions start together: one of them loads it, the others wait for that
        if cached not in _identities:
            try:
                _identities[cached] = paramiko.PKey.from_path(path)
            except (paramiko.SSHException, OSError, ValueError):
                _identities[cached] = None
        return _identities[cached]


def shell_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A command line for the remote shell with every word quoted (`env` via `env NAME=value …`)."""
    words = [*(["env", *(f"{k}={v}" for k, v in env.items())] if env else []), *argv]
    return shlex.join(words)


Command = tuple[Sequence[str], Mapping[str, str] | None]  # argv and its environment (None: the login's)


def _each_script(commands: Sequence[Command], token: str, at_once: bool) -> str:
    """A shell script that runs `commands` and follows each one's output with a marker line, on stdout with its
    exit code: the outputs can then be told apart whatever they contain (the token is fresh). `at_once`: all
    started together, each into its own files of a temporary directory, printed in order once all have ended."""
    mark = f"printf '\\n{token} %d\\n' \"$rc\"; printf '\\n{token}\\n' >&2"
    if not at_once:
        return "\n".join(f"{shell_command(argv, env)} </dev/null; rc=$?\n{mark}" for argv, env in commands)
    lines = ["d=$(mktemp -d) || exit 1", "trap 'rm -rf \"$d\"' EXIT"]
    for i, (argv, env) in enumerate(commands):
        lines.append(
            f'{{ {shell_command(argv, env)} </dev/null >"$d/{i}.out" 2>"$d/{i}.err"; echo $? >"$d/{i}.rc"; }} &'
        )
    lines.append("wait")
    for i in range(len(commands)):
        lines.append(f'cat "$d/{i}.out"; cat "$d/{i}.err" >&2; rc=$(cat "$d/{i}.rc"); {mark}')
    return "\n".join(lines)


def _split_each(commands: Sequence[Command], token: str, result: CommandResult) -> list[CommandResult]:
    """Each command's result out of `_each_script`'s output; the commands that did not run have none."""
    outs = re.split(rf"\n{token} (\d+)\n", result.stdout)  # out, rc, out, rc, …, what came after the last
    errs = result.stderr.split(f"\n{token}\n")
    done = (len(outs) - 1) // 2
    return [
        CommandResult(list(commands[i][0]), int(outs[2 * i + 1]), outs[2 * i], errs[i] if i < len(errs) else "")
        for i in range(done)
    ]


class SSHSession:
    """One connection to one node; commands run on it with a timeout, reconnecting once if it dropped."""

    def __init__(self, target: SSHTarget, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.target = target
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None

    def connect(self) -> None:
        t = self.target
        client = paramiko.SSHClient()
        for path in known_hosts_files(t):
            client.load_host_keys(path)  # read only: paramiko writes known_hosts on save_host_keys(), never called here
        client.set_missing_host_key_policy(host_key_policy(t))
        keys = [k for k in t.identity_files if os.path.exists(k)]
        # The first key that loads goes in as it is (see `identity`); the others as files, as before.
        loaded = next(((k, key) for k in keys if (key := identity(k)) is not None), None)
        pkey = loaded[1] if loaded else None
        key_files = [k for k in keys if not loaded or k != loaded[0]]
        sock = None
        try:
            # Our own TCP connect: paramiko's key exchange wait gives up silently at the same moment as its
            # banner timeout and then fails auth with a misleading "No existing session"; a separate, slightly
            # longer handshake timeout lets the real cause ("Error reading SSH protocol banner") through.
            sock = socket.create_connection((t.hostname, t.port), timeout=self.connect_timeout)
            # Without TCP_NODELAY, Nagle holds each small SSH packet until the peer's delayed ACK (~40 ms):
            # every command round trip then costs ~50 ms instead of ~4 ms (OpenSSH's client sets it too).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                t.hostname,
                port=t.port,
                username=t.user,
                pkey=pkey,
                key_filename=key_files or None,  # type: ignore[arg-type]  # paramiko accepts a list too
                look_for_keys=not t.identities_only,
                allow_agent=not t.identities_only,
                sock=sock,
                timeout=self.connect_timeout + 1,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except (paramiko.SSHException, OSError, EOFError, ValueError) as exc:
            client.close()
            if sock is not None:
                sock.close()
            raise SSHError(f"{t.name}: ssh to {t.address} failed: {_describe(exc)}") from exc
        self._client = client

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> CommandResult:
        """Run `argv` on the node; a non-zero exit is a result, not an error. Reconnects once."""
        return self._run(shell_command(argv, env), list(argv), timeout)

    def run_each(
        self, commands: Sequence[Command], *, timeout: float = DEFAULT_COMMAND_TIMEOUT, at_once: bool = False
    ) -> list[CommandResult]:
        """Run several commands in ONE exec (one round trip, not one per command), one after the other or, with
        `at_once`, all at the same time; each result with its own exit code, stdout and stderr, in the order
        given. `timeout` bounds them all."""
        script = _each_script(commands, token := secrets.token_hex(8), at_once)
        result = self._run(script, [commands[0][0][0], "…"], timeout)
        return _split_each(commands, token, result)

    def _run(self, command: str, argv: list[str], timeout: float) -> CommandResult:
        for attempt in (1, 2):
            if not self._alive():
                self.close()
                self.connect()
            try:
                return self._exec(command, argv, timeout)
            except (paramiko.SSHException, EOFError, ConnectionError) as exc:
                if attempt == 2:
                    raise SSHError(f"{self.target.name}: running {argv[0]} failed: {_describe(exc)}") from exc
                self.close()
        raise AssertionError("unreachable")

    def _exec(self, command: str, argv: list[str], timeout: float) -> CommandResult:
        assert self._client is not None
        deadline = time.monotonic() + timeout
        _stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
        channel = stdout.channel
        try:
            # Outputs of health commands are small: reading stdout to EOF first cannot fill stderr's window.
            out = stdout.read()
            err = stderr.read()
        except TimeoutError as exc:
            channel.close()
            raise CommandTimeout(f"{self.target.name}: {argv[0]} did not finish within {timeout:g}s") from exc
        if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
            channel.close()
            raise CommandTimeout(f"{self.target.name}: {argv[0]} did not finish within {timeout:g}s")
        return CommandResult(
            argv, channel.recv_exit_status(), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SSHSession:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:  # "connection refused", "no route to host", …
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
