"""robots.txt (RFC 9309): may Harvest fetch a URL, and how slowly.

:class:`RobotsPolicy` answers for a :class:`~include.harvest.urls.Target` before it is fetched:
:meth:`RobotsPolicy.check` returns a :class:`RobotsVerdict` (with the host's Crawl-delay, for
:mod:`.hostlimits`) or raises :class:`~include.harvest.errors.Blocked` naming the rule. Each
origin's robots.txt is fetched once, by the caller's ``fetch_robots`` (the engine's guarded
client: the address guard applies to robots.txt too), and what it answered is cached:

- per process, by origin, for ``settings.robots_cache_ttl``; the threads that meet a new origin at
  once wait for the one of them that fetches it (one fetch per origin per process);
- across workers, in Redis when ``settings.redis_url`` is set: ``<prefix>:robots:<origin>`` is a
  hash (``status``, ``body`` zlib-compressed, ``failure``) that expires with the same TTL, so a
  worker that finds it fetches nothing. If Redis fails, the process keeps its own cache for a while.

What the answer means (RFC 9309, 2.3.1): 2xx, the first :data:`MAX_ROBOTS_BYTES` are parsed; 3xx
left after the redirects the fetcher followed, or 4xx, "unavailable": everything is allowed; 5xx,
429 or no answer at all, "unreachable": everything is disallowed, and that is cached only
:data:`UNREACHABLE_CACHE_SECONDS`, so the host is asked again soon (and the next run retries the
URLs). 429 is read as unreachable, as Google does: a host that asks for fewer requests has not said
that it has no robots.txt.

Parser, by measured correctness: the 41 cases of ``tests/include/test_robots.py`` (RFC 9309's
matching rules), with Protego 0.7.0 and Python 3.11's ``urllib.robotparser``, each given the body
decoded as here (UTF-8, a BOM dropped):

- ``urllib.robotparser`` failed 11: the first matching rule wins instead of the longest (4 cases,
  Allow winning a tie among them), no ``*`` or ``$`` wildcards (3), groups of the same agent are
  not combined, ``User-agent: harv`` applies to harvest and ``Harvest/2.0`` does not, and
  /robots.txt itself can be disallowed.
- Protego passed every path case (longest match, Allow on a tie, wildcards, percent-encoding) but
  picks groups its own way: a group applies when its name occurs at a word boundary in the agent
  string, the longest name winning. Given the product token ``Harvest`` it failed 2 (``harv``
  applied to us, ``Harvest/2.0`` did not); given our full User-Agent, 2 more: groups named
  ``image`` and ``harvester``, words of its comment, applied to us.

So Protego matches the paths, and :func:`select_group` picks the group as RFC 9309 says (2.2.1:
the product token, compared case-insensitively; else ``*``; groups of that agent combined) and
hands Protego only that group's lines: all 41 cases pass.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protego import Protego

from include.harvest.errors import Blocked, DownloadError, HostUnreachable
from include.harvest.hostlimits import DEFAULT_KEY_PREFIX, REDIS_RETRY_SECONDS, redis_client
from include.harvest.settings import FetchSettings
from include.harvest.urls import Target

__all__ = [
    "MAX_ROBOTS_BYTES",
    "UNREACHABLE_CACHE_SECONDS",
    "FetchRobots",
    "RobotsFile",
    "RobotsPolicy",
    "RobotsVerdict",
    "disallowing_rule",
    "product_token",
    "robots_url",
    "select_group",
]

# RFC 9309, 2.5: crawlers MUST parse at least 500 KiB; what follows is ignored.
MAX_ROBOTS_BYTES = 500 * 1024
# An unreachable robots.txt disallows everything; asked again this soon, since the outage may end.
UNREACHABLE_CACHE_SECONDS = 300.0
# A batch meeting many hosts must not keep every robots.txt it saw: past this many origins, the
# expired ones (then the oldest) are dropped.
LOCAL_CACHE_ORIGINS = 10_000
# Bumped when the Redis hash changes shape: an entry of another version is fetched again.
CACHE_FORMAT = b"2"
# How Protego reads a user-agent line (with a colon or without, "User agent" in two words).
_USER_AGENT_FIELDS = frozenset({"user-agent", "useragent", "user agent"})
# Site-wide lines: they end no group of user-agent lines.
_SITE_WIDE_FIELDS = frozenset({"sitemap", "sitemaps", "site-map", "host"})
# RFC 9309, 2.2.1: product-token = identifier / "*", identifier = 1*(A-Z / a-z / "-" / "_").
_PRODUCT_TOKEN = re.compile(r"\*(?![A-Za-z_-])|[A-Za-z_-]*")
_ALL_AGENTS = "*"
# Failures of a robots.txt fetch that mean the host did not answer: its URLs get that status, not
# `blocked` (a guard refusal or a broken answer stays `blocked`).
_NO_ANSWER_STATUSES = frozenset({"connection_error", "timeout"})

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RobotsFile:
    """What asking for a robots.txt got: the final HTTP status (after redirects) and the body."""

    status: int
    body: bytes = b""


# GETs a robots.txt URL and returns its answer, whatever the status; raises a DownloadError
# (Timeout, ConnectionFailed, Blocked...) when there is no answer.
FetchRobots = Callable[[str], RobotsFile]


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    """robots.txt lets Harvest fetch the URL; ``crawl_delay`` (seconds) goes to the host limits."""

    crawl_delay: float | None
    reason: str  # for logs: why it is allowed


def robots_url(target: Target) -> str:
    """The robots.txt that governs ``target``: one per scheme, host and port (RFC 9309, 2.3)."""
    return f"{_origin(target)}/robots.txt"


def product_token(user_agent: str) -> str:
    """``"Harvest/0.1 (image harvester; ...)"`` -> ``"Harvest"``: the name groups are matched against."""
    match = _PRODUCT_TOKEN.match(user_agent.strip())
    return match.group() if match else ""


def select_group(text: str, agent: str) -> tuple[str | None, list[str]]:
    """The group of ``text`` that applies to the product token ``agent``: its name as written (the
    first of its user-agent lines naming us, or ``*``) and its lines other than user-agent lines.

    RFC 9309, 2.2.1: the group whose user-agent names the product token, compared
    case-insensitively (``Harvest/2.0`` names harvest, ``harvester`` does not); else the ``*``
    group; several groups for the same agent are combined. ``(None, [])`` when none applies.
    """
    ours = agent.lower()
    groups: list[tuple[list[str], list[str]]] = []  # (user-agent values, member lines)
    in_agent_lines = False
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        agent_value = _user_agent_value(line)
        if agent_value is not None:
            if not in_agent_lines:
                groups.append(([], []))
                in_agent_lines = True
            groups[-1][0].append(agent_value)
        elif groups and _field(line) not in _SITE_WIDE_FIELDS:
            # Rules before the first user-agent line belong to no group (and are dropped).
            groups[-1][1].append(line)
            in_agent_lines = False
    for wanted in (ours, _ALL_AGENTS) if ours else (_ALL_AGENTS,):
        name: str | None = None
        lines: list[str] = []
        for agents, members in groups:
            named = [value for value in agents if _product_token_of_line(value) == wanted]
            if named:
                name = name or named[0]
                lines += members
        if name is not None:
            return name, lines
    return None, []


def _user_agent_value(line: str) -> str | None:
    field_name, colon, value = line.partition(":")
    if colon and field_name.strip().lower() in _USER_AGENT_FIELDS:
        return value.strip()
    words = line.split()
    for count in (1, 2):
        if " ".join(words[:count]).lower() in _USER_AGENT_FIELDS:
            return " ".join(words[count:])
    return None


def _field(line: str) -> str:
    return line.partition(":")[0].strip().lower() if ":" in line else line.split()[0].lower()


def _product_token_of_line(value: str) -> str:
    return product_token(value).lower()


def _rule_value(line: str) -> str:
    """``"Disallow: /private/"`` -> ``"/private/"`` (also ``"Disallow /private/"``, as Protego reads it)."""
    if ":" in line:
        return line.partition(":")[2].strip()
    parts = line.split(None, 1)
    return parts[1].strip() if len(parts) > 1 else ""


def _group_parser(lines: list[str]) -> Protego:
    return Protego.parse("\n".join([f"User-agent: {_ALL_AGENTS}", *lines]))


def disallowing_rule(url: str, lines: list[str]) -> str | None:
    """The line of a group (its ``lines``) that makes it disallow ``url``, as
    ``"Disallow: <value as written>"``; None if the group allows ``url``."""
    if _group_parser(lines).can_fetch(url, _ALL_AGENTS):
        return None
    return _longest_disallow(url, _single_rules(lines))


def _single_rules(lines: list[str]) -> list[tuple[str, Protego]]:
    return [(_rule_value(line), _group_parser([line])) for line in lines]


def _longest_disallow(url: str, single_rules: list[tuple[str, Protego]]) -> str | None:
    """Which rule refused ``url``, Protego's own rules being private: each line, parsed alone, is
    asked; of those that disallow ``url`` (Disallow lines, however spelled) the longest decided, as
    in RFC 9309 (an Allow line matching as long or longer would have allowed ``url``)."""
    matching = [value for value, parser in single_rules if not parser.can_fetch(url, _ALL_AGENTS)]
    if not matching:
        return None  # cannot happen: a disallowed URL has a Disallow line that matches it
    return f"Disallow: {max(matching, key=len)}"


@dataclass(frozen=True, slots=True)
class _Answer:
    """What asking for an origin's robots.txt got: an HTTP answer, or the reason there was none."""

    status: int | None
    body: bytes = b""
    failure: str | None = None
    failure_status: str | None = None  # the Status the failure would give a URL ("timeout"...)


