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
    choose_batch_size,
    describe_batch,
    plan_batches,
    spread_hosts,
)


def make_items(count: int, hosts: int = 7) -> list[UrlItem]:
    return [UrlItem(f"https://h{i % hosts}.example.com/{i}.jpg", i + 1) for i in range(count)]


def flatten(batches: list[list[UrlItem]]) -> list[UrlItem]:
    return [item for batch in batches for item in batch]


def test_empty_input_plans_nothing() -> None:
    assert plan_batches([]) == []


def test_small_list_is_one_batch() -> None:
    items = make_items(10)
    assert plan_batches(items) == [items]


def test_100k_items_fit_max_map_length_each_exactly_once_in_order() -> None:
    items = make_items(100_000)

    batches = plan_batches(items)

    assert 1 <= len(batches) <= DEFAULT_MAX_BATCHES
    assert flatten(batches) == items  # every item exactly once, order kept
    assert max(len(b) for b in batches) <= DEFAULT_BATCH_SIZE


def test_batches_are_balanced_not_a_tiny_straggler() -> None:
    batches = plan_batches(make_items(1001), batch_size=500)

    assert [len(b) for b in batches] == [334, 334, 333]


def test_explicit_batch_size_is_honoured() -> None:
    batches = plan_batches(make_items(2000), batch_size=250)

    assert [len(b) for b in batches] == [250] * 8


def test_size_grows_when_the_list_would_exceed_max_batches(caplog: pytest.LogCaptureFixture) -> None:
    items = make_items(5000)

    with caplog.at_level(logging.WARNING, logger="include.harvest.planning"):
        batches = plan_batches(items, batch_size=10, max_batches=16)

    assert len(batches) == 16
    assert flatten(batches) == items
    assert max(len(b) for b in batches) == 313  # ceil(5000 / 16)
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
        plan_batches(make_items(3), batch_size=batch_size, max_batches=max_batches)


def test_describe_batch_counts_urls_and_hosts() -> None:
    assert describe_batch(make_items(500, hosts=2)) == "500 urls · 2 hosts"
    assert describe_batch(make_items(1)) == "1 url · 1 host"
    assert describe_batch([]) == "0 urls · 0 hosts"


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
    plan = plan_batches(make_items(urls), worker_slots=slots)

    assert len(plan) == batches
    assert flatten(plan) == make_items(urls)
    assert all(len(batch) <= MAX_AUTO_BATCH for batch in plan)
    assert all(len(batch) >= min(urls, MIN_AUTO_BATCH) for batch in plan)


def test_an_explicit_batch_size_wins_over_the_worker_slots() -> None:
    assert len(plan_batches(make_items(2_000), batch_size=100, worker_slots=4)) == 20
    with pytest.raises(ValueError, match="worker_slots must be at least 1"):
        choose_batch_size(10, worker_slots=0)


def test_a_list_sorted_by_host_is_written_with_every_window_holding_the_batchs_mix_of_hosts():
    """A batch task reads its file a window at a time: sorted by host, a window would hold one host."""
    batch = (
        [UrlItem(f"https://big.example/{n}.jpg") for n in range(600)]
        + [UrlItem(f"https://mid.example/{n}.jpg") for n in range(300)]
        + [UrlItem(f"https://small{n}.example/x.jpg") for n in range(100)]
    )

    spread = spread_hosts(batch)

    assert sorted(item.url for item in spread) == sorted(item.url for item in batch)
    for host in ("big.example", "mid.example"):  # a host's own URLs keep their order
        own = [item.url for item in spread if f"//{host}/" in item.url]
        assert own == [item.url for item in batch if f"//{host}/" in item.url]
    for start in range(0, 1000, 100):  # every window of 100: about 60 big, 30 mid, 10 small ones
        window = Counter(urlsplit(item.url).hostname for item in spread[start : start + 100])
        small = sum(count for host, count in window.items() if host and host.startswith("small"))
        assert 57 <= window["big.example"] <= 63 and 27 <= window["mid.example"] <= 33 and 7 <= small <= 13
