"""Content-addressed storage: layout, atomic writes, de-duplication, any fsspec filesystem."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from include.harvest.storage import ContentAddressedStore
from tests.s3 import MotoServer


@pytest.fixture(params=["anonymous file + link", "temporary name + rename"])
def new_store(request: pytest.FixtureRequest) -> Callable[[Path], ContentAddressedStore]:
    """Both ways a local blob is written: O_TMPFILE + link() (Linux), else a hidden name + rename()."""

    def make(root: Path) -> ContentAddressedStore:
        store = ContentAddressedStore(f"file://{root}")
        if request.param.startswith("temporary"):
            store._anonymous_files = False
        else:
            assert store._anonymous_files, "this Linux machine should support O_TMPFILE"
        return store

    return make


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_is_sha256_sharded_with_the_sniffed_extension(
    tmp_path: Path, new_store: Callable[[Path], ContentAddressedStore]
) -> None:
    store = new_store(tmp_path)
    data = b"\x89PNG pretend"
    sha256 = hashlib.sha256(data).hexdigest()
    returned_sha, uri = store.put_bytes(data, "png")
    assert returned_sha == sha256
    assert uri == f"file://{tmp_path}/{sha256[:2]}/{sha256[2:4]}/{sha256}.png"
    assert files_under(tmp_path) == [f"{sha256[:2]}/{sha256[2:4]}/{sha256}.png"]
    assert Path(uri.removeprefix("file://")).read_bytes() == data


def test_a_plain_path_is_a_local_base(tmp_path: Path) -> None:
    _, uri = ContentAddressedStore(str(tmp_path / "blobs")).put_bytes(b"x", "bin")
    assert uri.startswith(f"file://{tmp_path}/blobs/")


def test_an_existing_blob_is_not_written_again(
    tmp_path: Path, new_store: Callable[[Path], ContentAddressedStore]
) -> None:
    store = new_store(tmp_path)
    _, uri = store.put_bytes(b"same bytes", "jpg")
    path = Path(uri.removeprefix("file://"))
    os.utime(path, (1, 1))
    _, again = store.put_bytes(b"same bytes", "jpg")
    assert again == uri and path.stat().st_mtime == 1
    assert store.exists(hashlib.sha256(b"same bytes").hexdigest(), "jpg")


def test_concurrent_writers_of_one_blob_leave_one_whole_file(
    tmp_path: Path, new_store: Callable[[Path], ContentAddressedStore]
) -> None:
    store = new_store(tmp_path)
    data = os.urandom(3 * 1024 * 1024)
    uris: list[str] = []
    threads = [
        threading.Thread(target=lambda: uris.append(store.put_bytes(data, "bin")[1])) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(uris)) == 1
    assert len(files_under(tmp_path)) == 1  # no temporary files left behind
    assert Path(uris[0].removeprefix("file://")).read_bytes() == data


class BreaksHalfway(io.RawIOBase):
    """A body spooled to disk that fails after the first megabyte, like a disk error mid-copy."""

    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.calls += 1
        if self.calls > 1:
            raise OSError("disk went away")
        buffer[: len(buffer)] = b"x" * len(buffer)
        return len(buffer)


def test_a_failed_write_leaves_nothing_visible(
    tmp_path: Path, new_store: Callable[[Path], ContentAddressedStore]
) -> None:
    store = new_store(tmp_path)
    sha256 = "ab" * 32
    with pytest.raises(OSError, match="disk went away"):
        store.put(BreaksHalfway(), sha256, "jpg")  # type: ignore[arg-type]
    assert files_under(tmp_path) == []
    assert not store.exists(sha256, "jpg")


def test_bad_keys_are_refused(tmp_path: Path) -> None:
    store = ContentAddressedStore(f"file://{tmp_path}")
    with pytest.raises(ValueError, match="SHA-256"):
        store.path_for("../../etc/passwd", "jpg")
    with pytest.raises(ValueError, match="extension"):
        store.path_for("ab" * 32, "jpg/../x")


def test_any_fsspec_filesystem_works() -> None:
    # memory:// stands in for s3:// (same code path: one PUT per blob, URIs with the protocol).
    store = ContentAddressedStore("memory://harvest-test-bucket/images")
    sha256, uri = store.put_bytes(b"remote bytes", "webp")
    assert uri.startswith("memory://")  # memory:// keeps a leading "/" in its paths; s3:// does not
    assert uri.endswith(f"harvest-test-bucket/images/{sha256[:2]}/{sha256[2:4]}/{sha256}.webp")
    fs, path = fsspec.core.url_to_fs(uri)
    assert fs.cat_file(path) == b"remote bytes"
    assert store.exists(sha256, "webp")
    fs.rm("/harvest-test-bucket", recursive=True)


# -- on S3, against a real S3-protocol server (moto on loopback) -----------------------------------


def blob_key(sha256: str, extension: str, prefix: str = "images") -> str:
    return f"{prefix}/{sha256[:2]}/{sha256[2:4]}/{sha256}.{extension}"


def test_on_s3_a_blob_is_one_object_under_its_sha256(s3_server: MotoServer, s3_bucket: str):
    store = ContentAddressedStore(f"s3://{s3_bucket}/images/")
    data = b"\x89PNG on s3"
    sha256, uri = store.put_bytes(data, "png")
    assert uri == f"s3://{s3_bucket}/{blob_key(sha256, 'png')}"
    assert s3_server.list_keys(s3_bucket) == [blob_key(sha256, "png")]
    assert s3_server.get(s3_bucket, blob_key(sha256, "png")) == data
    assert store.exists(sha256, "png") and not store.exists("ab" * 32, "png")


def test_on_s3_an_existing_blob_is_not_uploaded_again(s3_server: MotoServer, s3_bucket: str):
    store = ContentAddressedStore(f"s3://{s3_bucket}/images")
    sha256, _ = store.put_bytes(b"same bytes", "jpg")
    etag = s3_server.head(s3_bucket, blob_key(sha256, "jpg"))["ETag"]
    ContentAddressedStore(f"s3://{s3_bucket}/images").put_bytes(b"same bytes", "jpg")  # another worker
    store.put_bytes(b"same bytes", "jpg")
    assert s3_server.count("PUT", f"/{s3_bucket}/{blob_key(sha256, 'jpg')}") == 1
    assert s3_server.head(s3_bucket, blob_key(sha256, "jpg"))["ETag"] == etag


def test_on_s3_the_store_asks_the_server_not_a_stale_listing(s3_server: MotoServer, s3_bucket: str):
    # s3fs answers exists() from a cached listing of the folder when it has one. Here the listing is
    # taken, then another worker stores one blob of that folder and a cleanup deletes another.
    store = ContentAddressedStore(f"s3://{s3_bucket}/images")
    kept, other_worker, deleted = "abcd" + "1" * 60, "abcd" + "2" * 60, "abcd" + "3" * 60
    store.put(io.BytesIO(b"kept"), kept, "png")
    store.put(io.BytesIO(b"deleted"), deleted, "png")
    store.fs.ls(f"{s3_bucket}/images/ab/cd")  # fills the listing cache
    s3_server.put(s3_bucket, blob_key(other_worker, "png"), b"other worker")
    s3_server.delete(s3_bucket, blob_key(deleted, "png"))

    assert store.exists(other_worker, "png") and not store.exists(deleted, "png")
    store.put(io.BytesIO(b"other worker"), other_worker, "png")
    store.put(io.BytesIO(b"deleted"), deleted, "png")
    assert s3_server.count("PUT", f"/{s3_bucket}/{blob_key(other_worker, 'png')}") == 1  # not again
    assert s3_server.get(s3_bucket, blob_key(deleted, "png")) == b"deleted"  # stored again, not lost


def test_on_s3_a_failed_read_of_the_body_leaves_no_object(s3_server: MotoServer, s3_bucket: str):
    store = ContentAddressedStore(f"s3://{s3_bucket}/images")
    with pytest.raises(OSError, match="disk went away"):
        store.put(BreaksHalfway(), "ab" * 32, "jpg")  # type: ignore[arg-type]
    assert s3_server.list_keys(s3_bucket) == []
    assert s3_server.multipart_uploads(s3_bucket) == []
    assert not store.exists("ab" * 32, "jpg")
