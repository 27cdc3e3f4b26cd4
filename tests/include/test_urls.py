from __future__ import annotations

import pytest

from include.harvest.urls import MAX_URL_LENGTH, InvalidUrl, normalize_url


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  https://example.com/a.jpg \n", "https://example.com/a.jpg"),
        ("HTTPS://Example.COM/Path/A.JPG?Size=L", "https://example.com/Path/A.JPG?Size=L"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("http://example.com:/a", "http://example.com/a"),
        ("https://example.com/a.jpg#section-2", "https://example.com/a.jpg"),
        ("https://example.com", "https://example.com/"),
        ("https://bücher.example/a.jpg", "https://xn--bcher-kva.example/a.jpg"),
        ("https://BÜCHER.example/a.jpg", "https://xn--bcher-kva.example/a.jpg"),
        ("https://example.com/bild/größe.jpg?q=ä", "https://example.com/bild/gr%C3%B6%C3%9Fe.jpg?q=%C3%A4"),
        ("https://example.com/a%20b.jpg?x=%2F", "https://example.com/a%20b.jpg?x=%2F"),
        ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
        ("http://192.0.2.1:8080/a", "http://192.0.2.1:8080/a"),
        ("https://example.com/@artist/a.jpg?by=a@b", "https://example.com/@artist/a.jpg?by=a@b"),
    ],
)
def test_normalize_url_gives_one_canonical_spelling(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


def test_spellings_of_the_same_url_normalise_equal() -> None:
    spellings = [
        "https://example.com/a.jpg",
        "HTTPS://EXAMPLE.COM/a.jpg",
        "https://example.com:443/a.jpg",
        "https://example.com/a.jpg#top",
        "\thttps://Example.com:443/a.jpg#x  ",
    ]
    assert {normalize_url(s) for s in spellings} == {"https://example.com/a.jpg"}


def test_path_case_is_kept_because_servers_may_care() -> None:
    assert normalize_url("https://example.com/A.jpg") != normalize_url("https://example.com/a.jpg")


@pytest.mark.parametrize(
    ("raw", "reason_contains"),
    [
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("example.com/a.jpg", "http:// or https://"),
        ("//example.com/a.jpg", "http:// or https://"),
        ("http:example.com/a.jpg", "expected '//'"),
        ("ftp://example.com/a.jpg", "scheme 'ftp:' is not allowed"),
        ("file:///etc/passwd", "scheme 'file:' is not allowed"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https://example.com/a b.jpg", "whitespace at character 22"),
        ("https://example.com/a.jpg https://example.com/b.jpg", "one URL per line"),
        ("https://example.com/\x00.jpg", "control character 0x00"),
        ("https://example.com/\x7f", "control character 0x7f"),
        ("https://", "no host"),
        ("https://user:secret@example.com/a", "contains credentials"),
        ("https://@example.com/a", "contains credentials"),
        ("https://:8080/a", "no host"),
        ("https://example.com:99999/a", "port '99999'"),
        ("https://example.com:http/a", "port 'http'"),
        ("https://example..com/a", "empty label"),
        ("https://exa<mple.com/a", "not allowed in a host name"),
        ("http://[::1/a", "IPv6"),
        ("http://[not-an-ip]/a", "IPv6 address"),
        ("https://☃.example/", "not a valid internationalised domain name"),
        ("https://example.com/\udcff.jpg", "not valid UTF-8"),
        ("https://example.com/" + "a" * MAX_URL_LENGTH, f"the limit is {MAX_URL_LENGTH}"),
    ],
)
def test_unusable_urls_are_refused_with_a_reason(raw: str, reason_contains: str) -> None:
    with pytest.raises(InvalidUrl) as caught:
        normalize_url(raw)
    assert reason_contains in str(caught.value)
    assert caught.value.reason == str(caught.value)


def test_invalid_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="scheme"):
        normalize_url("gopher://example.com/")