@dataclass(slots=True)
class _OriginRules:
    """What one origin's robots.txt means for Harvest, until ``expires_at`` (the policy's clock)."""

    origin: str
    expires_at: float
    unreachable: str | None = None  # why nothing may be fetched (a 5xx, no answer); None otherwise
    no_answer: bool = False  # unreachable because the host did not answer at all (network)
    unavailable_status: int | None = None  # a 3xx/4xx answer: no rules, everything allowed
    group: str | None = None  # the group that applies to us, as written; None: none does
    lines: list[str] = field(default_factory=list)
    parser: Protego | None = None
    crawl_delay: float | None = None
    single_rules: list[tuple[str, Protego]] | None = None  # each line parsed alone, once needed

    def disallowing_rule(self, url: str) -> str:
        """The rule that disallows ``url`` (which :attr:`parser` disallows), for the error text."""
        if self.single_rules is None:
            # Built on the first refusal (a host refusing one URL tends to refuse many); two threads
            # building it at once build the same list.
            self.single_rules = _single_rules(self.lines)
        return _longest_disallow(url, self.single_rules) or "a Disallow rule"


@dataclass(slots=True)
class _Flight:
    """One thread fetching an origin's robots.txt; the others of this process wait for it."""

    done: threading.Event = field(default_factory=threading.Event)
    rules: _OriginRules | None = None
    error: BaseException | None = None


