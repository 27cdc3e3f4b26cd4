"""Which URL a fetch thread takes next: one of a host with room, in proportion to what each host has left.

A batch's URLs are grouped by host. A thread that is done asks for its next URL and gets one of the
biggest host that *has room*: not paused, not full, nobody of this process already waiting for it
(:meth:`.HostLimits.has_room`), and fewer of this batch's URLs of it in progress than its share of
the threads. A host's share is its part of the URLs left (a sixth of them: a sixth of the threads),
at least one thread and at most ``per_host``. Only when no host has room within its share does a
thread go past the shares, then past ``per_host`` to wait for a slot.

Why: with one queue, a thread that draws a URL of a full or paused host waits for its slot while
other hosts' URLs sit in the queue; on a skewed list (one host with a sixth of the URLs, eight
requests at a time) that was a third of every fetch thread's time on the realistic web
(``bench/README.md``). Shares keep the big hosts busy from the first second, so none becomes the
batch's tail on its own, without filling every small host to ``per_host`` connections at once: each
new connection costs a handshake, and a host with a few URLs left is served as fast by one kept-alive
connection. The per-host limit itself is enforced where the request is sent (:mod:`.exchange`),
whatever this order.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable

from include.harvest.hostlimits import HostLimits
from include.harvest.models import UrlItem

__all__ = ["Frontier", "host_key"]

# How many hosts without room one pick looks past before settling for a wait. Hosts without room
# are few (each has a thread of this batch in progress, or is paused), but a burst of pauses must
# not make every pick walk thousands of hosts.
MAX_HOSTS_LOOKED_AT = 256


class Frontier:
    """The URLs of one batch, handed out one at a time to its fetch threads (thread-safe)."""

    def __init__(self, items: list[UrlItem], limits: HostLimits, *, per_host: int, threads: int) -> None:
        by_host: dict[str, deque[UrlItem]] = defaultdict(deque)
        for item in items:
            by_host[host_key(item.url)].append(item)
        # Sorted once, by size: a host's rank by URLs left barely changes, as every host is worked
        # on in proportion to what it has left.
        self._pending = OrderedDict(sorted(by_host.items(), key=lambda entry: -len(entry[1])))
        self._left = len(items)
        self._in_progress: dict[str, int] = {}
        self._limits = limits
        self._per_host = per_host
        self._threads = threads
        self._lock = threading.Lock()

    def take(self) -> UrlItem | None:
        """The next URL to fetch, or None when every URL has been handed out.

        Every URL taken must be handed back to :meth:`done` once its result is filed.
        """
        with self._lock:
            if not self._pending:
                return None
            host = self._first_with_room(self._share)
            if host is None:
                host = self._first_with_room(lambda _pending: self._per_host)
            if host is None:
                host = next(iter(self._pending))  # every host is busy: wait for the biggest one's slot
            pending = self._pending[host]
            item = pending.popleft()
            if not pending:
                del self._pending[host]
            self._left -= 1
            self._in_progress[host] = self._in_progress.get(host, 0) + 1
            return item

    def _share(self, pending: deque[UrlItem]) -> int:
        """How many threads a host with ``pending`` URLs left gets: its part of the URLs left."""
        return min(self._per_host, max(1, math.ceil(self._threads * len(pending) / self._left)))

    def _first_with_room(self, allowed: Callable[[deque[UrlItem]], int]) -> str | None:
        """The biggest host with fewer than ``allowed`` of its URLs in progress and room for more."""
        for looked_at, (host, pending) in enumerate(self._pending.items()):
            if looked_at == MAX_HOSTS_LOOKED_AT:
                return None
            if self._in_progress.get(host, 0) < allowed(pending) and self._limits.has_room(host):
                return host
        return None

    def done(self, item: UrlItem) -> None:
        """``item`` (from :meth:`take`) is finished: its host's place is free for another URL."""
        host = host_key(item.url)
        with self._lock:
            left = self._in_progress[host] - 1
            if left:
                self._in_progress[host] = left
            else:
                del self._in_progress[host]


def host_key(url: str) -> str:
    """The host of ``url`` as :class:`~include.harvest.urls.Target` spells it, for the common case.

    A rough split, far cheaper than parsing every URL: user info and port dropped, lower-cased,
    IPv6 brackets removed. A URL it gets wrong (an IDN spelled in Unicode, say) only loses the
    hint: its host is then never seen as busy, and a thread may wait for its slot.
    """
    authority = url.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        return authority[1:].partition("]")[0].lower()
    return authority.partition(":")[0].lower()
