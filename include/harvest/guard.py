"""Which URLs may be fetched, and which addresses may be connected to (the SSRF guard).

Two steps, both before any byte is sent:

1. :func:`parse_target` checks the URL as written: http or https only, a host, a valid port, no
   credentials, no spaces or control characters (CR/LF would let a URL inject headers).
2. :meth:`AddressGuard.resolve` resolves the host once and refuses loopback, private, link-local,
   multicast, reserved, unspecified and other non-public addresses (IPv4, IPv6, IPv4-mapped IPv6),
   unless the host or the address is in ``allow_hosts``. The caller then connects to *that* address
   (never a second DNS lookup, so a DNS answer cannot change between check and connect).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from include.harvest.errors import Blocked, ConnectionFailed, Rejected, Unresolvable

__all__ = [
    "ALLOWED_SCHEMES",
    "AddressGuard",
    "Target",
    "forbidden_reason",
    "parse_target",
]

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# How long a DNS answer is reused inside one process: a batch hits the same hosts many times.
DNS_CACHE_SECONDS = 60.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f]")  # space, CR, LF, tab, other controls, DEL
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
# Characters kept as they are when non-ASCII parts of a path or query are percent-encoded.
_URL_SAFE = "/:@!$&'()*+,;=?%[]~-._"


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed the syntax checks, split into what a request needs."""

    url: str  # normalised: scheme://host[:port]/path?query, no fragment
    scheme: str
    host: str  # lower-case ASCII (IDNA), without IPv6 brackets
    port: int
    request_target: str  # /path?query as sent on the request line
    host_header: str  # host[:port] as sent in the Host header


def parse_target(url: str) -> Target:
    """Check ``url`` as written and split it; raise :class:`Rejected` with the reason."""
    bad = _FORBIDDEN_CHARS.search(url)
    if bad is not None:
        code = ord(bad.group())
        what = {0x20: "a space", 0x0A: "a line feed (LF)", 0x0D: "a carriage return (CR)"}.get(
            code, f"the control character {code:#04x}"
        )
        raise Rejected(
            f"URL contains {what} at position {bad.start()}: percent-encode it (space is %20) "
            "or fix the source list"
        )
    if not url:
        raise Rejected("URL is empty")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise Rejected(f"URL cannot be parsed: {exc}") from exc
    scheme, host, port, host_header = _authority(parts.scheme, parts.netloc)

    path = _encode_non_ascii(parts.path) or "/"
    query = _encode_non_ascii(parts.query)
    request_target = f"{path}?{query}" if query else path
    return Target(
        url=f"{scheme}://{host_header}{request_target}",
        scheme=scheme,
        host=host,
        port=port,
        request_target=request_target,
        host_header=host_header,
    )


