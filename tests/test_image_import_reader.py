"""The image importer's archive reading, on small tars made in memory (no registry, no skopeo)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput
from coreos_lab.mirror.images.importer import _ArchiveReader, _compressed_layer_digest


def reader_of(tmp_path: Path, members: dict[str, bytes]) -> _ArchiveReader:
    archive = tmp_path / "archive.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return _ArchiveReader(archive, tarfile.open(archive))


def test_an_error_of_the_callers_own_work_is_not_an_unreadable_member(tmp_path: Path) -> None:
    reader = reader_of(tmp_path, {"layer.tar": b"x" * 100})
    with pytest.raises(OSError, match="No space left") as info, reader.stream(reader.member("layer.tar", "a layer")):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(info.value, BadInput)


def test_a_gzip_layer_inflates_in_bounded_memory(tmp_path: Path) -> None:
    size = 64 << 20
    layer = gzip.compress(b"\0" * size, compresslevel=9)
    reader = reader_of(tmp_path, {"layer.tar": layer})
    diff_id = "sha256:" + hashlib.sha256(b"\0" * size).hexdigest()
    tracemalloc.start()
    try:
        digest = _compressed_layer_digest(reader, reader.member("layer.tar", "a layer"), "+gzip", diff_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert peak < 16 << 20
    with pytest.raises(BadInput, match=r"rootfs\.diff_ids says sha256:0"):
        _compressed_layer_digest(reader, reader.member("layer.tar", "a layer"), "+gzip", "sha256:" + "0" * 64)


def test_a_zstd_layer_is_refused_as_its_diff_id_cannot_be_checked(tmp_path: Path) -> None:
    reader = reader_of(tmp_path, {"layer.tar": b"\x28\xb5\x2f\xfd" + b"\0" * 10})
    with pytest.raises(BadInput, match=r"member layer.tar is a zstd layer.*rootfs.diff_ids"):
        _compressed_layer_digest(reader, reader.member("layer.tar", "a layer"), "+zstd", "sha256:" + "0" * 64)
