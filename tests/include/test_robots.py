"""robots.txt: RFC 9309's matching rules, what each answer means, and the caches (process, Redis DB 13).

The robots.txt files come from a fake ``fetch_robots`` (this module's unit is the policy, not the
HTTP client); the Redis tests use the real Redis under a key prefix of their own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from include.harvest import robots
from include.harvest.errors import (
    Blocked,
    ConnectionFailed,
    DownloadError,
    HostUnreachable,
    HttpError,
    InvalidContent,
    RetryableHttpStatus,
    Timeout,
)
from include.harvest.robots import (
    MAX_ROBOTS_BYTES,
    UNREACHABLE_CACHE_SECONDS,
    RobotsFile,
    RobotsPolicy,
    RobotsVerdict,
    disallowing_rule,
    product_token,
    robots_url,
    select_group,
)
from include.harvest.settings import DEFAULT_USER_AGENT, FetchSettings
from include.harvest.urls import parse_url

# Longest wait for another thread; reaching it means a hang caught, never a normal outcome.
DEADLINE_SECONDS = 20.0
SETTINGS = FetchSettings()  # our agent: "Harvest/0.1 (image harvester; contact: ...)"


class FakeRobots:
    """``fetch_robots`` answering from a table: URL -> RobotsFile, or an exception to raise."""

    def __init__(self, answers: dict[str, RobotsFile | DownloadError] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, url: str) -> RobotsFile:
        with self._lock:
            self.calls.append(url)
        answer = self.answers.get(url, RobotsFile(404))
        if isinstance(answer, DownloadError):
            raise answer
        return answer


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy_for(text: str, settings: FetchSettings = SETTINGS, **kwargs: Any) -> RobotsPolicy:
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, text.encode())})
    return RobotsPolicy(settings, fake, **kwargs)


def allowed(policy: RobotsPolicy, url: str) -> bool:
    try:
        policy.check(parse_url(url))
    except Blocked:
        return False
    return True


# (case, robots.txt, path, allowed for "Harvest/0.1 (image harvester; ...)"). The module docstring
# of include/harvest/robots.py says which of them urllib.robotparser and Protego alone fail.
RFC_9309_CASES = [
    ("longest match wins: longer allow", "User-agent: *\nDisallow: /\nAllow: /p\n", "/page", True),
    ("longest match wins: longer disallow listed last", "User-agent: *\nAllow: /folder\nDisallow: /folder/private\n", "/folder/private/x.jpg", False),
    ("longest match wins: longer disallow listed first", "User-agent: *\nDisallow: /folder/private\nAllow: /folder\n", "/folder/private/x.jpg", False),
    ("longest match wins: longer allow listed last", "User-agent: *\nDisallow: /folder\nAllow: /folder/public\n", "/folder/public/x.jpg", True),
    ("allow wins a tie", "User-agent: *\nDisallow: /folder\nAllow: /folder\n", "/folder/x.jpg", True),
    ("* matches any characters", "User-agent: *\nDisallow: /*.gif\n", "/img/a.gif?x=1", False),
    ("* needs the rest to match", "User-agent: *\nDisallow: /*.gif\n", "/img/a.png", True),
    ("$ anchors the end", "User-agent: *\nDisallow: /*.gif$\n", "/img/a.gif", False),
    ("$ does not match a longer path", "User-agent: *\nDisallow: /*.gif$\n", "/img/a.gif?x=1", True),
    ("allow /$ allows the root only", "User-agent: *\nAllow: /$\nDisallow: /\n", "/page.jpg", False),
    ("a wildcard rule can be the longest", "User-agent: *\nAllow: /page\nDisallow: /*.jpg\n", "/page.jpg", False),
    ("percent-encoded rule, plain URL", "User-agent: *\nDisallow: /foo/bar/%62%61%7A\n", "/foo/bar/baz", False),
    ("UTF-8 rule, percent-encoded URL", "User-agent: *\nDisallow: /foo/bar/ツ\n", "/foo/bar/%E3%83%84", False),
    ("UTF-8 rule, UTF-8 URL", "User-agent: *\nDisallow: /foo/bar/ツ\n", "/foo/bar/ツ", False),
    ("percent-encoded rule, percent-encoded URL", "User-agent: *\nDisallow: /foo/bar/%E3%83%84\n", "/foo/bar/%E3%83%84", False),
    ("hex digits of any case", "User-agent: *\nDisallow: /foo/bar/%e3%83%84\n", "/foo/bar/%E3%83%84", False),
    ("our group, case-insensitive", "User-agent: HARVEST\nDisallow: /private/\n", "/private/x.jpg", False),
    ("our group, not *", "User-agent: *\nDisallow: /\n\nUser-agent: harvest\nDisallow: /private/\n", "/public/x.jpg", True),
    ("our group, not *, listed first", "User-agent: harvest\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n", "/public/x.jpg", True),
    ("* when no group names us", "User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n", "/private/x.jpg", False),
    ("another agent's group does not apply", "User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n", "/public/x.jpg", True),
    ("no group applies", "User-agent: otherbot\nDisallow: /\n", "/x.jpg", True),
    ("user-agent lines sharing a group", "User-agent: otherbot\nUser-agent: harvest\nDisallow: /shared/\n", "/shared/x.jpg", False),
    ("groups of our agent are combined", "User-agent: harvest\nDisallow: /a/\n\nUser-agent: *\nDisallow: /\n\nUser-agent: harvest\nDisallow: /b/\n", "/b/x.jpg", False),
    ("a word of our comment is not our name", "User-agent: image\nDisallow: /\n", "/x.jpg", True),
    ("a longer name starting with ours is not ours", "User-agent: harvester\nDisallow: /\n", "/x.jpg", True),
    ("a prefix of our name is not ours", "User-agent: harv\nDisallow: /\n", "/x.jpg", True),
    ("a version after the name still names us", "User-agent: Harvest/2.0\nDisallow: /\n", "/x.jpg", False),
    ("unknown lines are ignored", "User-agent: *\nFoo: bar\nNoindex: /x\nDisallow: /private/\n", "/private/x.jpg", False),
    ("unknown lines do not end a group", "User-agent: harvest\nFoo: bar\nDisallow: /private/\n", "/private/x.jpg", False),
    ("an empty Disallow allows", "User-agent: *\nDisallow:\n", "/x.jpg", True),
    ("/robots.txt is always allowed", "User-agent: *\nDisallow: /\n", "/robots.txt", True),
    ("comments are ignored", "User-agent: * # everyone\nDisallow: /private/ # not you\n", "/private/x.jpg", False),
    ("CRLF line ends", "User-agent: *\r\nDisallow: /private/\r\n", "/private/x.jpg", False),
    ("CR line ends", "User-agent: *\rDisallow: /private/\r", "/private/x.jpg", False),
    ("a UTF-8 byte order mark", "\ufeffUser-agent: *\nDisallow: /private/\n", "/private/x.jpg", False),
    ("field names are case-insensitive", "user-AGENT: *\ndisallow: /private/\n", "/private/x.jpg", False),
    ("paths are case-sensitive", "User-agent: *\nDisallow: /Private/\n", "/private/x.jpg", True),
    ("the query is part of the path", "User-agent: *\nDisallow: /search?q=\n", "/search?q=cats", False),
    ("a sitemap line does not end a group", "User-agent: harvest\nDisallow: /a/\nSitemap: https://example.com/s.xml\nDisallow: /b/\n", "/b/x.jpg", False),
    ("rules before any user-agent apply to no one", "Disallow: /\nUser-agent: *\nDisallow: /private/\n", "/x.jpg", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [case[1:] for case in RFC_9309_CASES],
    ids=[case[0] for case in RFC_9309_CASES],
)
def test_rfc_9309_matching(text: str, path: str, expected: bool) -> None:
    assert allowed(policy_for(text), f"https://example.com{path}") is expected


def test_a_disallowed_url_is_blocked_with_the_rule_and_the_group() -> None:
    policy = policy_for("User-agent: *\nDisallow: /\n\nUser-agent: harvest\nDisallow: /private/\nAllow: /p\n")
    with pytest.raises(Blocked) as refused:
        policy.check(parse_url("https://example.com/private/x.jpg"))
    assert str(refused.value) == (
        'robots.txt of https://example.com disallows /private/x.jpg for Harvest (rule "Disallow: /private/", '
        'group "harvest"); not downloaded (HARVEST_RESPECT_ROBOTS_TXT=false turns the check off, only for '
        "your own servers)"
    )


@pytest.mark.parametrize(
    ("lines", "url", "rule"),
    [
        (["Disallow: /a", "Disallow: /a/b", "Allow: /a/b/c"], "https://h/a/b/x", "Disallow: /a/b"),
        (["Disallow: /a/b", "Disallow: /a"], "https://h/a/b/x", "Disallow: /a/b"),  # longest, not first
        (["Allow: /page", "Disallow: /*.jpg"], "https://h/page.jpg", "Disallow: /*.jpg"),
        (["dissallow: /typo/"], "https://h/typo/x", "Disallow: /typo/"),  # read as Protego reads it
        (["Disallow /no-colon/"], "https://h/no-colon/x", "Disallow: /no-colon/"),
        (["Disallow: /a", "Allow: /a/b"], "https://h/a/b/x", None),  # allowed: no rule to name
    ],
)
def test_the_rule_named_is_the_longest_matching_disallow(
    lines: list[str], url: str, rule: str | None
) -> None:
    assert disallowing_rule(url, lines) == rule


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [
        (DEFAULT_USER_AGENT, "Harvest"),
        ("Acme-Bot_2/1.0 (ops@acme.example)", "Acme-Bot_"),
        ("  harvest", "harvest"),
        ("*", "*"),
        ("123/1.0", ""),
    ],
)
def test_product_token(user_agent: str, token: str) -> None:
    assert product_token(user_agent) == token


def test_select_group_names_the_group_as_written() -> None:
    text = "User-agent: OtherBot\nUser-agent: HarVest/1.0\nDisallow: /a/\n\nUser-agent: *\nDisallow: /\n"
    assert select_group(text, "Harvest") == ("HarVest/1.0", ["Disallow: /a/"])
    assert select_group(text, "nobody") == ("*", ["Disallow: /"])
    assert select_group("User-agent: otherbot\nDisallow: /\n", "Harvest") == (None, [])


def test_an_agent_without_a_product_token_follows_the_star_group() -> None:
    text = "User-agent: harvest\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n"
    policy = policy_for(text, SETTINGS.replace(user_agent="123 crawler"))
    assert allowed(policy, "https://example.com/x.jpg")
    assert not allowed(policy, "https://example.com/private/x.jpg")


def test_a_group_for_another_agent_token() -> None:
    text = "User-agent: harvest\nDisallow: /\n\nUser-agent: acme\nDisallow: /private/\n"
    policy = policy_for(text, SETTINGS.replace(user_agent="Acme/2.0 (ops@acme.example)"))
    assert allowed(policy, "https://example.com/x.jpg")
    with pytest.raises(Blocked, match='for Acme .*group "acme"'):
        policy.check(parse_url("https://example.com/private/x.jpg"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451, 301, 308])
def test_an_unavailable_robots_txt_allows_everything(status: int) -> None:
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(status, b"User-agent: *\nDisallow: /\n")})
    verdict = RobotsPolicy(SETTINGS, fake).check(parse_url("https://example.com/x.jpg"))
    assert verdict == RobotsVerdict(None, f"robots.txt of https://example.com answered {status}: no rules")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 199, 600])
def test_an_unreachable_robots_txt_disallows_everything(status: int) -> None:
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(status, b"")})
    with pytest.raises(Blocked) as refused:
        RobotsPolicy(SETTINGS, fake).check(parse_url("https://example.com/x.jpg"))
    assert str(refused.value) == (
        f"robots.txt of https://example.com answered {status}, so RFC 9309 says to assume that everything "
        "on the host is disallowed; not downloaded (the next run tries again)"
    )


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ConnectionFailed("connection refused"), "could not be fetched (connection refused)"),
        (Timeout("no answer within 5 s"), "could not be fetched (no answer within 5 s)"),
        (Blocked("10.0.0.1 is a private address"), "could not be fetched (10.0.0.1 is a private address)"),
        (RetryableHttpStatus("busy", http_status=503), "answered 503"),
        (InvalidContent("body cut short", http_status=200), "could not be fetched (body cut short)"),
        (HttpError("not found", http_status=404), None),  # a fetcher raising on statuses: still a 404
    ],
)
def test_a_fetch_that_raises(error: DownloadError, outcome: str | None) -> None:
    fake = FakeRobots({"https://example.com/robots.txt": error})
    policy = RobotsPolicy(SETTINGS, fake)
    if outcome is None:
        assert allowed(policy, "https://example.com/x.jpg")
        return
    if isinstance(error, ConnectionFailed | Timeout):
        # No answer at all: a dead host is recorded as the network failure it is, not as a refusal.
        expected: type[DownloadError] = HostUnreachable
        text = f"robots.txt of https://example.com {outcome}; the host did not answer"
    else:
        expected, text = Blocked, f"robots.txt of https://example.com {outcome}, so RFC 9309"
    with pytest.raises(expected, match=re.escape(text)) as raised:
        policy.check(parse_url("https://example.com/x.jpg"))
    assert type(raised.value) is expected


def test_only_the_first_500_kib_are_read() -> None:
    padding = b"# " + b"x" * (MAX_ROBOTS_BYTES - 60) + b"\n"
    head = b"User-agent: *\nDisallow: /early/\n"
    body = head + padding + b"Disallow: /cut-in-the-middle/\n" + b"Disallow: /late/\n"
    cut_at = body.index(b"/cut-in-the-middle/")
    assert cut_at < MAX_ROBOTS_BYTES < cut_at + len(b"/cut-in-the-middle/")  # the limit falls inside it
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, body)})
    policy = RobotsPolicy(SETTINGS, fake)
    assert not allowed(policy, "https://example.com/early/x.jpg")
    assert allowed(policy, "https://example.com/late/x.jpg")
    # A line cut by the limit is dropped, not read as "Disallow: /" or "Disallow: /cu".
    assert allowed(policy, "https://example.com/cut-in-the-middle/x.jpg")
    assert allowed(policy, "https://example.com/c.jpg")


def test_robots_txt_itself_is_never_checked() -> None:
    fake = FakeRobots()
    policy = RobotsPolicy(SETTINGS, fake)
    assert policy.check(parse_url("https://example.com/robots.txt")).crawl_delay is None
    assert policy.check(parse_url("https://example.com/robots.txt?v=2")).crawl_delay is None
    assert fake.calls == []


def test_the_setting_turns_the_check_off() -> None:
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /\n")})
    policy = RobotsPolicy(SETTINGS.replace(respect_robots_txt=False), fake)
    assert allowed(policy, "https://example.com/x.jpg")
    assert policy.crawl_delay(parse_url("https://example.com/x.jpg")) is None
    assert fake.calls == []
    assert FetchSettings.from_env({"HARVEST_RESPECT_ROBOTS_TXT": "false"}).respect_robots_txt is False
    assert FetchSettings().respect_robots_txt is True


def test_each_origin_has_its_own_robots_txt() -> None:
    fake = FakeRobots(
        {
            "https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /\n"),
            "http://example.com:8080/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /private/\n"),
        }
    )
    policy = RobotsPolicy(SETTINGS, fake)
    assert not allowed(policy, "https://example.com/x.jpg")
    assert not allowed(policy, "https://example.com/y.jpg")
    assert allowed(policy, "http://example.com:8080/x.jpg")
    assert allowed(policy, "http://example.com/x.jpg")  # port 80: a third origin, its robots.txt a 404
    assert allowed(policy, "https://[2001:db8::1]/x.jpg")
    assert fake.calls == [
        "https://example.com/robots.txt",
        "http://example.com:8080/robots.txt",
        "http://example.com/robots.txt",
        "https://[2001:db8::1]/robots.txt",
    ]
    assert robots_url(parse_url("HTTP://Example.COM:8080/a/b.jpg?c")) == "http://example.com:8080/robots.txt"


def test_a_robots_txt_is_reused_for_the_ttl_then_fetched_again() -> None:
    clock = Clock()
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /a/\n")})
    policy = RobotsPolicy(SETTINGS.replace(robots_cache_ttl=3600), fake, clock=clock)
    target = parse_url("https://example.com/b.jpg")
    policy.check(target)
    clock.now += 3599
    policy.check(target)
    assert len(fake.calls) == 1
    clock.now += 2
    policy.check(target)
    assert len(fake.calls) == 2
    assert SETTINGS.robots_cache_ttl == 86400  # RFC 9309, 2.4: a cached copy for 24 hours at most


def test_an_unreachable_robots_txt_is_asked_again_soon() -> None:
    clock = Clock()
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(503)})
    policy = RobotsPolicy(SETTINGS, fake, clock=clock)
    target = parse_url("https://example.com/x.jpg")
    with pytest.raises(Blocked):
        policy.check(target)
    clock.now += UNREACHABLE_CACHE_SECONDS - 1
    with pytest.raises(Blocked):
        policy.check(target)
    assert len(fake.calls) == 1
    fake.answers["https://example.com/robots.txt"] = RobotsFile(200, b"")  # the outage is over
    clock.now += 2
    assert policy.check(target).crawl_delay is None
    assert len(fake.calls) == 2


def test_the_process_cache_keeps_a_bounded_number_of_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(robots, "LOCAL_CACHE_ORIGINS", 10)
    fake = FakeRobots()
    policy = RobotsPolicy(SETTINGS, fake)
    for number in range(25):
        policy.check(parse_url(f"https://host-{number}.example/x.jpg"))
    assert len(policy._cache) <= 10
    policy.check(parse_url("https://host-24.example/y.jpg"))  # the newest are kept
    assert len(fake.calls) == 25


def test_crawl_delay_of_our_group() -> None:
    text = "User-agent: *\nCrawl-delay: 1\n\nUser-agent: harvest\nCrawl-delay: 2.5\nDisallow: /private/\n"
    policy = policy_for(text)
    target = parse_url("https://example.com/x.jpg")
    assert policy.check(target) == RobotsVerdict(
        2.5, 'robots.txt of https://example.com allows it (group "harvest")'
    )
    assert policy.crawl_delay(target) == 2.5
    assert policy_for("User-agent: *\nCrawl-delay: 1\n").crawl_delay(target) == 1.0
    assert policy_for("User-agent: otherbot\nCrawl-delay: 9\n").crawl_delay(target) is None
    assert policy_for("User-agent: *\nCrawl-delay: 0\n").crawl_delay(target) is None
    assert policy_for("User-agent: *\nCrawl-delay: soon\n").crawl_delay(target) is None


def test_a_crawl_delay_over_the_cap_blocks_the_host() -> None:
    policy = policy_for("User-agent: harvest\nCrawl-delay: 120\n", SETTINGS.replace(max_crawl_delay=30))
    with pytest.raises(Blocked) as refused:
        policy.check(parse_url("https://example.com/x.jpg"))
    assert str(refused.value) == (
        "robots.txt of https://example.com asks Harvest to wait 120 s between requests (Crawl-delay in group "
        '"harvest"), longer than HARVEST_MAX_CRAWL_DELAY=30 s; not downloaded (raise HARVEST_MAX_CRAWL_DELAY '
        "to fetch from this host that slowly)"
    )
    at_the_cap = policy_for("User-agent: harvest\nCrawl-delay: 30\n", SETTINGS.replace(max_crawl_delay=30))
    assert at_the_cap.check(parse_url("https://example.com/x.jpg")).crawl_delay == 30


class CountingLock:
    """A lock that counts how many times it was taken (the policy's, to see threads pass it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_threads_meeting_a_new_origin_fetch_its_robots_txt_once() -> None:
    threads_count = 16
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nCrawl-delay: 1\n")})
    lock = CountingLock()

    def slow_fetch(url: str) -> RobotsFile:
        # Answers only once every thread has looked in the cache (each takes the lock once to look,
        # this one included), so that all of them find this fetch under way: they must wait for it.
        deadline = time.monotonic() + DEADLINE_SECONDS
        while lock.taken < threads_count:
            assert time.monotonic() < deadline, f"only {lock.taken} threads looked in the cache"
            time.sleep(0.001)
        return fake(url)

    policy = RobotsPolicy(SETTINGS, slow_fetch)
    policy._lock = lock  # type: ignore[assignment]
    verdicts: list[RobotsVerdict] = []
    start = threading.Barrier(threads_count)

    def check() -> None:
        start.wait(DEADLINE_SECONDS)
        verdicts.append(policy.check(parse_url("https://example.com/x.jpg")))

    threads = [threading.Thread(target=check) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
    assert fake.calls == ["https://example.com/robots.txt"]
    assert [verdict.crawl_delay for verdict in verdicts] == [1.0] * threads_count


def test_a_fetcher_bug_is_raised_and_not_cached() -> None:
    calls = 0

    def broken(url: str) -> RobotsFile:
        nonlocal calls
        calls += 1
        raise KeyError("a bug in the fetcher")

    policy = RobotsPolicy(SETTINGS, broken)
    for _ in range(2):
        with pytest.raises(KeyError):
            policy.check(parse_url("https://example.com/x.jpg"))
    assert calls == 2


def test_a_ttl_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="HARVEST_ROBOTS_CACHE_TTL=0 must be a positive number"):
        RobotsPolicy(SETTINGS.replace(robots_cache_ttl=0), FakeRobots())


# --- Redis: the cache shared by every worker -------------------------------------------------------


def worker(
    fake: Callable[[str], RobotsFile], redis_client: Any, prefix: str, **settings: Any
) -> RobotsPolicy:
    """A policy as one worker process builds it (its own process cache, the shared Redis)."""
    return RobotsPolicy(SETTINGS.replace(**settings), fake, redis=redis_client, prefix=prefix)


def test_a_second_worker_reads_the_robots_txt_from_redis(redis_client: Any, prefix: str) -> None:
    text = b"User-agent: harvest\nDisallow: /private/\nCrawl-delay: 2\n"
    first_fetch = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, text)})
    second_fetch = FakeRobots()
    first = worker(first_fetch, redis_client, prefix, robots_cache_ttl=600)
    second = worker(second_fetch, redis_client, prefix, robots_cache_ttl=600)
    assert first.check(parse_url("https://example.com/x.jpg")).crawl_delay == 2
    key = f"{prefix}:robots:https://example.com"
    assert 590_000 < redis_client.pttl(key) <= 600_000
    assert redis_client.hget(key, "status") == b"200"
    assert second.check(parse_url("https://example.com/y.jpg")).crawl_delay == 2
    with pytest.raises(Blocked, match=r'rule "Disallow: /private/", group "harvest"'):
        second.check(parse_url("https://example.com/private/y.jpg"))
    assert second_fetch.calls == []
    assert first_fetch.calls == ["https://example.com/robots.txt"]


