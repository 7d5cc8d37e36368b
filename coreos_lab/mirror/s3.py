"""An S3 prefix as a publish destination (`s3://bucket/prefix`): AWS, or any S3 API (MinIO, Ceph RGW, R2, …) at an
`--endpoint-url`. boto3 is the optional extra `s3`; credentials and region come from boto3's usual sources
(environment, ~/.aws, instance roles).

Uploads go through boto3's managed transfer: multipart above 8 MiB (boto3's default threshold), parts sent in
parallel, each with a CRC32 the server checks on arrival (docs/field-notes.md §10). The box's bytes are hashed as
boto3 reads them, once, and must match the catalog's sha256; the object carries that sha256 as its metadata. After
the upload the object is asked for (HEAD): its size and that sha256 must be the catalog's before anything pointing
at it is written. An object appears only once its upload completes, so a reader never sees half a box.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coreos_lab.errors import BadInput, LabError, ToolMissing

if TYPE_CHECKING:
    from coreos_lab.mirror.publish import PublishedFile
    from coreos_lab.progress import Reporter

SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the catalog's checksum of the box


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # '' or ending in '/'

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise BadInput(f"invalid publish destination {url!r}: give a directory or s3://bucket[/prefix]")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def is_s3_url(destination: str) -> bool:
    return destination.startswith("s3://")


class S3Destination:
    holds_file_beside_directory = True  # keys are names, not directories: `<name>` and `<name>/…` both exist

    def __init__(self, location: S3Location, *, endpoint_url: str | None = None):
        if importlib.util.find_spec("boto3") is None:  # imported only where an upload needs it
            raise ToolMissing(
                "publishing to S3 needs boto3", hint="pip install 'coreos-lab[s3]' (or pip install boto3)"
            )
        import botocore.exceptions
        import botocore.session

        self.location = location
        self.label = str(location)
        self.errors: tuple[type[Exception], ...] = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        # botocore's client (boto3's is the same one, with methods added): a republish with nothing to upload
        # then never imports boto3 and s3transfer, a fifth of its time.
        self.client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint_url)

    def _key(self, path: str) -> str:
        return self.location.prefix + path

    def _failed(self, action: str, path: str, exc: Exception) -> LabError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        where = f"s3://{self.location.bucket}/{self._key(path)}"
        if code == "NoSuchBucket":
            return BadInput(f"bucket {self.location.bucket!r} does not exist ({self.label})")
        hint = None
        if type(exc).__name__ == "NoCredentialsError":
            hint = "give boto3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws)"
        return LabError(f"{action} {where}: {exc}", hint=hint)

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """One listing of the prefix (1000 keys a request) instead of a HEAD per file."""
        wanted = set(paths)
        found: dict[str, int] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    path = item["Key"][len(self.location.prefix) :]
                    if path in wanted:
                        found[path] = int(item["Size"])
        except self.errors as exc:
            raise self._failed("listing", "", exc) from exc
        return found

    def put_file(self, file: PublishedFile, reporter: Reporter) -> bool:
        assert file.source is not None
        key = self._key(file.path)
        extra = {
            "ContentType": file.content_type,
            "Metadata": {SHA256_METADATA: file.sha256},
            "ChecksumAlgorithm": "CRC32",
        }
        try:
            with file.source.open("rb") as raw, reporter.transfer(f"uploading {file.path}", file.size) as advance:
                from boto3.s3.inject import upload_fileobj  # the client.upload_fileobj of boto3's clients

                reader = HashingReader(raw)
                upload_fileobj(self.client, reader, self.location.bucket, key, ExtraArgs=extra, Callback=advance)
                sent = reader.hexdigest()
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except self.errors as exc:
            raise self._failed("uploading to", file.path, exc) from exc
        problems = []
        if sent != file.sha256:
            problems.append(f"the bytes read from {file.source} have sha256 {sent}, its record says {file.sha256}")
        if head["ContentLength"] != file.size:
            problems.append(f"the object has {head['ContentLength']} bytes, the catalog says {file.size}")
        if head.get("Metadata", {}).get(SHA256_METADATA) != file.sha256:
            problems.append("the object does not carry the catalog's sha256 (another writer?)")
        if problems:
            self.delete(file.path)  # nothing may point at it; the next publish uploads it again
            hint = "run `lab mirror verify`" if sent != file.sha256 else None
            raise LabError(f"upload of {file.path} to {self.label} failed its check: " + "; ".join(problems), hint=hint)
        return False  # uploaded, never linked

    def put_document(self, file: PublishedFile) -> None:
        assert file.data is not None
        try:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self._key(file.path),
                Body=file.data,
                ContentType=file.content_type,
                CacheControl="no-cache",  # metadata changes as boxes are published
            )
        except self.errors as exc:
            raise self._failed("writing", file.path, exc) from exc

    def read(self, path: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self._key(path))
            return bytes(answer["Body"].read())
        except self.errors as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._failed("reading", path, exc) from exc

    def lock(self, on_wait: Callable[[], None]) -> AbstractContextManager[object]:
        """None: S3 has no lock. Objects appear whole, so two publishes at once leave whole boxes; the record is
        the last one's."""
        return nullcontext()

    def delete(self, path: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(path))
        except self.errors as exc:
            raise self._failed("deleting", path, exc) from exc


class HashingReader(io.RawIOBase):
    """A file as boto3 reads it, every byte hashed once, in order: boto3 may read a small body twice (a checksum,
    then the request) and seek back in between; bytes read again are not hashed again."""

    def __init__(self, raw: io.BufferedReader):
        super().__init__()
        self.raw = raw
        self.digest = hashlib.sha256()
        self.hashed = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        start = self.raw.tell()
        data = self.raw.read(-1 if size is None else size)
        if start <= self.hashed < start + len(data):
            self.digest.update(memoryview(data)[self.hashed - start :])
            self.hashed = start + len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        """The sha256 of the whole file (any part boto3 did not read, e.g. after an error, is read here)."""
        self.raw.seek(self.hashed)
        while chunk := self.raw.read(1024 * 1024):
            self.digest.update(chunk)
            self.hashed += len(chunk)
        return self.digest.hexdigest()