class RobotsPolicy:
    """Whether robots.txt lets Harvest fetch a URL (see the module docstring), for every thread.

    ``fetch_robots`` GETs a robots.txt URL through the engine's guarded client and returns its
    answer (:class:`RobotsFile`, redirects followed, the body read up to :data:`MAX_ROBOTS_BYTES`)
    or raises a :class:`~include.harvest.errors.DownloadError` when there is none. ``redis`` is a
    client returning bytes; by default the one of ``settings.redis_url``, if set. ``clock`` is
    monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        settings: FetchSettings,
        fetch_robots: FetchRobots,
        *,
        redis: Any | None = None,
        prefix: str = DEFAULT_KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.robots_cache_ttl <= 0:
            raise ValueError(
                f"HARVEST_ROBOTS_CACHE_TTL={settings.robots_cache_ttl:g} must be a positive number of seconds"
            )
        self.settings = settings
        self.enabled = settings.respect_robots_txt
        self.agent = product_token(settings.user_agent)
        self.fetch_robots = fetch_robots
        self.clock = clock
        self.unreachable_ttl = min(UNREACHABLE_CACHE_SECONDS, settings.robots_cache_ttl)
        if redis is None and settings.redis_url and self.enabled:
            redis = redis_client(settings.redis_url)
        self.shared = _SharedCache(redis, prefix)
        self._lock = threading.Lock()
        self._cache: dict[str, _OriginRules] = {}
        self._flights: dict[str, _Flight] = {}

    def check(self, target: Target) -> RobotsVerdict:
        """Allow ``target`` (with its host's Crawl-delay), or raise :class:`Blocked` saying why not."""
        if not self.enabled:
            return RobotsVerdict(None, "the robots.txt check is off (HARVEST_RESPECT_ROBOTS_TXT=false)")
        if _path(target) == "/robots.txt":
            return RobotsVerdict(None, "/robots.txt is always allowed (RFC 9309, 2.2.2)")
        rules = self._rules_for(_origin(target))
        if rules.unreachable is not None and rules.no_answer:
            # A dead host is not a refusal: the URL is recorded as the network failure it is.
            raise HostUnreachable(
                f"robots.txt of {rules.origin} {rules.unreachable}; the host did not answer, so "
                "nothing was downloaded from it (the next run tries again)"
            )
        if rules.unreachable is not None:
            raise Blocked(
                f"robots.txt of {rules.origin} {rules.unreachable}, so RFC 9309 says to assume that "
                "everything on the host is disallowed; not downloaded (the next run tries again)"
            )
        if rules.parser is None:
            if rules.unavailable_status is not None:
                reason = f"robots.txt of {rules.origin} answered {rules.unavailable_status}: no rules"
            else:
                reason = f"robots.txt of {rules.origin} has no group for {self.agent or 'us'} or *"
            return RobotsVerdict(None, reason)
        if not rules.parser.can_fetch(target.url, _ALL_AGENTS):
            rule = rules.disallowing_rule(target.url)
            raise Blocked(
                f"robots.txt of {rules.origin} disallows {target.request_target} for "
                f'{self.agent or self.settings.user_agent} (rule "{rule}", group "{rules.group}"); '
                "not downloaded (HARVEST_RESPECT_ROBOTS_TXT=false turns the check off, only for your "
                "own servers)"
            )
        delay = rules.crawl_delay
        if delay is not None and delay > self.settings.max_crawl_delay:
            raise Blocked(
                f"robots.txt of {rules.origin} asks {self.agent or 'us'} to wait {delay:g} s between "
                f'requests (Crawl-delay in group "{rules.group}"), longer than '
                f"HARVEST_MAX_CRAWL_DELAY={self.settings.max_crawl_delay:g} s; not downloaded (raise "
                "HARVEST_MAX_CRAWL_DELAY to fetch from this host that slowly)"
            )
        return RobotsVerdict(delay, f'robots.txt of {rules.origin} allows it (group "{rules.group}")')

    def crawl_delay(self, target: Target) -> float | None:
        """Seconds to leave between requests to ``target``'s origin (its Crawl-delay for us), or None."""
        if not self.enabled:
            return None
        return self._rules_for(_origin(target)).crawl_delay

    def cache_key(self, origin: str) -> str:
        return self.shared.key(origin)

    def _rules_for(self, origin: str) -> _OriginRules:
        """The origin's rules from this process's cache, else loaded by one thread (single-flight)."""
        with self._lock:
            cached = self._cache.get(origin)
            if cached is not None and cached.expires_at > self.clock():
                return cached
            flight = self._flights.get(origin)
            leader = flight is None
            if flight is None:
                flight = self._flights[origin] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.rules is None:
                raise RuntimeError(f"loading robots.txt of {origin} failed") from flight.error
            return flight.rules
        try:
            flight.rules = self._load(origin)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[origin]
                if flight.rules is not None:
                    self._remember(flight.rules)
            flight.done.set()
        return flight.rules

    def _remember(self, rules: _OriginRules) -> None:
        # Called with the lock held. When full, the expired entries go, then the oldest down to
        # 90%, so that the scan is paid once per thousand new origins, not once per origin.
        if len(self._cache) >= LOCAL_CACHE_ORIGINS:
            now = self.clock()
            for origin in [o for o, r in self._cache.items() if r.expires_at <= now]:
                del self._cache[origin]
            excess = len(self._cache) - LOCAL_CACHE_ORIGINS * 9 // 10
            for origin in list(itertools.islice(self._cache, max(0, excess))):
                del self._cache[origin]  # the oldest: dict order is insertion order
        self._cache.pop(rules.origin, None)  # re-inserted last, as the newest
        self._cache[rules.origin] = rules

    def _load(self, origin: str) -> _OriginRules:
        shared = self.shared.read(origin)
        if shared is not None:
            answer, seconds_left = shared
            return self._interpret(origin, answer, self.clock() + seconds_left)
        answer = self._ask(origin)
        rules = self._interpret(origin, answer, 0.0)
        ttl = self.unreachable_ttl if rules.unreachable is not None else self.settings.robots_cache_ttl
        rules.expires_at = self.clock() + ttl
        self.shared.write(origin, answer, ttl)
        return rules

    def _ask(self, origin: str) -> _Answer:
        try:
            fetched = self.fetch_robots(f"{origin}/robots.txt")
        except DownloadError as exc:
            if exc.http_status is not None and not 200 <= exc.http_status < 300:
                return _Answer(exc.http_status)  # a fetcher that raises on error statuses
            # No answer, or a 2xx whose body never came (read timeout, cut short...): no rules read,
            # and none guessed.
            return _Answer(None, failure=str(exc), failure_status=str(exc.status))
        return _Answer(fetched.status, _truncate(fetched.body))

    def _interpret(self, origin: str, answer: _Answer, expires_at: float) -> _OriginRules:
        status = answer.status
        if status is None:
            return _OriginRules(
                origin,
                expires_at,
                unreachable=f"could not be fetched ({answer.failure})",
                no_answer=answer.failure_status in _NO_ANSWER_STATUSES,
            )
        if 300 <= status < 500 and status != 429:
            return _OriginRules(origin, expires_at, unavailable_status=status)
        if not 200 <= status < 300:
            return _OriginRules(origin, expires_at, unreachable=f"answered {status}")
        text = answer.body.decode("utf-8-sig", errors="replace")  # a BOM is not part of a line
        group, lines = select_group(text, self.agent)
        if group is None:
            return _OriginRules(origin, expires_at)
        parser = _group_parser(lines)
        # Protego indexes its rules on the first query: made here, by the one thread that loads,
        # not raced by every thread that reads these rules.
        parser.can_fetch(f"{origin}/", _ALL_AGENTS)
        delay = parser.crawl_delay(_ALL_AGENTS)
        return _OriginRules(
            origin, expires_at, group=group, lines=lines, parser=parser, crawl_delay=delay or None
        )


class _SharedCache:
    """The robots.txt answers every worker shares, in Redis (see the module docstring); when Redis
    fails, each process relies on its own cache for :data:`REDIS_RETRY_SECONDS`."""

    def __init__(self, redis: Any | None, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._redis_errors: tuple[type[Exception], ...] = (OSError,)
        if redis is not None:
            from redis.exceptions import RedisError  # here: importing redis is slow, and optional

            self._redis_errors = (RedisError, OSError)
        self._redis_down_until = 0.0

    def key(self, origin: str) -> str:
        return f"{self.prefix}:robots:{origin}"

    def read(self, origin: str) -> tuple[_Answer, float] | None:
        """The answer another worker (or this one) cached in Redis, with its seconds left."""
        if self.redis is None or not self._redis_up():
            return None
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.key(origin))
            pipe.pttl(self.key(origin))
            fields, ttl_ms = pipe.execute()
        except self._redis_errors as exc:
            self._redis_failed(exc)
            return None
        if not fields or int(ttl_ms) <= 0 or fields.get(b"format") != CACHE_FORMAT:
            return None
        try:
            status = fields[b"status"].decode()
            failure = fields[b"failure"].decode()
            failure_status = fields[b"failure_status"].decode()
            answer = _Answer(
                int(status) if status else None,
                zlib.decompress(fields[b"body"]),
                failure or None,
                failure_status or None,
            )
        except (KeyError, ValueError, zlib.error):
            return None  # damaged: fetched again, and overwritten
        return answer, int(ttl_ms) / 1000

    def write(self, origin: str, answer: _Answer, ttl: float) -> None:
        if self.redis is None or not self._redis_up():
            return
        key = self.key(origin)
        try:
            # One transaction: the hash never exists without its expiry.
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    "format": CACHE_FORMAT,
                    "status": "" if answer.status is None else str(answer.status),
                    "body": zlib.compress(answer.body),
                    "failure": answer.failure or "",
                    "failure_status": answer.failure_status or "",
                },
            )
            pipe.pexpire(key, max(1, int(ttl * 1000)))
            pipe.execute()
        except self._redis_errors as exc:
            self._redis_failed(exc)

    def _redis_failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning(
                "Redis unavailable (%s): robots.txt is cached for this process only for the next %.0fs",
                exc,
                REDIS_RETRY_SECONDS,
            )
        # Each failing call costs connect timeouts: stop asking for a while.
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _redis_up(self) -> bool:
        return time.monotonic() >= self._redis_down_until


def _origin(target: Target) -> str:
    return f"{target.scheme}://{target.host_header}"


def _path(target: Target) -> str:
    return target.request_target.partition("?")[0]


def _truncate(body: bytes) -> bytes:
    """The first :data:`MAX_ROBOTS_BYTES` of ``body``, without a last line cut in the middle."""
    if len(body) <= MAX_ROBOTS_BYTES:
        return body
    head = body[:MAX_ROBOTS_BYTES]
    end = max(head.rfind(b"\n"), head.rfind(b"\r"))
    return head[: end + 1]
