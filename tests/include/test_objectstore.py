"""The storage preflight, against a real S3-protocol server (moto on loopback) and real folders."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from include.harvest.errors import StorageUnavailable
from include.harvest.objectstore import MARKER_NAME, check_access
from tests.s3 import MotoServer

CREDENTIALS_FIX = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO/Ceph/R2)"


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
def test_a_missing_bucket_is_named_with_the_setting_and_the_fix(s3_server: MotoServer, write: bool):
    uri = "s3://no-such-harvest-bucket/images"
    with pytest.raises(StorageUnavailable) as caught:
        check_access(uri, setting="HARVEST_STORAGE_URI", write=write)
    assert str(caught.value) == (
        f"HARVEST_STORAGE_URI={uri}: bucket 'no-such-harvest-bucket' does not exist: "
        "create it or point HARVEST_STORAGE_URI at an existing bucket"
    )
    assert (caught.value.uri, caught.value.setting) == (uri, "HARVEST_STORAGE_URI")
    assert isinstance(caught.value.__cause__, FileNotFoundError)  # chained: the original stays visible
    assert not caught.value.retryable  # waiting will not create the bucket


def test_a_usable_bucket_passes_and_the_write_check_leaves_nothing(s3_server: MotoServer, s3_bucket: str):
    check_access(f"s3://{s3_bucket}/work", setting="HARVEST_WORK_URI", write=True)
    assert s3_server.count("PUT", f"/{s3_bucket}/work/{MARKER_NAME}") == 1  # it did write
    assert s3_server.list_keys(s3_bucket) == []


def test_a_read_check_of_an_empty_prefix_passes_without_writing(s3_server: MotoServer, s3_bucket: str):
    check_access(f"s3://{s3_bucket}/lists", setting="HARVEST_URL_LIST_URI", write=False)
    check_access(f"s3://{s3_bucket}", setting="HARVEST_URL_LIST_URI", write=False)
    assert s3_server.count("PUT", f"/{s3_bucket}/") == 0  # no object written


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
def test_an_unknown_access_key_is_reported_as_invalid_credentials(
    s3_server: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, write: bool
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    uri = f"s3://{s3_bucket}/images"
    with s3_server.reject_credentials(), pytest.raises(StorageUnavailable) as caught:
        check_access(uri, setting="HARVEST_STORAGE_URI", write=write)
    assert str(caught.value) == (
        f"HARVEST_STORAGE_URI={uri}: invalid credentials (InvalidAccessKeyId): {CREDENTIALS_FIX}"
    )


def test_a_wrong_secret_is_reported_as_invalid_credentials(
    s3_server: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    key_id, _secret = s3_server.create_access_key()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with s3_server.reject_credentials(), pytest.raises(StorageUnavailable) as caught:
        check_access(f"s3://{s3_bucket}/work", setting="HARVEST_WORK_URI", write=True)
    assert f"invalid credentials (SignatureDoesNotMatch): {CREDENTIALS_FIX}" in str(caught.value)


def test_a_key_without_permission_is_reported_as_access_denied_with_what_it_needs(
    s3_server: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    key_id, secret = s3_server.create_access_key()  # a user with no policy attached
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with s3_server.reject_credentials(), pytest.raises(StorageUnavailable) as caught:
        check_access(f"s3://{s3_bucket}/work", setting="HARVEST_WORK_URI", write=True)
    message = str(caught.value)
    assert message.startswith(f"HARVEST_WORK_URI=s3://{s3_bucket}/work: access denied (AccessDenied): ")
    assert f"s3:PutObject, s3:DeleteObject) in bucket '{s3_bucket}'" in message


def test_missing_credentials_say_which_variables_to_set(
    s3_server: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))  # not the machine's ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageUnavailable, match="no AWS credentials found: set AWS_ACCESS_KEY_ID and "):
        check_access(f"s3://{s3_bucket}/work", setting="HARVEST_WORK_URI", write=True)


def test_an_unreachable_endpoint_is_named(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as sock:  # a loopback port nobody listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    with pytest.raises(StorageUnavailable) as caught:
        check_access("s3://harvest-lists/daily", setting="HARVEST_URL_LIST_URI", write=False)
    assert str(caught.value) == (
        f"HARVEST_URL_LIST_URI=s3://harvest-lists/daily: endpoint unreachable: {closed}: check "
        "AWS_ENDPOINT_URL (MinIO/Ceph/R2) and that the server is up and reachable from this machine"
    )
    assert caught.value.retryable  # a server that is down may be up at the task's next try


def test_a_missing_local_folder_is_created_for_writing_and_left_alone_for_reading(tmp_path: Path):
    storage = tmp_path / "deep" / "storage"
    check_access(storage.as_uri(), setting="HARVEST_STORAGE_URI", write=True)
    assert storage.is_dir() and list(storage.iterdir()) == []  # created, marker gone

    lists = tmp_path / "lists"
    check_access(lists.as_uri(), setting="HARVEST_URL_LIST_URI", write=False)  # no list is an outcome
    assert not lists.exists()


def test_an_unwritable_local_folder_is_refused_naming_it():
    # sysfs refuses new files even to root (tests run as root on CI, where chmod would not stop them)
    folder = Path("/sys/kernel")
    if not folder.is_dir():
        pytest.skip("needs Linux's /sys")
    with pytest.raises(StorageUnavailable) as caught:
        check_access(folder.as_uri(), setting="HARVEST_WORK_URI", write=True)
    message = str(caught.value)
    assert message.startswith("HARVEST_WORK_URI=file:///sys/kernel: permission denied to create files in ")
    assert message.endswith(
        "fix the folder's permissions or point HARVEST_WORK_URI at a folder this user can write"
    )
    assert isinstance(caught.value.__cause__, PermissionError)


def test_a_file_where_the_folder_should_be_is_refused(tmp_path: Path):
    (tmp_path / "storage").write_text("not a folder")
    with pytest.raises(StorageUnavailable, match=r"cannot use the folder .*/storage \(File exists\)"):
        check_access((tmp_path / "storage").as_uri(), setting="HARVEST_STORAGE_URI", write=True)


def test_an_unknown_protocol_names_the_setting():
    with pytest.raises(StorageUnavailable, match=r"^HARVEST_STORAGE_URI=nosuch://x/y: .*nosuch"):
        check_access("nosuch://x/y", setting="HARVEST_STORAGE_URI", write=True)
