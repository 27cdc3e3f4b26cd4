"""Where a run's URLs come from, read into one shape: :class:`SourceRead`.

Sources:

- a list file for the run's date under a base URI (:func:`read_list_for_date`), or an explicit list
  file (:func:`read_list`): ``.txt`` or ``.csv``, optionally gzipped, on a local path or any fsspec
  URI (``file://``, ``s3://``, ``memory://``);
- a list served over http(s) (:func:`read_remote_list`), fetched by the caller's guarded client;
- the ``harvest.url_sources`` table (:func:`read_table`);
- the ``urls`` Param of a manual run (:func:`parse_manual`).

An explicit list file must lie under an allowed root (:mod:`include.harvest.listroots`): the caller checks
it with :func:`check_source_allowed` before reading it.

Every URL is normalised (:func:`include.harvest.urls.normalize_url`) and de-duplicated, keeping its
first occurrence. A line that is not a usable URL never raises: it becomes a ``rejected``
:class:`~include.harvest.models.Result` with the line number and the reason.

A read holds none of the list: what it finds goes to a :class:`Sink` as it is read (lists by
default; ``read_sources`` passes its work files' writers), and the URLs met so far, needed to drop
duplicates, are kept in a private SQLite database, which keeps a few MiB in memory and the rest in a
temporary file. A list of millions of URLs is read in the memory of a short one.

Errors::

    SourceError            the source cannot be read at all
    ├── SourceNotFound     no list where one was expected (the message names every path tried)
    ├── SourceFormatError  the list exists but its shape is wrong (e.g. a CSV without a url column)
    └── SourceNotAllowed   the list is outside the allowed roots (HARVEST_LIST_ROOTS)

Formats:

- ``.txt``: one URL a line; blank lines and lines starting with ``#`` are ignored, and so is
  anything after whitespace followed by ``#`` (a URL cannot contain whitespace, so this is never
  part of a URL).
- ``.csv``: a header row naming the columns, one of them ``url`` (any case); the other columns are
  kept per URL as ``meta``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Any, Protocol, TypeVar

from include.harvest.listroots import LIST_ROOTS_SETTING, normalise_root
from include.harvest.models import Result, Status, UrlItem
from include.harvest.urls import MAX_URL_LENGTH, InvalidUrl, normalize_url

__all__ = [
    "LIST_SUFFIXES",
    "SourceError",
    "SourceFormatError",
    "SourceNotAllowed",
    "SourceNotFound",
    "SourceRead",
    "Sink",
    "check_source_allowed",
    "list_path_for",
    "parse_manual",
    "read_list",
    "read_list_for_date",
    "read_remote_list",
    "read_table",
]

log = logging.getLogger(__name__)

# Looked for in this order; the first that exists is read.
LIST_SUFFIXES = (".txt", ".txt.gz", ".csv", ".csv.gz")

_GZIP_MAGIC = b"\x1f\x8b"
_INLINE_COMMENT = re.compile(r"\s#")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SourceError(Exception):
    """A URL source that cannot be read at all."""


class SourceNotFound(SourceError, FileNotFoundError):
    """No list where one was expected; ``candidates`` holds every path looked at."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


class SourceFormatError(SourceError, ValueError):
    """The list exists but cannot be parsed (e.g. a CSV without a ``url`` column)."""


class SourceNotAllowed(SourceError, PermissionError):
    """The list is not under an allowed root (``HARVEST_URL_LIST_URI``, ``HARVEST_LIST_ROOTS``)."""


T_contra = TypeVar("T_contra", contravariant=True)


class Appendable(Protocol[T_contra]):
    """Where a read puts one kind of record: a list, or a work file's writer."""

    def append(self, value: T_contra, /) -> None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Sink:
    """Where a read puts the URLs it keeps and the lines it rejects, as it reads them."""

    items: Appendable[UrlItem]
    rejected: Appendable[Result]


@dataclass(slots=True)
class SourceRead:
    """The URLs of one source, ready to plan.

    ``items`` are normalised and unique (first occurrence kept, with its line number);
    ``rejected`` holds one ``rejected`` result per distinct unusable line; ``duplicates`` counts the
    lines dropped because an earlier line gave the same URL (or the same rejected text). Both are
    lists unless the read was given a :class:`Sink`, whose appendables they then are.
    """

    origin: str
    items: Appendable[UrlItem] = field(default_factory=list)
    rejected: Appendable[Result] = field(default_factory=list)
    duplicates: int = 0

    @property
    def lines_read(self) -> int:
        """URL lines seen (comments and blank lines excluded)."""
        return len(self.items) + len(self.rejected) + self.duplicates

    def summary(self) -> str:
        """One log line: ``file:///…/2026-01-05.txt: 980 urls, 12 rejected, 8 duplicates``."""
        return (
            f"{self.origin}: {len(self.items)} urls, {len(self.rejected)} rejected, "
            f"{self.duplicates} duplicates"
        )


