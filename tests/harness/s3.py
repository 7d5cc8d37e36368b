"""moto's standalone server: a real S3 API (HTTP, path-style) on 127.0.0.1, started and stopped by PID. It does not
check credentials, and serves objects to plain GETs, as a public bucket does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import processes
from harness.ports import free_port
from harness.waiting import wait_until


class S3Server:
    def __init__(self, url: str, home: Path):
        self.url = url
        # For boto3 in the test and in `lab`: fixed keys, and nothing read from the user's ~/.aws.
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        """A new bucket whose objects anyone may read, at `<url>/<name>/<key>` (the README's bucket policy)."""
        client = self.client()
        client.create_bucket(Bucket=name)
        # AWS authorizes GET and HEAD of an object as s3:GetObject; moto asks for s3:HeadObject for a HEAD.
        statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:HeadObject"],
            "Resource": f"arn:aws:s3:::{name}/*",
        }
        client.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        return f"{self.url}/{name}"


@contextmanager
def s3_server(home: Path) -> Iterator[S3Server]:
    port = free_port()
    log = (home / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _listening(port, process), f"moto server on 127.0.0.1:{port}", timeout=60)
        yield S3Server(f"http://127.0.0.1:{port}", home)
    finally:
        processes.stop(process)
        log.close()


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"moto server exited with {process.returncode}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
