"""URL checks and the SSRF address guard, at the guard's own level: nothing here connects.

Names are IP literals, /etc/hosts names, or the test names of conftest.TEST_NAMES, which the
tests' resolver answers with non-public addresses without DNS.
"""

from __future__ import annotations

import pytest

from include.harvest.errors import Blocked, Rejected
from include.harvest.guard import AddressGuard, parse_target


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://Example.COM/a.jpg", ("http", "example.com", 80, "/a.jpg", "example.com")),
        ("https://example.com:8443/a?b=1#frag", ("https", "example.com", 8443, "/a?b=1", "example.com:8443")),
        ("HTTP://example.com", ("http", "example.com", 80, "/", "example.com")),
        ("http://[2001:db8::1]:8080/x", ("http", "2001:db8::1", 8080, "/x", "[2001:db8::1]:8080")),
        (
            "http://bücher.example/ä.png",
            ("http", "xn--bcher-kva.example", 80, "/%C3%A4.png", "xn--bcher-kva.example"),
        ),
    ],
)
def test_valid_urls_are_split_for_the_request(url: str, expected: tuple[object, ...]) -> None:
    target = parse_target(url)
    assert (target.scheme, target.host, target.port, target.request_target, target.host_header) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file:' is not allowed"),
        ("ftp://example.com/a.jpg", "scheme 'ftp:' is not allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme 'data:' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript:' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher:' is not allowed"),
        ("example.com/a.jpg", "no scheme"),
        ("", "empty"),
        ("http://example.com/a b.jpg", "contains whitespace at character 21"),
        ("http://example.com/a.jpg\r\nX-Injected: 1", "carriage return (CR)"),
        ("http://example.com/a.jpg\nHost: evil", "line feed (LF)"),
        ("http://example.com/\ta.jpg", "control character 0x09"),
        ("http://example.com/\x00.jpg", "control character 0x00"),
        ("http:///a.jpg", "no host"),
        ("http://example.com:99999/", "invalid port"),
        ("http://example.com:http/", "invalid port"),
        ("http://example.com:0/", "invalid port"),
        ("http://user:secret@example.com/", "credentials"),
        ("http://exa$mple.com/", "cannot have"),
        ("http://[not-v6]/", "cannot be parsed"),
    ],
)
def test_unusable_urls_are_rejected_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(Rejected, match=None) as info:
        parse_target(url)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("172.31.255.254", "private"),
        ("10.255.255.255", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoint
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "private"),  # documentation range
        ("[::1]", "loopback"),
        ("[::]", "unspecified"),
        ("[fe80::1]", "link-local"),
        ("[fc00::1]", "private"),
        ("[fd12:3456::1]", "private"),
        ("[::ffff:192.168.0.1]", "private"),
        ("[ff02::1]", "multicast"),
        ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped
        ("[::ffff:10.0.0.1]", "private"),
        ("[::ffff:169.254.169.254]", "link-local"),
    ],
)
def test_non_public_addresses_are_blocked(address: str, kind: str) -> None:
    guard = AddressGuard(allow_hosts=())
    with pytest.raises(Blocked) as info:
        guard.resolve(parse_target(f"http://{address}:8080/x.png"))
    assert f"{kind} address" in str(info.value) and "HARVEST_ALLOW_HOSTS" in str(info.value)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "[2606:4700:4700::1111]"])
def test_public_addresses_pass_unchanged(address: str) -> None:
    # IP literals: resolving them needs no DNS, and nothing is connected here.
    assert AddressGuard().resolve(parse_target(f"http://{address}/x.png")) == address.strip("[]")


def test_a_name_resolving_to_loopback_is_blocked_with_both_in_the_message() -> None:
    with pytest.raises(Blocked, match="localhost resolves to 127.0.0.1, which is a loopback address"):
        AddressGuard().resolve(parse_target("http://localhost:8080/x.png"))


def test_allow_hosts_lets_named_hosts_and_cidrs_through() -> None:
    guard = AddressGuard(allow_hosts=("localhost", "10.0.0.0/8", "::1", ".internal.test"))
    assert guard.resolve(parse_target("http://localhost:8080/")) == "127.0.0.1"
    assert guard.resolve(parse_target("http://10.20.30.40/")) == "10.20.30.40"
    assert guard.resolve(parse_target("http://[::1]/")) == "::1"
    assert guard.resolve(parse_target("http://[::ffff:10.1.1.1]/")) == "10.1.1.1"  # reached over IPv4
    assert guard.host_allowed("cdn.internal.test") and not guard.host_allowed("internal.test.evil.com")
    with pytest.raises(Blocked):
        guard.resolve(parse_target("http://192.168.0.1/"))  # not in the list
    with pytest.raises(Blocked):
        guard.resolve(parse_target("http://127.0.0.1/"))  # "localhost" allows the name, not the address


def test_guard_off_resolves_without_checking() -> None:
    assert AddressGuard(enabled=False).resolve(parse_target("http://10.0.0.1/")) == "10.0.0.1"


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("intranet.harvest.test", "intranet.harvest.test resolves to 10.0.0.1, which is a private address"),
        ("metadata.harvest.test", "resolves to 169.254.169.254, which is a link-local address"),
        ("INTRANET.harvest.test.", "intranet.harvest.test resolves to 10.0.0.1"),  # case, trailing dot
    ],
)
def test_a_name_resolving_to_a_non_public_address_is_blocked(host: str, message: str) -> None:
    with pytest.raises(Blocked) as info:
        AddressGuard().resolve(parse_target(f"http://{host}/x.png"))
    assert message in str(info.value) and "HARVEST_ALLOW_HOSTS" in str(info.value)


def test_a_cidr_in_allow_hosts_lets_a_name_through_to_its_checked_address() -> None:
    # The guard returns the address the engine is to connect to; here it is only compared.
    guard = AddressGuard(allow_hosts=("10.0.0.0/8",))
    assert guard.resolve(parse_target("http://intranet.harvest.test/x.png")) == "10.0.0.1"
    with pytest.raises(Blocked, match="link-local"):
        guard.resolve(parse_target("http://metadata.harvest.test/x.png"))
