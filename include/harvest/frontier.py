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

The frontier reads its URLs from an iterator, holding at most a window of them (:data:`WINDOW`)
and reading more once half of it is handed out: a batch task's memory does not grow with its size.
The batch files are written with each host's URLs spread evenly over the file
(:func:`.planning.spread_hosts`), so any window holds the batch's mix of hosts.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from include.harvest.hostlimits import HostLimits
from include.harvest.models import UrlItem

__all__ = ["Frontier", "host_key"]

# How many hosts without room one pick looks past before settling for a wait. Hosts without room
# are few (each has a thread of this batch in progress, or is paused), but a burst of pauses must
# not make every pick walk thousands of hosts.
MAX_HOSTS_LOOKED_AT = 256
# URLs read ahead of the fetch threads: enough for the shares to see the batch's hosts (its file
# spreads each host's URLs evenly), and a few MiB of a task's memory whatever the batch's size.
WINDOW = 5000


class Frontier:
    """The URLs of one batch, handed out one at a time to its fetch threads (thread-safe)."""

    def __init__(
        self,
        items: Iterable[UrlItem],
        limits: HostLimits,
        *,
        per_host: int,
        threads: int,
        window: int | None = None,
    ) -> None:
        self._source = iter(items)
        self._window = max(window or WINDOW, 2)
        self._pending: OrderedDict[str, deque[UrlItem]] = OrderedDict()
        self._left = 0  # URLs read and not handed out yet
        self._reading = False
        self._read_all = False
        self._in_progress: dict[str, int] = {}
        self._limits = limits
        self._per_host = per_host
        self._threads = threads
        self._lock = threading.Lock()
        self._read = threading.Condition(self._lock)  # a read ahead ended
        self._read_ahead()

    def take(self) -> UrlItem | None:
        """The next URL to fetch, or None when every URL has been handed out.

        Every URL taken must be handed back to :meth:`done` once its result is filed. Reading the
        source may raise; the error is raised here, in the thread that was reading.
        """
        while True:
            self._read_ahead()
            with self._lock:
                if self._pending:
                    return self._take_one()
                if not self._reading:
                    if self._read_all:
                        return None
                    continue  # the window ran dry before anybody read ahead: read now
                self._read.wait()  # the window ran dry while a thread reads ahead: wait for it

    def _read_ahead(self) -> None:
        """Top the window up from the source once half of it is handed out.

        One thread reads, outside the lock, while the others keep taking URLs from the other half:
        the source may be a file in an object store, and the caller's generator may query Postgres.
        """
        with self._lock:
            if self._read_all or self._reading or self._left > self._window // 2:
                return
            self._reading = True
            wanted = self._window - self._left
        read: list[UrlItem] = []
        try:
            read = list(itertools.islice(self._source, wanted))
        finally:
            with self._lock:
                for item in read:
                    pending = self._pending.get(key := host_key(item.url))
                    if pending is None:
                        pending = self._pending[key] = deque()
                    pending.append(item)
                self._left += len(read)
                self._read_all = len(read) < wanted
                self._reading = False
                # Sorted by size at each read: a host's rank by URLs left barely changes between
                # two reads, as every host is worked on in proportion to what it has left.
                self._pending = OrderedDict(sorted(self._pending.items(), key=lambda entry: -len(entry[1])))
                self._read.notify_all()

    def _take_one(self) -> UrlItem:
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
