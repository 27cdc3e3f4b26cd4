"""Harvest: download URL lists on Airflow/Celery workers and record every outcome in Postgres.

The library the DAGs call. Each part lives in a small module; the names a DAG needs are
re-exported here, and imported only when first used (PEP 562): importing a light module such as
``include.harvest.listroots`` at DAG parse time must not load the download engine, Pillow or the
database drivers.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "AddressGuard": "guard",
    "Blocked": "errors",
    "ConnectionFailed": "errors",
    "ContentAddressedStore": "storage",
    "ContentInfo": "content",
    "DEFAULT_BATCH_SIZE": "planning",
    "DEFAULT_MAX_BATCHES": "planning",
    "DownloadError": "errors",
    "FetchSettings": "settings",
    "HostLimits": "hostlimits",
    "HttpError": "errors",
    "InvalidContent": "errors",
    "InvalidUrl": "urls",
    "LocalHostLimits": "hostlimits",
    "MigrationError": "migrations",
    "PermanentError": "errors",
    "RedisHostLimits": "hostlimits",
    "Rejected": "errors",
    "Result": "models",
    "RetryableError": "errors",
    "RetryableHttpStatus": "errors",
    "RunInfo": "results",
    "RunSummary": "results",
    "SourceError": "sources",
    "SourceFormatError": "sources",
    "SourceNotFound": "sources",
    "SourceRead": "sources",
    "Status": "models",
    "Timeout": "errors",
    "TlsFailed": "errors",
    "TooLarge": "errors",
    "TooManyRedirects": "errors",
    "Unresolvable": "errors",
    "UrlItem": "models",
    "apply_migrations": "migrations",
    "batch_lengths": "planning",
    "describe_batch": "planning",
    "fetch_batch": "fetch",
    "fetch_bytes": "fetch",
    "fetch_each": "fetch",
    "host_limits_for": "hostlimits",
    "inspect_content": "content",
    "list_path_for": "sources",
    "load_previous": "results",
    "normalize_url": "urls",
    "parse_manual": "sources",
    "parse_target": "guard",
    "read_list": "sources",
    "read_list_for_date": "sources",
    "read_remote_list": "sources",
    "read_table": "sources",
    "record_run": "results",
    "sniff": "content",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
