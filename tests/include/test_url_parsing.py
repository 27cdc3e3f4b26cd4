"""One URL parser for list lines, redirect targets and the address guard, tested differentially.

For every input, the list path (:func:`normalize_url`) and the request path (:func:`parse_target`,
what the engine runs on the first URL and on every redirect ``Location``) must agree: both refuse
it, or both accept it with the same URL and the host the guard checks is the host the request goes
to. Two parsers that disagree here are the classic SSRF hole. Nothing here connects.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import urllib.parse

import pytest

from include.harvest.errors import Rejected
from include.harvest.guard import parse_target
from include.harvest.urls import InvalidUrl, normalize_url

# (input, canonical URL, or None when both paths must refuse it)
CORPUS: list[tuple[str, str | None]] = [
    # host case, trailing dot, default and empty ports
    ("HTTP://Example.COM/A.jpg", "http://example.com/A.jpg"),
    ("http://example.com./a", "http://example.com/a"),
    ("http://EXAMPLE.com.:80/a", "http://example.com/a"),
    ("http://example.com../a", None),
    ("http://.example.com/a", None),
    ("http://example.com:/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:443/a", "http://example.com:443/a"),
    ("http://example.com:0080/a", "http://example.com/a"),
    ("http://example.com:0/a", None),
    ("http://example.com:65536/a", None),
    ("http://example.com:\u0668\u0660/a", None),  # Arabic-Indic digits are not a port
    ("http://example.com:80:80/a", None),
    # IDNA 2008 / UTS 46, mixed scripts, punycode as input
    ("https://faß.de/a", "https://xn--fa-hia.de/a"),
    ("https://FASS.de/a", "https://fass.de/a"),
    ("https://xn--fa-hia.de/a", "https://xn--fa-hia.de/a"),
    ("https://XN--FA-HIA.DE./a", "https://xn--fa-hia.de/a"),
    ("https://bücher.example/a", "https://xn--bcher-kva.example/a"),
    ("https://рaypal.com/a", "https://xn--aypal-uye.com/a"),  # Cyrillic "р" + Latin
    ("https://example\u3002com/a", "https://example.com/a"),  # ideographic full stop
    ("https://☃.example/", None),
    ("https://ex\uff04mple.com/", None),  # fullwidth '$'
    # percent-encoding: never decoded in the host, kept as written in path and query
    ("http://ex%61mple.com/a", None),
    ("http://%31%32%37.0.0.1/a", None),
    ("http://example.com/a%2F..%2Fb?x=%41", "http://example.com/a%2F..%2Fb?x=%41"),
    ("http://example.com/ä?q=ö", "http://example.com/%C3%A4?q=%C3%B6"),
    ('http://example.com/ä"<>^`{|}', 'http://example.com/%C3%A4"<>^`{|}'),
    # IPv4 in every form the resolver (inet_aton) accepts: one dotted quad
    ("http://127.0.0.1/a", "http://127.0.0.1/a"),
    ("http://127.0.0.1./a", "http://127.0.0.1/a"),
    ("http://2130706433/a", "http://127.0.0.1/a"),
    ("http://0177.0.0.1/a", "http://127.0.0.1/a"),
    ("http://0x7f.1/a", "http://127.0.0.1/a"),
    ("http://0X7F.0.0.1/a", "http://127.0.0.1/a"),
    ("http://127.1/a", "http://127.0.0.1/a"),
    ("http://10.1/a", "http://10.0.0.1/a"),
    ("http://0/a", "http://0.0.0.0/a"),
    ("http://１２７.０.０.１/a", "http://127.0.0.1/a"),  # fullwidth digits map to ASCII first
    ("http://256.0.0.1/a", None),
    ("http://1.2.3.4.5/a", None),
    ("http://09.0.0.1/a", None),
    ("http://example.123/a", None),
    # IPv6: brackets, zone ids, IPv4-mapped
    ("http://[::1]/a", "http://[::1]/a"),
    ("http://[::1]:/a", "http://[::1]/a"),
    ("http://[2001:DB8:0:0::1]:8080/a", "http://[2001:db8::1]:8080/a"),
    ("http://[::ffff:127.0.0.1]/a", "http://[::ffff:7f00:1]/a"),
    ("http://[fe80::1%25eth0]/a", None),
    ("http://[fe80::1%eth0]/a", None),
    ("http://[127.0.0.1]/a", None),
    ("http://[::1/a", None),
    ("http://[::1]x/a", None),
    ("http://[v1.fe]/a", None),
    ("http://::1/a", None),
    # userinfo, in either place
    ("http://evil@127.0.0.1/a", None),
    ("http://127.0.0.1@evil.example/a", None),
    ("http://user:pw@example.com/a", None),
    ("http://@example.com/a", None),
    ("http://example.com@/a", None),
    ("http://example.com#@evil.example/", "http://example.com/"),
    ("http://example.com?@evil.example/", "http://example.com/?@evil.example/"),
    # backslashes (browsers read them as '/' in the authority: refuse rather than guess)
    ("http://a\\@b/", None),
    ("http://evil.example\\.good.example/", None),
    ("http:\\\\example.com\\a", None),
    ("http://example.com/a\\b", "http://example.com/a\\b"),
    # whitespace and control characters, inside or around
    ("  http://example.com/a \n", "http://example.com/a"),
    ("http://exa mple.com/", None),
    ("http://example.com/a\tb", None),
    ("http://exam\tple.com/", None),
    ("http://example.com/a\r\nHost: evil", None),
    ("http://example.com/a\nb", None),
    ("http://example.com/a\x00", None),
    ("http://example.com/a\x9b", None),
    ("http://example.com/a\u00a0b", None),
    ("http://example.com/a\u2028b", None),
    # schemes and shapes
    ("https://example.com", "https://example.com/"),
    ("http:/example.com/a", None),
    ("http:example.com/a", None),
    ("//example.com/a", None),
    ("example.com/a", None),
    ("ftp://example.com/a", None),
    ("javascript:alert(1)", None),
    ("", None),
]


def _list_path(raw: str) -> str | None:
    try:
        return normalize_url(raw)
    except InvalidUrl:
        return None


def _request_path(raw: str) -> str | None:
    try:
        return parse_target(raw).url
    except Rejected:
        return None


@pytest.mark.parametrize(("raw", "expected"), CORPUS)
def test_list_lines_and_requests_parse_every_url_alike(raw: str, expected: str | None) -> None:
    assert (_list_path(raw), _request_path(raw)) == (expected, expected)


@pytest.mark.parametrize("raw", [raw for raw, expected in CORPUS if expected is not None])
def test_the_host_checked_is_the_host_connected_to(raw: str) -> None:
    target = parse_target(raw)
    # The engine fetches the normalised list line, and follows redirects by re-parsing: same target.
    assert parse_target(normalize_url(raw)) == target
    assert parse_target(urllib.parse.urljoin("http://base.example/dir/", raw.strip())) == target
    # A client that read the URL again would find the same host and port.
    parts = urllib.parse.urlsplit(target.url)
    assert (parts.hostname, parts.port or {"http": 80, "https": 443}[parts.scheme]) == (
        target.host,
        target.port,
    )
    assert target.host_header in (
        target.host,
        f"[{target.host}]",
        f"{target.host}:{target.port}",
        f"[{target.host}]:{target.port}",
    )
    _assert_resolver_reads_the_host_as_the_guard_does(target.host)


def _assert_resolver_reads_the_host_as_the_guard_does(host: str) -> None:
    """An address is an IP literal the guard recognises; a name is nothing the resolver reads as one."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # getaddrinfo reads "2130706433", "0x7f.1" or "127.1" as 127.0.0.1 without DNS (inet_aton):
        # a host the guard took for a name must not be such a number.
        with pytest.raises(OSError):
            socket.inet_aton(host)
        assert ":" not in host and "%" not in host
    else:
        assert str(address) == host and getattr(address, "scope_id", None) is None


