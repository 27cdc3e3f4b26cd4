"""Content-addressed blob storage: ``<base>/ab/cd/<sha256>.<ext>``, written once, atomically.

The base is a URI read through fsspec (``file://`` by default, ``s3://...`` when s3fs is installed,
which is what Airflow's ObjectStoragePath uses underneath). Identical bytes from different URLs land
in one blob. A blob is never visible half-written: locally it is written under a hidden temporary
name in the same directory and renamed into place (atomic on POSIX); on object stores it is one PUT,
and an object only appears once its upload is complete.
"""

from __future__ import annotations

import contextlib
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
        path = self.path_for(sha256, extension)
        return f"file://{path}" if self._local else self.fs.unstrip_protocol(path)

    def exists(self, sha256: str, extension: str) -> bool:
        path = self.path_for(sha256, extension)
        return os.path.exists(path) if self._local else bool(self.fs.exists(path))

    def put(self, stream: IO[bytes], sha256: str, extension: str) -> str:
        """Store the whole of ``stream`` (read from its start) unless the blob exists; return its URI."""
        path = self.path_for(sha256, extension)
        if self._local:
            self._put_local(stream, path)
        elif not self.fs.exists(path):
            stream.seek(0)
            # One PUT of the complete body: object stores never show a partial object.
            self.fs.pipe_file(path, stream.read())
        return self.uri_for(sha256, extension)

    def put_bytes(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store ``data``; return ``(sha256, uri)``."""
        sha256 = hashlib.sha256(data).hexdigest()
        return sha256, self.put(io.BytesIO(data), sha256, extension)

    def _put_local(self, stream: IO[bytes], path: str) -> None:
        if os.path.exists(path):
            return  # the same bytes were stored before (this run or an earlier one)
        directory, name = os.path.split(path)
        # Hidden, unique, same directory: the rename cannot cross filesystems and readers never
        # see the name until the bytes are all there. Two writers of the same blob both succeed.
        temporary = f"{directory}/.{name}.{_WRITER_ID}-{next(_temporary_numbers)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o644)
        except FileNotFoundError:
            # The shard directory does not exist yet. (Trying first and creating on failure costs
            # less than checking first: in a store in use, nearly every directory exists.)
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, flags, 0o644)
        try:
            try:
                if isinstance(stream, io.BytesIO):
                    with stream.getbuffer() as view:  # no copy of the body held in memory
                        _write_all(fd, view)
                else:
                    stream.seek(0)
                    while chunk := stream.read(COPY_CHUNK):
                        _write_all(fd, chunk)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Temporary names unique across processes and machines sharing a filesystem, without a random
# draw (a system call) per blob.
_WRITER_ID = uuid.uuid4().hex[:12]
_temporary_numbers = itertools.count()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
