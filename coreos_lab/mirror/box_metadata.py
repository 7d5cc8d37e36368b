"""Vagrant box metadata documents (docs/field-notes.md §1) as published next to upstream boxes: parse one and pick the
single box (version × provider × architecture) a user means, with its checksum.

Every problem is a `BadInput` naming the document, the field path and the offending value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coreos_lab.errors import BadInput
from coreos_lab.json_input import parse_json
from coreos_lab.mirror.checksums import check_checksum
from coreos_lab.mirror.store import DEFAULT_ARCH, BoxKey


@dataclass(frozen=True)
class BoxSource:
    """One box described by a metadata document."""

    key: BoxKey
    url: str | None
    checksum_type: str  # '' when the document gives none (only with `select(require_checksum=False)`)
    checksum: str
    description: str | None = None


def parse(text: str | bytes, source: str) -> dict[str, Any]:
    """The decoded document; `source` names it (a path or URL) in errors."""
    doc = parse_json(text, source, "box metadata")
    if not isinstance(doc, dict):
        raise BadInput(f"{source}: box metadata must be a JSON object, got {type(doc).__name__}")
    return doc


def versions(doc: dict[str, Any]) -> list[str]:
    """The version strings a (parsed, not yet checked) document lists; `select` checks each one it picks."""
    found = doc.get("versions")
    if not isinstance(found, list):
        return []
    return [v["version"] for v in found if isinstance(v, dict) and isinstance(v.get("version"), str)]


def _field(obj: dict[str, Any], field: str, where: str, source: str, kind: type = str) -> Any:
    if field not in obj:
        raise BadInput(f"{source}: field {where}{field} is missing")
    value = obj[field]
    if not isinstance(value, kind) or (kind is str and not value):
        raise BadInput(f"{source}: field {where}{field} must be a non-empty {kind.__name__}, got {value!r}")
    return value


def select(
    doc: dict[str, Any],
    source: str,
    *,
    name: str | None = None,
    version: str | None = None,
    provider: str | None = None,
    architecture: str | None = None,
    require_checksum: bool = True,
) -> BoxSource:
    """The one box in `doc` matching the given fields. A given `name` must equal the document's (Vagrant
    refuses the box otherwise: BoxAddNameMismatch); the others narrow the choice, which must end with
    exactly one box; without `architecture`, the provider's `default_architecture` one among several (as Vagrant
    >= 2.4 falls back to it). The box must carry a checksum unless `require_checksum` is False."""
    doc_name = _field(doc, "name", "", source)
    if name is not None and doc_name != name:
        raise BadInput(f"{source}: field name is {doc_name!r}, expected {name!r} (box name mismatch)")
    versions = _field(doc, "versions", "", source, list)
    candidates: list[tuple[str, dict[str, Any], str]] = []
    for i, ver in enumerate(versions):
        if not isinstance(ver, dict):
            raise BadInput(f"{source}: field versions[{i}] must be an object, got {ver!r}")
        ver_name = _field(ver, "version", f"versions[{i}].", source)
        for j, prov in enumerate(_field(ver, "providers", f"versions[{i}].", source, list)):
            where = f"versions[{i}].providers[{j}]."
            if not isinstance(prov, dict):
                raise BadInput(f"{source}: field {where[:-1]} must be an object, got {prov!r}")
            _field(prov, "name", where, source)
            candidates.append((ver_name, prov, where))

    def matches(ver_name: str, prov: dict[str, Any]) -> bool:
        return (
            (version is None or ver_name == version)
            and (provider is None or prov["name"] == provider)
            and (architecture is None or prov.get("architecture", DEFAULT_ARCH) == architecture)
        )

    chosen = [c for c in candidates if matches(c[0], c[1])]
    defaults = [c for c in chosen if c[1].get("default_architecture") is True]
    if len(chosen) > 1 and architecture is None and len(defaults) == 1:
        chosen = defaults
    wanted = ", ".join(
        f"{k} {v!r}" for k, v in (("version", version), ("provider", provider), ("architecture", architecture)) if v
    )
    available = ", ".join(f"{v} {p['name']}/{p.get('architecture', DEFAULT_ARCH)}" for v, p, _ in candidates) or "none"
    if not chosen:
        raise BadInput(f"{source}: no box with {wanted or 'any version'} (the document has: {available})")
    if len(chosen) > 1:
        raise BadInput(
            f"{source}: {len(chosen)} boxes match (the document has: {available})",
            hint="choose one with --version / --provider / --architecture",
        )
    ver_name, prov, where = chosen[0]
    if require_checksum or prov.get("checksum_type") or prov.get("checksum"):
        for field in ("checksum_type", "checksum"):
            if not prov.get(field):
                raise BadInput(f"{source}: field {where}{field} is missing (a mirror serves only verified boxes)")
        checksum_type, checksum = check_checksum(prov["checksum_type"], prov["checksum"], f"{source}: field {where}")
    else:
        checksum_type, checksum = "", ""
    arch = prov.get("architecture", DEFAULT_ARCH)
    try:
        key = BoxKey(doc_name, ver_name, prov["name"], arch if isinstance(arch, str) else "")
    except BadInput as exc:
        raise BadInput(f"{source}: {exc.message}") from exc
    url = prov.get("url")
    description = doc.get("description")
    return BoxSource(
        key=key,
        url=url if isinstance(url, str) and url else None,
        checksum_type=checksum_type,
        checksum=checksum,
        description=description if isinstance(description, str) else None,
    )
