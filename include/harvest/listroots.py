"""Which URL lists a run may read: the URL-list base and the folders an operator allows.

A list source is ``file`` or ``table`` (the list of the run's date), an ``http(s)://`` list (fetched
through the guarded client), or a list under one of these **roots**: ``HARVEST_URL_LIST_URI`` and the
comma-separated URIs of ``HARVEST_LIST_ROOTS`` (``file:///srv/lists,s3://bucket/lists``). Anything
else, such as ``file:///etc/passwd``, is refused.

Two gates use the roots: :func:`source_pattern` is the ``source`` Param's JSON-schema pattern, built
when the DAG file is parsed, so Airflow refuses such a trigger (form error, HTTP 400) before a run
exists; and :func:`include.harvest.sources.check_source_allowed` checks again when a list is read,
resolving ``..`` and symlinks.

Standard library only: the DAG file imports it at parse time (the package's ``__init__`` loads
nothing until a name is used).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_URL_LIST_URI",
    "LIST_ROOTS_SETTING",
    "URL_LIST_SETTING",
    "configured_roots",
    "normalise_root",
    "parse_list_roots",
    "source_pattern",
]

LIST_ROOTS_SETTING = "HARVEST_LIST_ROOTS"
URL_LIST_SETTING = "HARVEST_URL_LIST_URI"
# The same default as include.harvest.hooks.deployment_uris (a test keeps them equal).
DEFAULT_URL_LIST_URI = (Path(__file__).resolve().parents[2] / "data" / "url_lists").as_uri()

# The characters a regex gives a meaning to. Each is escaped with a backslash, which both Python's
# re (jsonschema on the api-server) and JavaScript's unicode-mode RegExp (the browser) accept;
# re.escape would also escape '-', which JavaScript's unicode mode refuses.
_REGEX_SYNTAX = frozenset("^$\\.*+?()[]{}|/")
# The part of a source after "<root>/": no '..' segment, no fsspec chaining ('::'), no whitespace.
_UNDER_ROOT = r"(?!(?:\S*/)?\.\.(?:/|$))(?!\S*::)\S+"


def normalise_root(root: str, *, setting: str = LIST_ROOTS_SETTING) -> str:
    """``root`` as ``scheme://path`` without a trailing slash, or ``ValueError`` naming ``setting``.

    An absolute local path becomes a ``file://`` URI. A root cannot be a whole file system or
    bucket store (``file:///``, ``s3://``), nor hold ``..`` or ``::``.
    """
    text = root.strip()
    if "://" not in text:
        if not text.startswith("/"):
            raise ValueError(
                f"{setting}: {root!r} is neither a URI (file:///srv/lists, s3://bucket/lists) nor an absolute path"
            )
        text = f"file://{text}"
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        raise ValueError(
            f"{setting}: {root!r}: http(s) lists are always allowed; a root is a folder (file://, s3://, …)"
        )
    if "::" in text or ".." in rest.split("/"):
        raise ValueError(f"{setting}: {root!r} may not contain '..' or '::'")
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"{setting}: {root!r}: write a local folder as file:///absolute/path")
        path = posixpath.normpath(rest).replace("//", "/")
    else:
        path = rest.rstrip("/")
    if path.strip("/") == "":
        raise ValueError(f"{setting}: {root!r} would allow every file; name a folder")
    return f"{scheme}://{path}"


def parse_list_roots(text: str | None) -> list[str]:
    """The roots of ``HARVEST_LIST_ROOTS``: comma-separated URIs (or absolute paths), normalised."""
    return [normalise_root(part) for part in (text or "").split(",") if part.strip()]


def configured_roots(environ: Mapping[str, str] | None = None) -> list[str]:
    """The URL-list base (``HARVEST_URL_LIST_URI``), then ``HARVEST_LIST_ROOTS``, without repeats."""
    env = os.environ if environ is None else environ
    base = normalise_root(env.get(URL_LIST_SETTING) or DEFAULT_URL_LIST_URI, setting=URL_LIST_SETTING)
    return list(dict.fromkeys([base, *parse_list_roots(env.get(LIST_ROOTS_SETTING))]))


def source_pattern(roots: Sequence[str]) -> str:
    """The ``source`` Param's pattern: ``file``, ``table``, an http(s) URL, or a list under a root."""
    under = [f"{_escape(normalise_root(root))}/{_UNDER_ROOT}" for root in roots]
    return "^(?:" + "|".join(["file", "table", r"https?://\S+", *under]) + ")$"


def _escape(text: str) -> str:
    return "".join(f"\\{ch}" if ch in _REGEX_SYNTAX else ch for ch in text)
