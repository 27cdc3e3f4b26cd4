"""Can this run use its URIs? A preflight that stops a run early with an error saying what to fix.

Storage (``HARVEST_STORAGE_URI``), working files (``HARVEST_WORK_URI``) and URL lists
(``HARVEST_URL_LIST_URI``) are fsspec URIs: ``file://`` or ``s3://bucket/prefix``. Credentials and
the endpoint of an S3-protocol store come only from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for
MinIO/Ceph/R2), which s3fs reads itself (checked with the pinned s3fs/aiobotocore against moto).

Without a preflight a missing bucket would surface late and in disguise: s3fs reports a missing
bucket as a missing file, so the day's list would read as "no list today" and a batch would fail
with a bare ``FileNotFoundError`` after the downloads. :func:`check_access` turns botocore's error
codes into :class:`~include.harvest.errors.StorageUnavailable` naming the URI, the setting and the fix.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from include.harvest.errors import StorageUnavailable

__all__ = ["MARKER_NAME", "check_access"]

# Written and deleted again by a write check; a fixed name, so a check cut short leaves at most one.
MARKER_NAME = ".harvest-access-check"

_S3_PROTOCOLS = frozenset({"s3", "s3a"})
# A preflight answers within seconds: an unreachable endpoint is reported after one retry instead of
# s3fs's 5 x botocore's 5 attempts (~8 s on loopback, longer on a real network). A task retry
# covers a blip.
_S3_PREFLIGHT_OPTIONS: dict[str, Any] = {
    "skip_instance_cache": True,  # a fresh client: credentials as the environment has them now
    "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 5},
}

_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "InvalidToken", "ExpiredToken"}
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403"})
_REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "301"})
_CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO/Ceph/R2)"


def check_access(uri: str, *, setting: str, write: bool) -> None:
    """Raise :class:`StorageUnavailable` unless ``uri`` can be listed (and, with ``write``, written).

    A write check creates a missing local folder (as the pipeline would) and writes and deletes a
    tiny marker object; a read check only lists. A local folder that does not exist passes a read
    check (a missing list is a recorded outcome, not an error); a missing bucket never passes.
    ``setting`` is the name a person changes, for example ``HARVEST_STORAGE_URI``.
    """
    protocol = fsspec.core.split_protocol(uri)[0] or "file"
    options = _S3_PREFLIGHT_OPTIONS if protocol in _S3_PROTOCOLS else {}
    try:
        fs, root = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package not installed
        raise StorageUnavailable(f"{setting}={uri}: {exc}", uri=uri, setting=setting) from exc
    if protocol in _S3_PROTOCOLS:
        fs.retries = 1  # s3fs's own retry loop; a class attribute, not an option
    if isinstance(fs, LocalFileSystem):
        _check_folder(os.path.abspath(root), uri=uri, setting=setting, write=write)
    else:
        _check_objects(fs, root.rstrip("/"), uri=uri, setting=setting, write=write)


def _check_folder(folder: str, *, uri: str, setting: str, write: bool) -> None:
    try:
        if write:
            os.makedirs(folder, exist_ok=True)
            marker = os.path.join(folder, MARKER_NAME)
            with open(marker, "wb"):
                pass
            with contextlib.suppress(FileNotFoundError):  # a concurrent run's check removed it
                os.unlink(marker)
        elif os.path.isdir(folder):
            os.listdir(folder)
    except PermissionError as exc:
        what = "create files in" if write else "read"
        raise StorageUnavailable(
            f"{setting}={uri}: permission denied to {what} the folder {folder} (as user {_user()}): "
            f"fix the folder's permissions or point {setting} at a folder this user can "
            f"{'write' if write else 'read'}",
            uri=uri,
            setting=setting,
        ) from exc
    except OSError as exc:  # read-only filesystem, a file where the folder should be, disk full...
        raise StorageUnavailable(
            f"{setting}={uri}: cannot use the folder {folder} ({exc.strerror or exc}): "
            f"point {setting} at a {'writable ' if write else ''}folder",
            uri=uri,
            setting=setting,
        ) from exc


def _check_objects(fs: Any, root: str, *, uri: str, setting: str, write: bool) -> None:
    try:
        if write:
            marker = f"{root}/{MARKER_NAME}"
            fs.pipe_file(marker, b"")
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(marker)
        else:
            try:
                fs.ls(root, detail=False, refresh=True)
            except FileNotFoundError as exc:
                if _error_code(exc) is not None:
                    raise  # the store said why (NoSuchBucket...): diagnosed below
                # else: an empty prefix. Object stores have no folders: nothing listed is fine.
    except Exception as exc:
        from botocore import exceptions as boto

        raise StorageUnavailable(
            f"{setting}={uri}: {_diagnose(exc, fs, root, setting=setting, write=write)}",
            uri=uri,
            setting=setting,
            retryable=_error_code(exc) is None
            and _find(exc, boto.ConnectionError, ConnectionError, TimeoutError),
        ) from exc


def _diagnose(exc: BaseException, fs: Any, root: str, *, setting: str, write: bool) -> str:
    """What went wrong and what to fix, from the S3 error code or the connection error."""
    from botocore import exceptions as boto

    bucket = root.split("/", 1)[0]
    code = _error_code(exc)
    if code in ("NoSuchBucket", "404"):
        return f"bucket '{bucket}' does not exist: create it or point {setting} at an existing bucket"
    if code == "InvalidBucketName" or _find(exc, boto.ParamValidationError):
        return f"'{bucket}' is not a valid bucket name: point {setting} at s3://<existing bucket>/<prefix>"
    if code in _CREDENTIAL_CODES:
        return f"invalid credentials ({code}): {_CREDENTIALS_HINT}"
    if code in _DENIED_CODES:
        needs = (
            "list, write and delete objects (s3:ListBucket, s3:PutObject, s3:DeleteObject)"
            if write
            else "list and read objects (s3:ListBucket, s3:GetObject)"
        )
        return f"access denied ({code}): give these credentials permission to {needs} in bucket '{bucket}', or {_CREDENTIALS_HINT}"
    if code in _REGION_CODES:
        return (
            f"bucket '{bucket}' is in another region ({code}): set AWS_DEFAULT_REGION to the bucket's region"
        )
    if _find(exc, boto.NoCredentialsError, boto.PartialCredentialsError):
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO/Ceph/R2)"
    if _find(exc, boto.ConnectionError, ConnectionError, TimeoutError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS's own endpoint (AWS_ENDPOINT_URL is not set)"
        return (
            f"endpoint unreachable: {endpoint}: check AWS_ENDPOINT_URL (MinIO/Ceph/R2) and that the "
            "server is up and reachable from this machine"
        )
    verb = "write to" if write else "list"
    return f"cannot {verb} it ({code or type(exc).__name__}: {exc})"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (s3fs re-raises botocore's as built-in ones)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``AccessDenied``...) of a botocore ClientError in the chain."""
    for error in _chain(exc):
        response = getattr(error, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return str(response["Error"].get("Code"))
    return None


def _find(exc: BaseException, *types: type[BaseException]) -> bool:
    return any(isinstance(error, types) for error in _chain(exc))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers run with an arbitrary uid)
        return f"uid {os.getuid()}"