@functools.lru_cache(maxsize=4096)  # a batch repeats its hosts: check each authority once
def _authority(raw_scheme: str, netloc: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and Host header of a URL's scheme and authority; raise :class:`Rejected`."""
    scheme = raw_scheme.lower()
    if not scheme:
        raise Rejected("URL has no scheme: write it as http://... or https://...")
    if scheme not in ALLOWED_SCHEMES:
        raise Rejected(f"scheme '{scheme}:' is not allowed: only http and https URLs are fetched")
    parts = urllib.parse.urlsplit(f"{scheme}://{netloc}")
    if parts.username is not None or parts.password is not None:
        raise Rejected("URL carries credentials (user:password@host): remove them from the URL list")
    raw_host = parts.hostname
    if not raw_host:
        raise Rejected("URL has no host name")
    try:
        port = parts.port
    except ValueError as exc:
        raise Rejected(f"URL has an invalid port: {exc}") from exc
    if port == 0:
        raise Rejected("URL has an invalid port: 0")
    host = _normalise_host(raw_host)
    port = port or DEFAULT_PORTS[scheme]
    display_host = f"[{host}]" if ":" in host else host
    host_header = display_host if port == DEFAULT_PORTS[scheme] else f"{display_host}:{port}"
    return scheme, host, port, host_header


def _normalise_host(raw_host: str) -> str:
    try:
        return str(ipaddress.ip_address(raw_host))
    except ValueError:
        pass
    if raw_host.startswith("[") or ":" in raw_host:
        raise Rejected(f"URL host {raw_host!r} is not a valid IPv6 address")
    try:
        host = raw_host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise Rejected(f"URL host {raw_host!r} is not a valid internationalised domain name") from exc
    if not host or not set(host) <= _HOST_CHARS or host.startswith(".") or ".." in host:
        raise Rejected(f"URL host {raw_host!r} contains characters a host name cannot have")
    return host.rstrip(".")


def _encode_non_ascii(part: str) -> str:
    return part if part.isascii() else urllib.parse.quote(part, safe=_URL_SAFE)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be contacted (``"loopback"``, ``"private"``...), or None if public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    )
    for label, hit in checks:
        if hit:
            return label
    # Shared address space (100.64/10), documentation ranges, 6to4 relays...: not the open web.
    return None if address.is_global else "non-public"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _connectable(address: IPAddress) -> str:
    """An IPv4-mapped IPv6 address is reached over IPv4 (hosts without IPv6 cannot open it)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class AddressGuard:
    """Resolves hosts once and refuses addresses that are not on the public internet.

    ``allow_hosts`` entries are host names (``localhost``; ``.example.com`` also allows subdomains)
    or addresses/CIDRs (``127.0.0.1``, ``10.0.0.0/8``, ``::1``) let through despite the checks.
    """

    def __init__(self, *, enabled: bool = True, allow_hosts: Iterable[str] = ()) -> None:
        self.enabled = enabled
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._networks: list[IPNetwork] = []
        for entry in allow_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if entry.startswith("."):
                    self._suffixes.append(entry)
                else:
                    self._names.add(entry.rstrip("."))
        self._dns_cache: dict[tuple[str, int], tuple[float, list[IPAddress]]] = {}
        self._dns_lock = threading.Lock()
        # IP literals always get the same answer: remember it (dict reads and writes are atomic).
        self._literal_decisions: dict[str, str | Blocked] = {}

    def host_allowed(self, host: str) -> bool:
        return host in self._names or any(host.endswith(suffix) for suffix in self._suffixes)

    def address_allowed(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            c in network for c in candidates for network in self._networks if c.version == network.version
        )

    def resolve(self, target: Target) -> str:
        """The address to connect to for ``target``; raise :class:`Blocked` if none may be contacted."""
        literal = self._literal_decisions.get(target.host)
        if literal is not None:
            if isinstance(literal, Blocked):
                raise Blocked(literal.message)
            return literal
        is_literal = _is_ip_literal(target.host)
        try:
            address = self._resolve(target)
        except Blocked as exc:
            if is_literal:
                self._literal_decisions[target.host] = exc
            raise
        if is_literal:
            self._literal_decisions[target.host] = address
        return address

    def _resolve(self, target: Target) -> str:
        addresses = self._lookup(target.host, target.port)
        if not self.enabled or self.host_allowed(target.host):
            return _connectable(addresses[0])
        first_reason: tuple[IPAddress, str] | None = None
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is None or self.address_allowed(address):
                return _connectable(address)
            first_reason = first_reason or (address, reason)
        assert first_reason is not None
        address, reason = first_reason
        subject = (
            str(address) if target.host == str(address) else f"{target.host} resolves to {address}, which"
        )
        article = "an" if reason[0] in "aeiou" else "a"
        raise Blocked(
            f"{subject} is {article} {reason} address: the address guard refuses it "
            f"(to allow it on purpose add the host or a CIDR to HARVEST_ALLOW_HOSTS)"
        )

    def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        key = (host, port)
        now = time.monotonic()
        cached = self._dns_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise ConnectionFailed(f"DNS lookup of {host!r} failed temporarily: {exc.strerror}") from exc
            raise Unresolvable(f"host {host!r} does not resolve ({exc.strerror}): check the URL") from exc
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"host {host!r} could not be resolved: {exc}") from exc
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolvable(f"host {host!r} resolved to no address")
        # IPv4 first: many workers (containers, CI) have no IPv6 route, and one address is tried.
        addresses.sort(key=lambda a: a.version)
        with self._dns_lock:
            self._dns_cache[key] = (now + DNS_CACHE_SECONDS, addresses)
        return addresses
