"""Fixtures shared by every test folder: a real S3-protocol server on loopback (:mod:`tests.s3`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.s3 import MotoServer

# Variables that would take the test process's S3 clients somewhere else than the test server:
# a profile (botocore then ignores the keys in the environment), a session token, a config file.
_AWS_VARIABLES_TO_CLEAR = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def clear_s3fs_instances() -> None:
    """s3fs caches one filesystem per set of options: drop them, so the next one reads the environment."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto's S3 on 127.0.0.1, for the whole session, with this process's AWS_* variables pointing
    at it (restored at the end). Any s3:// URI the code under test opens reaches this server."""
    with pytest.MonkeyPatch.context() as env, MotoServer() as server:
        for name in _AWS_VARIABLES_TO_CLEAR:
            env.delenv(name, raising=False)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for credentials
        for name, value in server.env().items():
            env.setenv(name, value)
        clear_s3fs_instances()
        yield server
        clear_s3fs_instances()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A new, empty bucket for one test (moto keeps buckets for the whole session)."""
    name = f"harvest-test-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name
