"""The SVG charts: well-formed, one mark per thing shown, sized by the numbers, numbers on hover."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from include.harvest import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything a browser would not render as SVG


def segments(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "segment"]


def title_of(element: ET.Element) -> str:
    title = element.find(f"{SVG}title")
    assert title is not None and title.text
    return title.text


def test_status_bar_has_one_segment_per_status_present_sized_by_share() -> None:
    root = parse(charts.status_bar({"http_error": 25, "ok": 75, "timeout": 0}, width=400))

    segs = segments(root)
    assert [(s.get("data-status"), s.get("data-count")) for s in segs] == [("ok", "75"), ("http_error", "25")]
    assert [float(s.get("width", "0")) for s in segs] == pytest.approx([300, 100])
    assert float(segs[1].get("x", "0")) == pytest.approx(300)
    assert segs[0].get("fill") == charts.STATUS_COLORS["ok"]
    assert title_of(segs[1]) == "http_error: 25 URLs (25.0%)"


def test_status_bar_of_nothing_is_an_empty_bar() -> None:
    root = parse(charts.status_bar({}))
    assert segments(root) == []
    assert "0 URLs" in title_of(root)


def test_stacked_bars_one_bar_per_run_each_filling_the_plot() -> None:
    bars = [
        charts.Bar(
            key="r1",
            label="03-01",
            title="2026-03-01 (scheduled)",
            counts={"ok": 90, "http_error": 10},
            href="harvest/runs/a",
        ),
        charts.Bar(
            key="r2", label="03-02", title="manual <&> run", counts={"ok": 1, "timeout": 1, "rejected": 2}
        ),
        charts.Bar(key="r3", label="03-03", title="empty", counts={}),
    ]
    root = parse(charts.stacked_bars(bars, height=220))

    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bar"]
    assert [g.get("data-run") for g in groups] == ["r1", "r2", "r3"]
    assert [g.get("data-urls") for g in groups] == ["100", "4", "0"]
    first = segments(groups[0])
    assert [s.get("data-status") for s in first] == ["ok", "http_error"]
    plot_height = 220 - 8 - 34
    assert sum(float(s.get("height", "0")) for s in first) == pytest.approx(plot_height)
    assert float(first[0].get("height", "0")) == pytest.approx(plot_height * 0.9)
    # Statuses stack in the documented order, bottom up; the hover text gives the numbers.
    assert [s.get("data-status") for s in segments(groups[1])] == ["ok", "rejected", "timeout"]
    assert title_of(segments(groups[1])[1]) == "manual <&> run\nrejected: 2 of 4 URLs (50.0%)"
    assert segments(groups[2]) == []
    # A click on the first bar opens its run.
    links = list(root.iter(f"{SVG}a"))
    assert [a.get("href") for a in links] == ["harvest/runs/a"]


def test_stacked_bars_without_runs_say_so() -> None:
    assert "no data yet" in charts.stacked_bars([])
    parse(charts.stacked_bars([]))


def test_time_series_has_a_point_per_run_scaled_to_a_round_maximum() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    points = [
        charts.Point(at=start + timedelta(days=2), value=420.0, label="c"),
        charts.Point(at=start, value=100.0, label="a"),
        charts.Point(at=start + timedelta(days=1), value=0.0, label="b"),
    ]
    root = parse(charts.time_series(points, title="Throughput", unit="URLs/s", height=160))

    dots = list(root.iter(f"{SVG}circle"))
    assert [d.get("data-value") for d in dots] == ["100.000", "0.000", "420.000"]  # in time order
    top, bottom = 8, 160 - 22
    ys = [float(d.get("cy", "0")) for d in dots]
    # The axis runs to 500 (the round value above 420): 420 sits at 84% of the height.
    assert ys[1] == pytest.approx(bottom)
    assert ys[2] == pytest.approx(bottom - (bottom - top) * 420 / 500, abs=0.1)
    assert float(dots[0].get("cx", "0")) < float(dots[1].get("cx", "0")) < float(dots[2].get("cx", "0"))
    assert title_of(dots[2]) == "c: 420.0 URLs/s (2026-03-03 00:00 UTC)"
    assert [t.text for t in root.iter(f"{SVG}text")][:5] == ["0", "125", "250", "375", "500"]


def test_time_series_of_shares_runs_to_100_percent() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    root = parse(
        charts.time_series([charts.Point(at=at, value=12.5, label="r")], title="F", unit="%", percent=True)
    )
    assert [t.text for t in root.iter(f"{SVG}text")][4] == "100%"
    assert title_of(next(root.iter(f"{SVG}circle"))).startswith("r: 12.5%")


def test_time_series_without_points_say_so() -> None:
    svg = charts.time_series([], title="Throughput", unit="URLs/s")
    parse(svg)
    assert "no data yet" in svg


def test_every_status_has_its_own_colour() -> None:
    from include.harvest.models import Status

    assert set(charts.STATUS_COLORS) == set(Status)
    assert len(set(charts.STATUS_COLORS.values())) == len(Status)
    assert charts.status_legend(["timeout", "ok", "ok"]) == [
        ("ok", charts.STATUS_COLORS["ok"]),
        ("timeout", charts.STATUS_COLORS["timeout"]),
    ]
