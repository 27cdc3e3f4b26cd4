"""Content-addressed blob storage: ``<base>/ab/cd/<sha256>.<ext>``, written once, atomically.

The base is a URI read through fsspec (``file://`` by default, ``s3://bucket/prefix`` through s3fs,
which is what Airflow's ObjectStoragePath uses underneath). Identical bytes from different URLs land
in one blob. A blob is never visible half-written: locally it is written as a nameless file in its
directory and linked into place once complete (Linux ``O_TMPFILE``; elsewhere a hidden temporary
name and a rename, both atomic); on object stores it is one PUT, and an object only appears once its
upload is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import re
import uuid
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["ContentAddressedStore"]

COPY_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ContentAddressedStore:
    """Stores bodies under their SHA-256; ``put`` returns the object's URI."""

    def __init__(self, base_uri: str, **storage_options: object) -> None:
        self.base_uri = base_uri
        self.fs, root = fsspec.core.url_to_fs(base_uri, **storage_options)
        self._local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self._local else root.rstrip("/")
        # Nameless files linked into place (Linux): see _link_into_place.
        self._anonymous_files = self._local and bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")
        self._s3 = not self._local and _is_s3(self.fs)

    def __repr__(self) -> str:
        return f"ContentAddressedStore({self.base_uri!r})"

    def path_for(self, sha256: str, extension: str) -> str:
        """Where a blob lives inside the filesystem (no protocol)."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
        if not extension.isalnum():
            raise ValueError(f"not a plain file extension: {extension!r}")
        return f"{self.root}/{sha256[:2]}/{sha256[2:4]}/{sha256}.{extension}"

    def uri_for(self, sha256: str, extension: str) -> str:
        """The URI recorded in results: ``file:///...`` locally, ``s3://bucket/...`` on S3."""
        return self._uri(self.path_for(sha256, extension))

    def _uri(self, path: str) -> str:
        return f"file://{path}" if self._local else self.fs.unstrip_protocol(path)

    def exists(self, sha256: str, extension: str) -> bool:
        path = self.path_for(sha256, extension)
        return os.path.exists(path) if self._local else self._stored(path)

    def put(self, stream: IO[bytes], sha256: str, extension: str) -> str:
        """Store the whole of ``stream`` (read from its start) unless the blob exists; return its URI."""
        path = self.path_for(sha256, extension)
        if self._local:
            self._put_local(stream, path)
        elif not self._stored(path):
            stream.seek(0)
            # The whole body is read before the upload starts, then sent as one PUT (a multipart
            # upload above 100 MiB, aborted on failure): an object store shows an object only once
            # its upload is complete, so a failed read or upload leaves nothing under the key.
            self.fs.pipe_file(path, stream.read())
        return self._uri(path)

    def _stored(self, path: str) -> bool:
        """Ask the object store itself. ``fs.exists`` may answer from s3fs's listing cache, which
        another worker's upload (or a deletion) has made stale."""
        if self._s3:
            # One HEAD: s3fs's info() follows a miss with a LIST (a "folder"?), which costs a
            # request more per new blob, and a LIST is the dearer request on S3.
            bucket, key, _ = self.fs.split_path(path)
            try:
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return False
            return True
        try:
            self.fs.info(path, refresh=True)
        except FileNotFoundError:
            return False
        return True

    def put_bytes(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store ``data``; return ``(sha256, uri)``."""
        sha256 = hashlib.sha256(data).hexdigest()
        return sha256, self.put(io.BytesIO(data), sha256, extension)

    def _put_local(self, stream: IO[bytes], path: str) -> None:
        directory = path.rpartition("/")[0]
        if self._anonymous_files:
            try:
                fd = _open_in_shard(directory, directory, _ANONYMOUS_FILE_FLAGS)
            except OSError as exc:
                if exc.errno not in _NO_ANONYMOUS_FILES:
                    raise
                self._anonymous_files = False  # this filesystem has no O_TMPFILE (NFS, some FUSE)
            else:
                _link_into_place(fd, stream, path)
                return
        _rename_into_place(stream, path, directory)


def _is_s3(fs: object) -> bool:
    try:
        from s3fs import S3FileSystem  # imported only for a store that is not local
    except ImportError:
        return False
    return isinstance(fs, S3FileSystem)


def _open_in_shard(directory: str, path: str, flags: int) -> int:
    """``os.open(path)``, creating the shard directory that holds it on the first miss.

    (Trying first and creating on failure costs less than checking first: in a store in use,
    nearly every directory exists.)
    """
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        try:
            os.mkdir(directory)  # usually only the last level is missing: no stat first, as makedirs does
        except FileExistsError:
            pass  # another writer made it meanwhile
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        return os.open(path, flags, 0o644)


def _link_into_place(fd: int, stream: IO[bytes], path: str) -> None:
    """Fill a nameless file (``fd``, opened with O_TMPFILE), then give it its name in one link().

    Readers never see a partial blob, a crash leaves no temporary file behind, and an existing
    blob is never touched (link() refuses to replace it). No check beforehand either: on a cache
    miss, which is nearly every put, that would be one more system call for nothing.
    """
    try:
        _write_stream(fd, stream)
        with contextlib.suppress(FileExistsError):  # the same bytes were stored before
            # linkat(AT_SYMLINK_FOLLOW) through /proc is how a nameless file gets a name. Python
            # calls linkat only when given a dir fd; an absolute path ignores it, so any will do.
            os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
    finally:
        os.close(fd)


def _rename_into_place(stream: IO[bytes], path: str, directory: str) -> None:
    """Where nameless files are not supported: a hidden temporary name, then rename()."""
    if os.path.exists(path):
        return  # the same bytes were stored before (this run or an earlier one)
    # Hidden, unique, same directory: the rename cannot cross filesystems and readers never
    # see the name until the bytes are all there. Two writers of the same blob both succeed.
    temporary = f"{directory}/.{path.rpartition('/')[2]}.{_WRITER_ID}-{next(_temporary_numbers)}.tmp"
    fd = _open_in_shard(directory, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC)
    try:
        try:
            _write_stream(fd, stream)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)  # Linux only
_ANONYMOUS_FILE_FLAGS = os.O_WRONLY | _O_TMPFILE | _O_CLOEXEC
# What open(O_TMPFILE) raises where the filesystem cannot make nameless files.
_NO_ANONYMOUS_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})
# Temporary names unique across processes and machines sharing a filesystem, without a random
# draw (a system call) per blob.
_WRITER_ID = uuid.uuid4().hex[:12]
_temporary_numbers = itertools.count()


def _write_stream(fd: int, stream: IO[bytes]) -> None:
    if isinstance(stream, io.BytesIO):
        with stream.getbuffer() as view:  # no copy of the body held in memory
            _write_all(fd, view)
    else:
        stream.seek(0)
        while chunk := stream.read(COPY_CHUNK):
            _write_all(fd, chunk)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