SCHEMES = ["http", "HTTPS", "ftp"]
HOSTS = [
    "example.com",
    "Example.COM.",
    "faß.de",
    "xn--fa-hia.de",
    "127.1",
    "0x7f.0.0.1",
    "2130706433",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[fe80::1%25eth0]",
    "a\\@b",
    "evil@127.0.0.1",
    "127.0.0.1@evil",
    "ex%61mple.com",
    "",
    "exa mple.com",
    "１２７.０.０.１",
]
PORTS = ["", ":", ":80", ":443", ":8080", ":0", ":x"]
TAILS = ["", "/", "/a/ä?b=ö#f", "/a\\b", "?q", "#frag", "/a\tb"]


def test_both_paths_agree_on_every_combination() -> None:
    disagreements = []
    for scheme, host, port, tail in itertools.product(SCHEMES, HOSTS, PORTS, TAILS):
        raw = f"{scheme}://{host}{port}{tail}"
        listed, requested = _list_path(raw), _request_path(raw)
        if listed != requested:
            disagreements.append((raw, listed, requested))
    assert not disagreements


def test_the_length_limit_is_the_only_difference_and_it_is_a_storage_rule() -> None:
    # harvest.downloads' key cannot hold a list line over MAX_URL_LENGTH; a redirect may go there.
    long_url = "https://example.com/" + "a" * 3000
    assert _list_path(long_url) is None
    assert _request_path(long_url) == long_url
