"""Which URL a fetch thread takes next: one whose host has a free slot, the busiest host first.

A batch's URLs are grouped by host. A thread that is done asks for its next URL and gets the first
URL of the host with the most URLs left *that has room* (:meth:`.HostLimits.has_room`: not paused,
not full, nobody of this process already waiting for it, and fewer than ``per_host`` of this
batch's URLs of it in progress). Only when no host with URLs left has room does it get one of a
full host, and wait for the slot.

Why: with one queue, a thread that draws a URL of a full or paused host waits for its slot while
other hosts' URLs sit in the queue. On a skewed list (one host with a sixth of the URLs, eight
requests at a time) that was a third of every fetch thread's time on the realistic web. Busiest
host first keeps that host's slots busy from the first second, so it does not become the batch's
tail on its own. The per-host limit itself is enforced where the request is sent
(:mod:`.exchange`), whatever this order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict, deque

from include.harvest.hostlimits import HostLimits
from include.harvest.models import UrlItem

__all__ = ["Frontier", "host_key"]

# How many hosts without room one pick looks past before settling for a wait. Hosts without room
# are few (each holds per_host threads, or one waiting thread), but a burst of pauses must not make
# every pick walk thousands of hosts.
MAX_HOSTS_LOOKED_AT = 256


class Frontier:
    """The URLs of one batch, handed out one at a time to its fetch threads (thread-safe)."""

    def __init__(self, items: list[UrlItem], limits: HostLimits, *, per_host: int) -> None:
        by_host: dict[str, deque[UrlItem]] = defaultdict(deque)
        for item in items:
            by_host[host_key(item.url)].append(item)
        # Sorted once, by size: the biggest hosts are started first and their slots kept busy.
        self._pending = OrderedDict(sorted(by_host.items(), key=lambda entry: -len(entry[1])))
        self._in_progress: dict[str, int] = {}
        self._limits = limits
        self._per_host = per_host
        self._lock = threading.Lock()

    def take(self) -> UrlItem | None:
        """The next URL to fetch, or None when every URL has been handed out.

        Every URL taken must be handed back to :meth:`done` once its result is filed.
        """
        with self._lock:
            chosen = None
            for looked_at, host in enumerate(self._pending):
                if looked_at == MAX_HOSTS_LOOKED_AT:
                    break
                if self._in_progress.get(host, 0) < self._per_host and self._limits.has_room(host):
                    chosen = host
                    break
            if chosen is None:
                chosen = next(iter(self._pending), None)  # every host is busy: wait on the biggest
                if chosen is None:
                    return None
            pending = self._pending[chosen]
            item = pending.popleft()
            if not pending:
                del self._pending[chosen]
            self._in_progress[chosen] = self._in_progress.get(chosen, 0) + 1
            return item

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