def test_an_unreachable_robots_txt_is_shared_briefly(redis_client: Any, prefix: str) -> None:
    failing = FakeRobots({"https://example.com/robots.txt": ConnectionFailed("connection reset")})
    first, second = worker(failing, redis_client, prefix), worker(FakeRobots(), redis_client, prefix)
    for policy in (first, second):
        with pytest.raises(HostUnreachable, match=r"could not be fetched \(connection reset\)"):
            policy.check(parse_url("https://example.com/x.jpg"))
    assert len(failing.calls) == 1
    assert 0 < redis_client.pttl(f"{prefix}:robots:https://example.com") <= UNREACHABLE_CACHE_SECONDS * 1000


def test_the_process_cache_follows_the_redis_expiry(redis_client: Any, prefix: str) -> None:
    clock = Clock()
    text = b"User-agent: *\nDisallow: /a/\n"
    worker(FakeRobots({"https://example.com/robots.txt": RobotsFile(200, text)}), redis_client, prefix).check(
        parse_url("https://example.com/x.jpg")
    )
    redis_client.pexpire(f"{prefix}:robots:https://example.com", 60_000)  # as if fetched a day ago
    fake = FakeRobots()
    late = RobotsPolicy(SETTINGS, fake, redis=redis_client, prefix=prefix, clock=clock)
    assert not allowed(late, "https://example.com/a/x.jpg")
    clock.now += 61  # this process's copy expires with the Redis copy it was read from...
    redis_client.delete(f"{prefix}:robots:https://example.com")  # ...which Redis has dropped by then
    assert allowed(late, "https://example.com/a/x.jpg")  # a 404 now
    assert fake.calls == ["https://example.com/robots.txt"]


