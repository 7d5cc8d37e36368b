"""OpenPGP signature checks with the gpg binary, against a keyring file the user names.

The keyring (armored or binary public keys) is imported into a throwaway GNUPGHOME, so the user's own
keyring and trust settings neither help nor hurt: exactly the keys in the file count.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from coreos_lab.errors import BadInput
from coreos_lab.proc import run, which

_HINT = "install gpg (apt-get install gpg)"


def verify(keyring: Path, signature: Path, data: Path | None = None, *, output: Path | None = None) -> str:
    """Check `signature` (detached over `data`, or a clearsigned file when `data` is None; then the signed
    text is written to `output`). Returns the signing key's fingerprint; `BadInput` when it does not verify."""
    gpg = which("gpg", hint=_HINT)
    if not keyring.is_file():
        raise BadInput(f"--keyring {keyring}: no such file")
    with tempfile.TemporaryDirectory(prefix="lab-gpg-") as home:
        base = [gpg, "--batch", "--no-tty", "--homedir", home]
        imported = run([*base, "--import", keyring], check=False)
        if not imported.succeeded:
            raise BadInput(f"--keyring {keyring}: not an OpenPGP public key file ({_last_line(imported.stderr)})")
        argv = [*base, "--trust-model", "always", "--status-fd", "1"]
        if output is not None:
            argv += ["--yes", "--output", str(output)]
        argv += ["--verify", str(signature)] + ([str(data)] if data is not None else [])
        result = run(argv, check=False)
    status = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("[GNUPG:] ")]
    valid = [fields[1] for fields in status if fields and fields[0] == "VALIDSIG" and len(fields) > 1]
    bad = {fields[0] for fields in status if fields} & {
        "BADSIG",
        "ERRSIG",
        "NO_PUBKEY",
        "NODATA",
        "EXPKEYSIG",
        "REVKEYSIG",
    }
    if result.returncode != 0 or not valid or bad:
        reason = ", ".join(sorted(bad)) or _last_line(result.stderr) or f"gpg exit {result.returncode}"
        what = f"{signature} over {data}" if data is not None else str(signature)
        raise BadInput(f"signature {what} does not verify with keyring {keyring}: {reason}")
    return valid[0]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
