"""Harvest: download URL lists on Airflow/Celery workers and record every outcome in Postgres.

The library the DAGs call. Each part lives in a small module; the names a DAG needs are
re-exported here.
"""

# sources, URL normalisation, batch planning, results database (issue 4)
from include.harvest.migrations import MigrationError, apply_migrations
from include.harvest.planning import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCHES, describe_batch, plan_batches
from include.harvest.results import RunInfo, RunSummary, load_previous, record_run
from include.harvest.sources import (
    SourceError,
    SourceFormatError,
    SourceNotFound,
    SourceRead,
    list_path_for,
    parse_manual,
    read_list,
    read_list_for_date,
    read_remote_list,
    read_table,
)
from include.harvest.urls import InvalidUrl, normalize_url

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_BATCHES",
    "InvalidUrl",
    "MigrationError",
    "RunInfo",
    "RunSummary",
    "SourceError",
    "SourceFormatError",
    "SourceNotFound",
    "SourceRead",
    "apply_migrations",
    "describe_batch",
    "list_path_for",
    "load_previous",
    "normalize_url",
    "parse_manual",
    "plan_batches",
    "read_list",
    "read_list_for_date",
    "read_remote_list",
    "read_table",
    "record_run",
]

# download engine: fetching, address guard, content checks, storage, per-host limits (issue 3)
from include.harvest.content import ContentInfo, inspect_content, sniff  # noqa: E402
from include.harvest.errors import (  # noqa: E402
    Blocked,
    ConnectionFailed,
    DownloadError,
    HttpError,
    InvalidContent,
    PermanentError,
    Rejected,
    RetryableError,
    RetryableHttpStatus,
    Timeout,
    TlsFailed,
    TooLarge,
    TooManyRedirects,
    Unresolvable,
)
from include.harvest.fetch import fetch_batch, fetch_bytes  # noqa: E402
from include.harvest.guard import AddressGuard, parse_target  # noqa: E402
from include.harvest.hostlimits import HostLimits, LocalHostLimits, RedisHostLimits, host_limits_for  # noqa: E402
from include.harvest.models import Result, Status, UrlItem  # noqa: E402
from include.harvest.settings import FetchSettings  # noqa: E402
from include.harvest.storage import ContentAddressedStore  # noqa: E402

__all__ += [
    "AddressGuard",
    "Blocked",
    "ConnectionFailed",
    "ContentAddressedStore",
    "ContentInfo",
    "DownloadError",
    "FetchSettings",
    "HostLimits",
    "HttpError",
    "InvalidContent",
    "LocalHostLimits",
    "PermanentError",
    "RedisHostLimits",
    "Rejected",
    "Result",
    "RetryableError",
    "RetryableHttpStatus",
    "Status",
    "Timeout",
    "TlsFailed",
    "TooLarge",
    "TooManyRedirects",
    "Unresolvable",
    "UrlItem",
    "fetch_batch",
    "fetch_bytes",
    "host_limits_for",
    "inspect_content",
    "parse_target",
    "sniff",
]
