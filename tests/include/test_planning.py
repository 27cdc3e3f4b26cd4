from __future__ import annotations

import logging
from collections import Counter
from urllib.parse import urlsplit

import pytest

from include.harvest.models import UrlItem
from include.harvest.planning import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCHES,
    MAX_AUTO_BATCH,
    MIN_AUTO_BATCH,
    HostSpread,
    batch_lengths,
    choose_batch_size,
    describe_batch,
)


def make_items(count: int, hosts: int = 7) -> list[UrlItem]:
    return [UrlItem(f"https://h{i % hosts}.example.com/{i}.jpg", i + 1) for i in range(count)]


def test_empty_input_plans_nothing() -> None:
    assert batch_lengths(0) == []


def test_small_list_is_one_batch() -> None:
    assert batch_lengths(10) == [10]


def test_100k_urls_fit_max_map_length_each_exactly_once() -> None:
    lengths = batch_lengths(100_000)

    assert 1 <= len(lengths) <= DEFAULT_MAX_BATCHES
    assert sum(lengths) == 100_000  # every URL in exactly one batch
    assert max(lengths) <= DEFAULT_BATCH_SIZE


def test_batches_are_balanced_not_a_tiny_straggler() -> None:
    assert batch_lengths(1001, batch_size=500) == [334, 334, 333]


def test_explicit_batch_size_is_honoured() -> None:
    assert batch_lengths(2000, batch_size=250) == [250] * 8


def test_size_grows_when_the_list_would_exceed_max_batches(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="include.harvest.planning"):
        lengths = batch_lengths(5000, batch_size=10, max_batches=16)

    assert len(lengths) == 16
    assert sum(lengths) == 5000
    assert max(lengths) == 313  # ceil(5000 / 16)
    assert "batch_size 10 would make 500 batches" in caplog.text
    assert "using batches of 313" in caplog.text


def test_a_very_large_list_grows_the_default_size_silently(caplog: pytest.LogCaptureFixture) -> None:
    count = DEFAULT_BATCH_SIZE * 4 + 1
    with caplog.at_level(logging.WARNING, logger="include.harvest.planning"):
        assert choose_batch_size(count, max_batches=4) == DEFAULT_BATCH_SIZE + 1
    assert caplog.text == ""


@pytest.mark.parametrize(("batch_size", "max_batches"), [(0, 10), (-5, 10), (10, 0)])
def test_nonsense_limits_are_refused(batch_size: int, max_batches: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        batch_lengths(3, batch_size=batch_size, max_batches=max_batches)


@pytest.mark.parametrize(
    ("items", "label"),
    [
        (make_items(500, hosts=2), "500 urls · 2 hosts"),
        (make_items(1), "1 url · 1 host"),
        ([], "0 urls · 0 hosts"),
    ],
)
def test_a_batch_is_labelled_with_its_urls_and_hosts(items: list[UrlItem], label: str) -> None:
    with HostSpread(items) as batch:
        assert describe_batch(batch.urls, batch.hosts) == label


@pytest.mark.parametrize(
    ("urls", "slots", "batches"),
    [
        (20_000, 4, 4),  # one wave over 4 slots, 5,000 URLs each (was 20 task life cycles)
        (100_000, 4, 4),  # one per slot: 25,000 URLs each (was 100 batches at a fixed 1,000)
        (400_000, 4, 8),  # capped at 50,000 URLs a batch: two waves
        (220_000, 4, 8),  # two whole waves of 27,500, not four batches of 50,000 and one alone
        (100_000, 16, 16),  # more slots, more batches: one per slot
        (2_000, 4, 4),  # never under 500 URLs: a batch must cost more to fetch than to schedule
        (1_000, 4, 2),
        (28, 4, 1),
    ],
)
def test_without_a_batch_size_batches_are_sized_from_the_list_and_the_worker_slots(
    urls: int, slots: int, batches: int
) -> None:
    lengths = batch_lengths(urls, worker_slots=slots)

    assert len(lengths) == batches
    assert sum(lengths) == urls
    assert all(length <= MAX_AUTO_BATCH for length in lengths)
    assert all(length >= min(urls, MIN_AUTO_BATCH) for length in lengths)


def test_an_explicit_batch_size_wins_over_the_worker_slots() -> None:
    assert len(batch_lengths(2_000, batch_size=100, worker_slots=4)) == 20
    with pytest.raises(ValueError, match="worker_slots must be at least 1"):
        choose_batch_size(10, worker_slots=0)


def test_a_list_sorted_by_host_is_written_with_every_window_holding_the_batchs_mix_of_hosts():
    """A batch task reads its file a window at a time: sorted by host, a window would hold one host."""
    batch = (
        [UrlItem(f"https://big.example/{n}.jpg") for n in range(600)]
        + [UrlItem(f"https://mid.example/{n}.jpg") for n in range(300)]
        + [UrlItem(f"https://small{n}.example/x.jpg") for n in range(100)]
    )

    with HostSpread(batch) as spread_batch:
        spread = list(spread_batch)

    assert sorted(item.url for item in spread) == sorted(item.url for item in batch)
    for host in ("big.example", "mid.example"):  # a host's own URLs keep their order
        own = [item.url for item in spread if f"//{host}/" in item.url]
        assert own == [item.url for item in batch if f"//{host}/" in item.url]
    for start in range(0, 1000, 100):  # every window of 100: about 60 big, 30 mid, 10 small ones
        window = Counter(urlsplit(item.url).hostname for item in spread[start : start + 100])
        small = sum(count for host, count in window.items() if host and host.startswith("small"))
        assert 57 <= window["big.example"] <= 63 and 27 <= window["mid.example"] <= 33 and 7 <= small <= 13


def test_a_spread_batch_keeps_each_urls_line_and_columns() -> None:
    """A URL's line and CSV columns go with it, an undecodable byte of the list's columns included."""
    batch = [
        UrlItem("https://a.example/1.jpg", 3, {"caption": "caf\udce9", "id": "7"}),
        UrlItem("https://b.example/2.jpg", 5, None),
        UrlItem("https://a.example/3.jpg", 9, {}),
    ]

    with HostSpread(batch) as spread:
        assert (spread.urls, spread.hosts) == (3, 2)
        assert sorted(spread, key=lambda item: item.line or 0) == batch
