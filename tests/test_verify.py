"""The truth checker's pure parts: folding events, comparing, the report; the listing
against the memory provider (the fake that implements the provider protocol)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from calsync.errors import ProviderRejected, RateLimited
from calsync.model import (
    Occurrence,
    ProviderOrigin,
    StatusIntent,
    Transparency,
    UnifiedEvent,
    Window,
)
from calsync.providers.base import ChangePage
from calsync.testing.memory_provider import MemoryProvider
from calsync.verify import Interval, Report, compare, fold, horizon, list_truth
from tests.conftest import SettingsFactory

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
WINDOW = Window(NOW - timedelta(days=30), NOW + timedelta(days=365))


def occurrence(
    native_id: str,
    hour: int,
    *,
    minutes: int = 30,
    status: StatusIntent = StatusIntent.BUSY,
    days: int = 1,
) -> Occurrence:
    start = NOW + timedelta(days=days, hours=hour)
    return Occurrence(
        native_id,
        start,
        start + timedelta(minutes=minutes),
        False,
        Transparency.OPAQUE,
        status,
    )


def upsert(rid: str, occ: Occurrence) -> UnifiedEvent:
    return UnifiedEvent.upsert(ProviderOrigin.GOOGLE, rid, occ, emitted_at=NOW)


def delete(rid: str, native_id: str) -> UnifiedEvent:
    return UnifiedEvent.delete(ProviderOrigin.GOOGLE, rid, native_id, emitted_at=NOW)


def interval(occ: Occurrence) -> Interval:
    return Interval.of_occurrence(occ)


# -- fold ----------------------------------------------------------------------------


def test_fold_keeps_the_last_upsert_and_drops_deleted_occurrences() -> None:
    a1, a2, b = occurrence("a", 1), occurrence("a", 2), occurrence("b", 3)
    view = fold(
        [upsert("r", a1), upsert("r", b), upsert("s", a1), upsert("r", a2), delete("r", "b")]
    )
    assert view == {"r": {"a": interval(a2)}, "s": {"a": interval(a1)}}


def test_fold_forgets_a_resource_whose_occurrences_are_all_deleted() -> None:
    view = fold([upsert("r", occurrence("a", 1)), delete("r", "a"), delete("r", "never-seen")])
    assert view == {}


def test_fold_continues_an_existing_view() -> None:
    view = fold([upsert("r", occurrence("a", 1))])
    fold([upsert("r", occurrence("b", 2))], view)
    assert sorted(view["r"]) == ["a", "b"]


def test_fold_with_a_window_drops_what_moved_out_of_it() -> None:
    inside, outside = occurrence("a", 1), occurrence("a", 0, days=-60)
    view = fold([upsert("r", inside), upsert("r", outside)], window=WINDOW)
    assert view == {}
    view = fold([upsert("r", outside), upsert("r", inside)], window=WINDOW)
    assert view == {"r": {"a": interval(inside)}}


def test_an_interval_of_an_event_equals_that_of_its_occurrence() -> None:
    occ = occurrence("a", 1, status=StatusIntent.TENTATIVE)
    assert Interval.of_event(upsert("r", occ)) == interval(occ)
    assert Interval.of_event(delete("r", "a")) is None


# -- compare and the report ------------------------------------------------------------


def test_compare_counts_missing_extra_and_stale() -> None:
    report = Report(window=WINDOW)
    same, moved, retitled = occurrence("same", 1), occurrence("moved", 2), occurrence("tent", 3)
    truth = {
        "same": interval(same),
        "moved": interval(occurrence("moved", 5)),
        "tent": interval(occurrence("tent", 3, status=StatusIntent.TENTATIVE)),
        "new": interval(occurrence("new", 4)),
    }
    view = {
        "same": interval(same),
        "moved": interval(moved),
        "tent": interval(retitled),
        "gone": interval(occurrence("gone", 6)),
    }
    compare(report, "r", truth, view)
    assert report.counts == {"missing": 1, "extra": 1, "stale": 2}
    assert report.differences == 4
    assert report.exit_code == 1
    counts = report.resources["r"]
    assert (counts.provider, counts.events) == (4, 4)
    by_id = {d.native_event_id: d for d in report.examples}
    assert by_id["new"].kind == "missing" and by_id["new"].events is None
    assert by_id["gone"].kind == "extra" and by_id["gone"].provider is None
    assert by_id["moved"].asdict()["fields"] == ["start_utc", "end_utc"]
    assert by_id["tent"].asdict()["fields"] == ["status_intent"]


def test_agreement_is_exit_code_zero() -> None:
    report = Report(window=WINDOW)
    occ = interval(occurrence("a", 1))
    compare(report, "r", {"a": occ}, {"a": occ})
    assert report.differences == 0
    assert report.exit_code == 0
    assert report.resources["r"].provider == 1


def test_errors_win_over_differences_in_the_exit_code() -> None:
    report = Report(window=WINDOW)
    compare(report, "r", {}, {"a": interval(occurrence("a", 1))})
    report.errors["s"] = "ProviderRejected: 403"
    assert report.exit_code == 2


def test_only_the_horizon_is_compared() -> None:
    report = Report(window=WINDOW)
    outside = interval(occurrence("old", 0, days=-40))
    beyond = interval(occurrence("far", 0, days=400))
    compare(report, "r", {"far": beyond}, {"old": outside})
    assert report.differences == 0
    assert (report.resources["r"].provider, report.resources["r"].events) == (0, 0)


def test_examples_are_bounded_but_counts_are_not() -> None:
    report = Report(window=WINDOW, limit=3)
    truth = {f"e{n:02d}": interval(occurrence(f"e{n:02d}", n)) for n in range(10)}
    compare(report, "r", truth, {})
    assert report.counts["missing"] == 10
    assert [d.native_event_id for d in report.examples] == ["e00", "e01", "e02"]


def test_the_report_carries_no_personal_data_and_reads_as_json_and_text() -> None:
    report = Report(window=WINDOW)
    compare(report, "room-1", {"a": interval(occurrence("a", 1))}, {})
    report.skipped["paused-room"] = "resource is paused"
    document = json.loads(report.to_json())
    assert document["counts"] == {"missing": 1, "extra": 0, "stale": 0}
    assert document["resources"]["room-1"]["missing"] == 1
    (example,) = document["examples"]
    assert set(example) == {"kind", "resource_id", "native_event_id", "provider", "events"}
    assert set(example["provider"]) == {
        "start_utc",
        "end_utc",
        "status_intent",
        "transparency",
        "is_all_day",
    }
    text = report.to_text()
    assert "missing 1, extra 0, stale 0" in text
    assert "room-1 a" in text
    assert "skipped paused-room: resource is paused" in text


def test_the_horizon_is_the_workers_shrunk_by_the_margin(make_settings: SettingsFactory) -> None:
    settings = make_settings(horizon_past_days=10, horizon_future_days=20)
    window = horizon(settings, NOW, timedelta(hours=1))
    assert window.start == NOW - timedelta(days=10) + timedelta(hours=1)
    assert window.end == NOW + timedelta(days=20) - timedelta(hours=1)


# -- listing the truth -------------------------------------------------------------------


async def test_list_truth_reads_a_full_listing_across_pages() -> None:
    provider = MemoryProvider(page_size=2)
    for n in range(5):
        provider.put(occurrence(f"e{n}", n))
    provider.put(occurrence("old", 0, days=-60))
    provider.remove("e4")
    truth = await list_truth(provider, WINDOW)
    assert sorted(truth) == ["e0", "e1", "e2", "e3"]
    assert truth["e1"] == interval(occurrence("e1", 1))


class Throttled(MemoryProvider):
    """The memory provider, throttled on its first ``throttles`` listings as a provider's
    429 with ``Retry-After`` throttles (it raises what the adapters raise)."""

    def __init__(self, throttles: int, retry_after: float) -> None:
        super().__init__()
        self.throttles = throttles
        self.retry_after = retry_after

    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        if self.throttles:
            self.throttles -= 1
            raise RateLimited("429", retry_after=self.retry_after, status=429)
        async for page in super().fetch_changes(cursor, window):
            yield page


async def test_list_truth_waits_as_long_as_a_throttling_provider_asks() -> None:
    provider = Throttled(throttles=2, retry_after=0.01)
    provider.put(occurrence("a", 1))
    assert list(await list_truth(provider, WINDOW)) == ["a"]
    assert provider.throttles == 0


async def test_list_truth_gives_up_rather_than_ask_early() -> None:
    provider = Throttled(throttles=1, retry_after=3600.0)
    with pytest.raises(RateLimited):
        await list_truth(provider, WINDOW, max_wait=1.0)


class Refusing(MemoryProvider):
    async def fetch_changes(self, cursor: str | None, window: Window) -> AsyncIterator[ChangePage]:
        raise ProviderRejected("403 forbidden", status=403)
        yield  # pragma: no cover  (an async generator)


async def test_list_truth_does_not_retry_a_refusal() -> None:
    with pytest.raises(ProviderRejected):
        await list_truth(Refusing(), WINDOW)