def test_a_damaged_redis_entry_is_fetched_again(redis_client: Any, prefix: str) -> None:
    key = f"{prefix}:robots:https://example.com"
    redis_client.hset(key, mapping={"format": "1", "status": "200", "body": b"not zlib", "failure": ""})
    redis_client.expire(key, 600)
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /\n")})
    assert not allowed(worker(fake, redis_client, prefix), "https://example.com/x.jpg")
    assert len(fake.calls) == 1
    assert redis_client.hget(key, "body") != b"not zlib"  # overwritten with the fresh answer


def test_the_cache_stays_in_the_process_when_redis_is_down(
    refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    port = int(refused_url.split(":")[2].split("/")[0])
    unreachable = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    fake = FakeRobots({"https://example.com/robots.txt": RobotsFile(200, b"User-agent: *\nDisallow: /a/\n")})
    policy = RobotsPolicy(SETTINGS, fake, redis=unreachable, prefix="harvest-test-down")
    with caplog.at_level(logging.WARNING, logger=robots.__name__):
        assert not allowed(policy, "https://example.com/a/x.jpg")
        assert allowed(policy, "https://example.com/b/x.jpg")
        assert allowed(policy, "https://other.example/x.jpg")
    assert len(fake.calls) == 2  # one per origin: the process cache still works
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then Redis is left alone for a while