class _Seen:
    """The keys a read has met (URLs, rejected texts), in a private temporary SQLite database.

    SQLite keeps its page cache (2 MiB by default) in memory and the rest in a temporary file, so
    de-duplicating a list costs the same memory whatever its length; a Python set of 1,000,000 URLs
    would hold over 100 MiB. Measured: 0.16 s per 100,000 URLs.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": private, on disk only once it outgrows the cache
        self._db.execute("CREATE TABLE seen (key BLOB PRIMARY KEY) WITHOUT ROWID")

    def add(self, key: str) -> bool:
        """Remember ``key``; False if it was met before."""
        # surrogatepass: an undecodable byte of the list (a lone surrogate) is still a distinct key
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO seen VALUES (?)", (key.encode("utf-8", "surrogatepass"),)
        )
        return inserted.rowcount == 1

    def close(self) -> None:
        self._db.close()


class _Collector:
    """Builds a SourceRead line by line: normalise, de-duplicate, reject with a reason."""

    def __init__(self, origin: str, line_word: str = "line", sink: Sink | None = None) -> None:
        self.read = (
            SourceRead(origin=origin)
            if sink is None
            else SourceRead(origin=origin, items=sink.items, rejected=sink.rejected)
        )
        self._seen = _Seen()
        self._line_word = line_word

    def add(self, raw: str, line: int, meta: dict[str, Any] | None = None) -> None:
        try:
            url = normalize_url(raw)
        except InvalidUrl as exc:
            self.reject(raw, line, exc.reason, meta)
            return
        if not self._seen.add(url):
            self.read.duplicates += 1
            return
        self.read.items.append(UrlItem(url=url, line=line, meta=meta or None))

    def reject(self, raw: str, line: int, reason: str, meta: dict[str, Any] | None = None) -> None:
        key = _rejected_key(raw, line)
        if not self._seen.add(key):  # the same bad text twice is one row in harvest.downloads
            self.read.duplicates += 1
            return
        self.read.rejected.append(
            Result(
                url=key,
                status=Status.REJECTED,
                error=f"{self._line_word} {line}: {reason}",
                line=line,
                meta=meta or None,
            )
        )

    def done(self) -> SourceRead:
        self._seen.close()
        return self.read


def _rejected_key(raw: str, line: int) -> str:
    """What a rejected line is recorded under: its text, made storable.

    Postgres text cannot hold NUL or undecodable bytes, and the (run_key, url) index cannot hold
    very long values, so those are escaped or cut (a cut text names its line to stay unique).
    """
    text = raw.strip()
    if not text:
        return f"(empty url, line {line})"
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > MAX_URL_LENGTH or len(text.encode("utf-8")) > MAX_URL_LENGTH:
        head = text.encode("utf-8")[: MAX_URL_LENGTH - 40].decode("utf-8", "ignore")
        text = f"{head}... (cut, line {line})"
    return text


# --- allowed roots -----------------------------------------------------------------------------


def check_source_allowed(source: str, roots: Sequence[str]) -> None:
    """Raise :class:`SourceNotAllowed` unless the list file ``source`` lies under one of ``roots``.

    ``roots`` are URIs (:func:`include.harvest.listroots.normalise_root`). A ``..`` segment or fsspec
    chaining (``::``) is refused outright. A ``file://`` source is resolved (``os.path.realpath``)
    and must stay under its resolved root, so a symlink cannot lead out of it; any other scheme
    (``s3://``, ``memory://``) must start with the root's prefix followed by ``/``.
    """
    allowed = [normalise_root(root) for root in roots]
    scheme, sep, rest = source.partition("://")
    scheme = scheme.lower()
    if sep and "::" not in source and ".." not in rest.split("/"):
        for root in allowed:
            root_scheme, _, root_rest = root.partition("://")
            if scheme != root_scheme:
                continue
            if scheme == "file":
                if not rest.startswith("/"):
                    continue
                real, real_root = os.path.realpath(rest), os.path.realpath(root_rest)
                if real != real_root and os.path.commonpath([real, real_root]) == real_root:
                    return
            elif rest.startswith(f"{root_rest}/") and len(rest) > len(root_rest) + 1:
                return
    raise SourceNotAllowed(
        f"source {source!r} is not a list under an allowed folder ({', '.join(allowed)}; "
        "'..' and symlinks may not lead out of them). Put the list there, or have the operator add "
        f"its folder to {LIST_ROOTS_SETTING} (comma-separated URIs, e.g. file:///srv/lists,s3://bucket/lists)"
    )


# --- files -------------------------------------------------------------------------------------


def list_path_for(base_uri: str, day: date) -> list[str]:
    """The URIs a list for ``day`` may have under ``base_uri``, in the order they are tried."""
    return [_join(base_uri, f"{day.isoformat()}{suffix}") for suffix in LIST_SUFFIXES]


def read_list_for_date(base_uri: str, day: date, *, sink: Sink | None = None) -> SourceRead:
    """Read the list for ``day`` under ``base_uri`` (``YYYY-MM-DD.txt``, ``.txt.gz``, ``.csv``, ``.csv.gz``).

    Raises :class:`SourceNotFound` naming every path looked for when none exists. If several
    exist, the first in that order is read and the others are named in a warning.
    """
    import fsspec

    candidates = list_path_for(base_uri, day)
    existing: list[str] = []
    for uri in candidates:
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.isfile(path):
            existing.append(uri)
    if not existing:
        fs, base_path = fsspec.core.url_to_fs(base_uri)
        hint = "" if fs.isdir(base_path) else f" (the folder {base_uri} itself does not exist)"
        raise SourceNotFound(
            f"no URL list for {day.isoformat()} under {base_uri}{hint}; looked for: {', '.join(candidates)}",
            candidates,
        )
    if len(existing) > 1:
        log.warning(
            "several lists for %s: reading %s, ignoring %s", day, existing[0], ", ".join(existing[1:])
        )
    return read_list(existing[0], sink=sink)


def read_list(uri: str, *, sink: Sink | None = None) -> SourceRead:
    """Read one list file (local path or fsspec URI).

    The format comes from the extension: ``.csv`` or ``.csv.gz`` is CSV, anything else is read as
    text with one URL a line; ``.gz`` is decompressed.
    """
    import fsspec

    kind, compressed = _format_of(uri)
    try:
        with fsspec.open(uri, "rb", compression="gzip" if compressed else None) as raw:
            return _parse_stream(raw, kind, origin=uri, sink=sink)
    except FileNotFoundError as exc:
        raise SourceNotFound(f"no URL list at {uri}", [uri]) from exc
    except (gzip.BadGzipFile, EOFError) as exc:
        raise SourceFormatError(f"{uri} is not a complete gzip file: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read {uri}: {exc}") from exc


def read_remote_list(url: str, fetch: Callable[[str], bytes], *, sink: Sink | None = None) -> SourceRead:
    """Read a list served over http(s); ``fetch`` is the guarded client (URL -> body bytes).

    The format comes from the URL's extension (``.txt``, ``.csv``, ``.gz``) and, when that says
    nothing, from the content: a body starting with gzip's magic is decompressed, and a first line
    naming a ``url`` column among comma-separated names is read as CSV. Errors of ``fetch`` (the
    list's server is down, answers 404, sends too much) propagate unchanged.
    """
    try:
        list_url = normalize_url(url)
    except InvalidUrl as exc:
        raise SourceError(f"remote list {url!r} is not usable: {exc.reason}") from exc
    body = fetch(list_url)
    kind, _ = _format_of(list_url.split("?", 1)[0])
    stream: io.BufferedIOBase = io.BytesIO(body)
    if body[:2] == _GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream)  # decompressed as it is parsed, never all at once
    try:
        if kind == "unknown":
            head = stream.read(64 * 1024)
            kind = "csv" if _looks_like_csv_header(head) else "txt"
            stream = io.BufferedReader(_Prepend(head, stream))
        return _parse_stream(stream, kind, origin=list_url, sink=sink)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise SourceFormatError(f"the list at {list_url} is not a complete gzip file: {exc}") from exc


def _format_of(uri: str) -> tuple[str, bool]:
    name = uri.rsplit("/", 1)[-1].lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[:-3]
    if name.endswith(".csv"):
        return "csv", compressed
    if name.endswith(".txt") or name.endswith(".lst"):
        return "txt", compressed
    return "unknown", compressed


def _join(base_uri: str, name: str) -> str:
    return f"{base_uri}{name}" if base_uri.endswith("/") else f"{base_uri}/{name}"


def _looks_like_csv_header(head: bytes) -> bool:
    for raw_line in head.decode("utf-8", "replace").lstrip("\ufeff").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        cells = [cell.strip().strip('"').lower() for cell in line.split(",")]
        return len(cells) > 1 and "url" in cells
    return False


class _Prepend(io.RawIOBase):
    """A byte stream with ``head`` (already read, to sniff the format) put back in front."""

    def __init__(self, head: bytes, rest: io.BufferedIOBase) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _parse_stream(
    raw: io.BufferedIOBase | IO[bytes], kind: str, *, origin: str, sink: Sink | None
) -> SourceRead:
    # Undecodable bytes become lone surrogates so one bad line is rejected, not the whole file.
    text = io.TextIOWrapper(
        raw,  # type: ignore[type-var]  # any readable binary stream works
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="" if kind == "csv" else None,
    )
    try:
        if kind == "csv":
            return _parse_csv(text, origin, sink)
        return _parse_txt(text, origin, sink)
    finally:
        text.detach()  # the caller owns and closes the underlying stream


def _parse_txt(lines: Iterable[str], origin: str, sink: Sink | None) -> SourceRead:
    collector = _Collector(origin, sink=sink)
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        comment = _INLINE_COMMENT.search(text)
        if comment is not None:
            text = text[: comment.start()]
        collector.add(text, number)
    return collector.done()


def _parse_csv(lines: Iterator[str], origin: str, sink: Sink | None) -> SourceRead:
    reader = csv.reader(lines)
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        return _Collector(origin, sink=sink).done()  # an empty CSV is an empty list, like an empty .txt
    lowered = [name.lower() for name in header]
    if "url" not in lowered:
        raise SourceFormatError(
            f"{origin}: the CSV header has no 'url' column (found: {', '.join(header) or 'nothing'}); "
            "the first line must name the columns, one of them 'url'"
        )
    url_index = lowered.index("url")
    meta_columns = [(i, name) for i, name in enumerate(header) if i != url_index and name]

    collector = _Collector(origin, sink=sink)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        number = reader.line_num
        meta = {name: row[i] for i, name in meta_columns if i < len(row)}
        if url_index >= len(row) or not row[url_index].strip():
            collector.reject("", number, "the url column is empty", meta)
            continue
        collector.add(row[url_index], number, meta)
    return collector.done()


# --- database and manual -----------------------------------------------------------------------


def read_table(conn: Any, day: date, *, sink: Sink | None = None) -> SourceRead:
    """Read the URLs listed for ``day`` in ``harvest.url_sources`` (``conn``: a psycopg2 connection).

    Rows are read in URL order (bytewise); ``line`` is the row's position in that order. No rows for the day
    raises :class:`SourceNotFound`, like a missing list file.
    """
    origin = f"harvest.url_sources (list_date = {day.isoformat()})"
    # A named (server-side) cursor: rows come 10,000 at a time, never the whole day's list at once.
    # WITH HOLD lets it work on a connection in autocommit mode too.
    with conn.cursor(name="harvest_read_table", withhold=True) as cur:
        cur.itersize = 10_000
        cur.execute(
            # COLLATE "C": the same order (and so the same line numbers) whatever the database locale
            'SELECT url, meta FROM harvest.url_sources WHERE list_date = %s ORDER BY url COLLATE "C"',
            (day,),
        )
        collector = _Collector(origin, line_word="row", sink=sink)
        number = 0
        while rows := cur.fetchmany(10_000):
            for url, meta in rows:
                number += 1
                collector.add(url, number, meta if isinstance(meta, dict) else None)
    if number == 0:
        raise SourceNotFound(f"no rows in {origin}", [origin])
    return collector.done()


def parse_manual(urls: str | Sequence[str], *, sink: Sink | None = None) -> SourceRead:
    """Read the ``urls`` Param: text with one URL a line, or a list of URLs.

    In text, a line is the unit, as in a list file: blank and ``#`` comment lines are ignored, and
    a line that is not one usable URL (``not a url``, two URLs on one line) is one ``rejected`` row
    whose error names the line. In a list, each entry is one URL and ``line`` is its position
    (1-based).
    """
    if isinstance(urls, str):
        return _parse_txt(urls.splitlines(), "urls param", sink)
    collector = _Collector("urls param", line_word="entry", sink=sink)
    for number, entry in enumerate(urls, start=1):
        if not isinstance(entry, str):
            collector.reject(repr(entry), number, f"expected a URL string, got {type(entry).__name__}")
        elif entry.strip():
            collector.add(entry, number)
    return collector.done()
