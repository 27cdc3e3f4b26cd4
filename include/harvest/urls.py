"""URL normalisation: one canonical spelling per URL, or a reason it cannot be fetched.

Two lines of a list that differ only in scheme/host case, a default port or a fragment name the same
resource, so they are fetched once and recorded as one row. Everything the server may interpret
(path, query, their case and percent-encoding) is kept as written.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["ALLOWED_SCHEMES", "MAX_URL_LENGTH", "InvalidUrl", "normalize_url"]

ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# harvest.downloads is keyed by (run_key, url) in a btree, and Postgres refuses index entries over
# about 2.7 kB: a longer URL would fail the whole run's insert, so it is rejected here instead.
MAX_URL_LENGTH = 2048

# Whitespace and control characters cannot appear in a URL on the wire; inside a line they mean the
# line holds two URLs, a copy/paste accident or binary garbage.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
# What may appear in an ASCII host name (letters, digits, hyphen, dot, and underscore, which real
# hosts use even though DNS host name rules forbid it).
_HOST_CHARS = re.compile(r"^[a-z0-9._-]+$")
# Percent-encode only what must be: non-ASCII characters (as UTF-8). Every printable ASCII
# character is left alone so the server sees the path and query exactly as written.
_SAFE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


class InvalidUrl(ValueError):
    """A URL that cannot be fetched; the message says why and what to change."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalize_url(raw: str) -> str:
    """Return the canonical form of ``raw`` or raise :class:`InvalidUrl`.

    - surrounding whitespace stripped; whitespace or control characters inside are refused
    - only ``http`` and ``https``, without credentials; scheme and host lower-cased
    - non-ASCII host names IDNA-encoded (``bücher.de`` -> ``xn--bcher-kva.de``)
    - default ports dropped (``:80`` for http, ``:443`` for https), an empty path becomes ``/``
    - the fragment dropped (it never reaches the server)
    - path and query kept as written, except non-ASCII characters, which are percent-encoded
    """
    text = raw.strip()
    if not text:
        raise InvalidUrl("empty URL")
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidUrl(_forbidden_reason(text, bad.start()))
    if _has_surrogates(text):
        raise InvalidUrl("contains bytes that are not valid UTF-8; save the list as UTF-8")

    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unbalanced '[' in the host
        raise InvalidUrl(f"cannot be parsed as a URL: {exc}") from exc

    scheme = parts.scheme.lower()
    if "://" not in text:
        if scheme in ALLOWED_SCHEMES:
            raise InvalidUrl(f"expected '//' after '{scheme}:' (e.g. {scheme}://example.com/image.jpg)")
        raise InvalidUrl("not an http(s) URL: write it with http:// or https:// in front")
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidUrl(f"scheme {parts.scheme!r} is not supported; only http and https URLs are fetched")

    netloc = _normalize_netloc(parts.netloc, scheme)
    path = _encode_non_ascii(parts.path) or "/"
    query = _encode_non_ascii(parts.query)
    url = urlunsplit((scheme, netloc, path, query, ""))
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
    return url


def _normalize_netloc(netloc: str, scheme: str) -> str:
    _, at, hostport = netloc.rpartition("@")
    if at:
        # Credentials in a URL end up in logs and in harvest.downloads, and the fetcher refuses them.
        raise InvalidUrl("contains credentials (user:password@); remove them, Harvest does not send them")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidUrl(f"host {hostport!r} opens '[' without closing it")
        host = _normalize_ipv6(hostport[1:end])
        port_text = hostport[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise InvalidUrl(f"unexpected {port_text!r} after the IPv6 address")
        port_text = port_text[1:]
    else:
        host_text, _, port_text = hostport.partition(":")
        host = _normalize_host(host_text)

    port = _parse_port(port_text)
    return host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)  # lists repeat a few hosts many times
def _normalize_host(host: str) -> str:
    if not host:
        raise InvalidUrl("no host name after the scheme (expected e.g. https://example.com/...)")
    host = host.lower() if host.isascii() else _idna_encode(host)
    if not _HOST_CHARS.match(host):
        bad = next(ch for ch in host if not _HOST_CHARS.match(ch))
        raise InvalidUrl(f"host {host!r} contains {bad!r}, which is not allowed in a host name")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if any(not label for label in labels):
        raise InvalidUrl(f"host {host!r} has an empty label (two dots in a row, or a leading dot)")
    if any(len(label) > 63 for label in labels):
        raise InvalidUrl(f"host {host!r} has a label longer than 63 characters")
    return host


def _idna_encode(host: str) -> str:
    try:
        import idna  # IDNA 2008 with UTS 46 mapping, as browsers do; installed with requests
    except ImportError:  # pragma: no cover - fall back to the stdlib's IDNA 2003 codec
        try:
            return host.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise InvalidUrl(f"host {host!r} is not a valid internationalised domain name: {exc}") from exc
    try:
        return str(idna.encode(host, uts46=True).decode("ascii"))
    except idna.IDNAError as exc:
        raise InvalidUrl(f"host {host!r} is not a valid internationalised domain name: {exc}") from exc


def _normalize_ipv6(address: str) -> str:
    try:
        return f"[{ipaddress.IPv6Address(address).compressed}]"
    except ValueError as exc:
        raise InvalidUrl(f"[{address}] is not a valid IPv6 address") from exc


def _parse_port(text: str) -> int | None:
    if not text:
        return None  # "http://host:/" means the default port
    if not text.isdigit() or int(text) > 65535:
        raise InvalidUrl(f"port {text!r} is not a number between 1 and 65535")
    port = int(text)
    if port == 0:
        raise InvalidUrl("port 0 cannot be connected to")
    return port


def _encode_non_ascii(part: str) -> str:
    return part if part.isascii() else quote(part, safe=_SAFE_ASCII)


def _has_surrogates(text: str) -> bool:
    # Lines decoded with errors="surrogateescape" carry undecodable bytes as lone surrogates.
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def _forbidden_reason(text: str, position: int) -> str:
    char = text[position]
    if char.isspace():
        return (
            f"contains whitespace at character {position + 1}; put one URL per line, "
            "and percent-encode spaces inside a URL as %20"
        )
    return f"contains the control character U+{ord(char):04X} at character {position + 1}"
