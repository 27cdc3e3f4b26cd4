"""A real S3-protocol endpoint on loopback for tests: moto's server mode, in a thread of this process.

    with MotoServer() as s3:
        s3.create_bucket("harvest-test")
        subprocess.run([...], env={**os.environ, **s3.env()})   # any process, any S3 client
        s3.list_keys("harvest-test", "images/")

Requests go over real HTTP to ``127.0.0.1:<free port>``: s3fs, boto3 and Airflow processes meet
the same signing, error codes and multipart semantics as on a real S3-compatible store. moto keeps
its state per process, so two servers in one process share their buckets: start one per session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import boto3
import requests
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

__all__ = ["ACCESS_KEY", "REGION", "MotoServer", "Request"]

ACCESS_KEY = "testing"  # any key is accepted until reject_credentials() turns moto's IAM checks on
REGION = "us-east-1"


@dataclass(frozen=True)
class Request:
    """One request the server received: ``PUT``, ``/bucket/key`` (no query string), the query string."""

    method: str
    path: str
    query: str


class MotoServer:
    """moto's S3 (and IAM) on ``127.0.0.1`` and a free port, running from construction to :meth:`stop`.

    This is what ``moto.server.ThreadedMotoServer`` runs (moto's WSGI app under werkzeug, threaded),
    with one addition: every request is logged in :attr:`requests`, so a test can count the PUTs
    that reached the server.
    """

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.requests: list[Request] = []
        self._app = DomainDispatcherApplication(create_backend_app)
        # Port 0: the kernel picks a free port while binding, so no other process can take it first.
        self._httpd = make_server(
            "127.0.0.1", 0, self._logging_app, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint_url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=ACCESS_KEY,
        )

    def _logging_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/moto-api/"):
            self.requests.append(
                Request(
                    environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
                )
            )
        return self._app(environ, start_response)

    def env(self) -> dict[str, str]:
        """The AWS_* variables a process (or this one) needs to use the server through any S3 client."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def create_bucket(self, name: str) -> None:
        self._client.create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted (all pages)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self._client.delete_object(Bucket=bucket, Key=key)

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """``head_object``'s answer: ``LastModified``, ``ETag``, ``ContentLength``..."""
        answer: dict[str, Any] = self._client.head_object(Bucket=bucket, Key=key)
        return answer

    def multipart_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted (invisible leftovers)."""
        return [u["Key"] for u in self._client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def count(self, method: str, path_prefix: str = "/") -> int:
        """How many ``method`` requests for paths starting with ``path_prefix`` the server received."""
        return sum(1 for r in list(self.requests) if r.method == method and r.path.startswith(path_prefix))

    def create_access_key(self) -> tuple[str, str]:
        """A real key pair (an IAM user with no permissions): signs correctly, is denied access."""
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=ACCESS_KEY,
        )
        name = f"user-{len(iam.list_users()['Users'])}"
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextmanager
    def reject_credentials(self) -> Iterator[None]:
        """Within: moto checks signatures and IAM permissions as AWS does. Unknown keys get
        ``InvalidAccessKeyId``, a wrong secret ``SignatureDoesNotMatch``, a key without permissions
        ``AccessDenied`` (the default, any key accepted, comes back on exit; the helpers above are
        refused meanwhile)."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def _set_auth(self, free_requests: str) -> None:
        # moto's switch: after this many requests, authenticate every one ("inf": never).
        response = requests.post(f"{self.endpoint_url}/moto-api/reset-auth", data=free_requests, timeout=10)
        response.raise_for_status()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
