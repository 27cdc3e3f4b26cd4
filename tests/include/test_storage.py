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
