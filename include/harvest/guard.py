"""Which URLs may be fetched, and which addresses may be connected to (the SSRF guard).

Two steps, both before any byte is sent:

1. :func:`parse_target` checks the URL with the one URL parser (:mod:`include.harvest.urls`, which
   reads list lines too): http or https only, a host, a valid port, no credentials, no spaces or
   control characters (CR/LF would let a URL inject headers).
2. :meth:`AddressGuard.resolve` resolves the host once and refuses loopback, private, link-local,
   multicast, reserved, unspecified and other non-public addresses (IPv4, IPv6, IPv4-mapped IPv6),
   unless the host or the address is in ``allow_hosts``. The caller then connects to *that* address
   (never a second DNS lookup, so a DNS answer cannot change between check and connect).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable

from include.harvest.errors import Blocked, ConnectionFailed, Rejected, Unresolvable
from include.harvest.urls import ALLOWED_SCHEMES, DEFAULT_PORTS, InvalidUrl, Target, parse_url

__all__ = [
    "ALLOWED_SCHEMES",
    "DEFAULT_PORTS",
    "AddressGuard",
    "Target",
    "forbidden_reason",
    "parse_target",
]

# How long a DNS answer is reused inside one process: a batch hits the same hosts many times.
DNS_CACHE_SECONDS = 60.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_target(url: str) -> Target:
    """Check ``url`` and split it (:func:`include.harvest.urls.parse_url`); raise :class:`Rejected`.

    The same parser reads list lines, so the host checked here is the host a list line names.
    """
    try:
        return parse_url(url)
    except InvalidUrl as exc:
        raise Rejected(exc.reason) from exc


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
