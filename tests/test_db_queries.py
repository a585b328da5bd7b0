"""Queries checked against answers worked out by hand from a small, known history.

The history (line/station, day, verdict, counted predictions; reviews):
  p1 A day1 fail  scratch            confirmed scratch         -> defective, caught
  p2 A day1 pass  -                  missed inclusion          -> defective, missed
  p3 A day1 fail  scratch            false call                -> good, false call
  p4 A day2 pass  -                  good part                 -> good
  p5 B day2 pass  -                  missed scratch            -> defective, missed
  p6 B day2 fail  inclusion (+ scratch below threshold)        -> defective, caught
                                     confirmed inclusion
  p7 B day2 error                    -                         -> not counted
  p8 B day2 fail  patches            no review                 -> not in rates
  p9 A day2 fail  scratch (model 2)  good part + confirmed scratch -> defective, caught
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from db.models import (
    Inspection,
    InspectionRun,
    ModelKind,
    ModelVersion,
    Part,
    Prediction,
    ProductionLine,
    Review,
    ReviewKind,
    Station,
    Verdict,
)
from db.queries import (
    Filters,
    ParetoRow,
    daily_volume,
    defect_pareto,
    inspection_rows,
    latency_by_grid,
    latency_histogram,
    latency_summary,
    minute_volume,
    model_usage,
    percentile,
    rates,
    reviewed_of_judged,
    run_rows,
    run_throughput,
    source_rows,
    station_activity,
)

DAY1 = datetime(2026, 1, 5, 8, 0)
DAY2 = datetime(2026, 1, 6, 8, 0)


@pytest.fixture
def history(session):  # type: ignore[no-untyped-def]
    line_a, line_b = ProductionLine(name="A"), ProductionLine(name="B")
    station_a, station_b = Station(line=line_a, name="A1"), Station(line=line_b, name="B1")
    models = [
        ModelVersion(
            name=f"m{i}",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="x.pt",
            sha256="0" * 64,
        )
        for i in (1, 2)
    ]
    session.add_all([line_a, line_b, station_a, station_b, *models])
    session.flush()
    run = InspectionRun(line_id=line_a.id, station_id=station_a.id, operator="qa", started_at=DAY1)
    session.add(run)
    session.flush()

    def add_part(
        n: int,
        station: Station,
        when: datetime,
        verdict: Verdict,
        predictions: list[tuple[str, bool]],
        reviews: list[tuple[ReviewKind, str | None]],
        model: ModelVersion = models[0],
        latency: float | None = None,
    ) -> None:
        part = Part(
            content_hash=f"{n:064d}",
            stored_path=f"images/{n}.png",
            size_bytes=100,
            line_id=station.line_id,
            station_id=station.id,
            captured_at=when,
        )
        session.add(part)
        session.flush()
        inspection = Inspection(
            part_id=part.id,
            model_version_id=model.id,
            verdict=verdict,
            latency_ms=latency
            if latency is not None
            else (None if verdict == Verdict.ERROR else n * 10.0),
            inspected_at=when,
            run_id=run.id if n <= 3 else None,
            error="cannot decode" if verdict == Verdict.ERROR else None,
        )
        for class_name, counted in predictions:
            inspection.predictions.append(
                Prediction(
                    class_name=class_name, confidence=0.8 if counted else 0.2, counted=counted
                )
            )
        session.add(inspection)
        session.flush()
        for kind, class_name in reviews:
            # (A verdict's detection is reviewed as itself, as the Review page does it.)
            about = next(
                (
                    p
                    for p in inspection.predictions
                    if kind in (ReviewKind.CONFIRMED_DEFECT, ReviewKind.FALSE_CALL)
                    and p.class_name == class_name
                ),
                None,
            )
            session.add(
                Review(
                    part=part,
                    prediction_id=about.id if about else None,
                    kind=kind,
                    class_name=class_name,
                    reviewer="qa",
                )
            )

    R = ReviewKind
    add_part(
        1, station_a, DAY1, Verdict.FAIL, [("scratch", True)], [(R.CONFIRMED_DEFECT, "scratch")]
    )
    add_part(
        2,
        station_a,
        DAY1 + timedelta(seconds=10),
        Verdict.PASS,
        [],
        [(R.MISSED_DEFECT, "inclusion")],
    )
    add_part(
        3,
        station_a,
        DAY1 + timedelta(seconds=30),
        Verdict.FAIL,
        [("scratch", True)],
        [(R.FALSE_CALL, "scratch")],
    )
    add_part(4, station_a, DAY2, Verdict.PASS, [], [(R.GOOD_PART, None)])
    add_part(5, station_b, DAY2, Verdict.PASS, [], [(R.MISSED_DEFECT, "scratch")])
    add_part(
        6,
        station_b,
        DAY2,
        Verdict.FAIL,
        [("inclusion", True), ("scratch", False)],
        [(R.CONFIRMED_DEFECT, "inclusion")],
    )
    add_part(7, station_b, DAY2, Verdict.ERROR, [], [])
    add_part(8, station_b, DAY2, Verdict.FAIL, [("patches", True)], [])
    add_part(
        9,
        station_a,
        DAY2 + timedelta(hours=1),
        Verdict.FAIL,
        [("scratch", True)],
        [(R.GOOD_PART, None), (R.CONFIRMED_DEFECT, "scratch")],
        model=models[1],
    )
    session.commit()
    return {"line_a": line_a, "line_b": line_b, "models": models, "run": run}


def _counts(row) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    return (row.n_defective, row.n_missed, row.n_good, row.n_false_calls)


def test_overall_rates(session, history) -> None:  # type: ignore[no-untyped-def]
    [row] = rates(session)
    assert _counts(row) == (5, 2, 2, 1)
    assert row.miss_rate == pytest.approx(0.4)
    assert row.false_call_rate == pytest.approx(0.5)


def test_rates_per_day(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = rates(session, group_by="day")
    assert [r.key for r in rows] == [date(2026, 1, 5), date(2026, 1, 6)]
    assert [_counts(r) for r in rows] == [(2, 1, 1, 1), (3, 1, 1, 0)]


def test_rates_per_line_and_station(session, history) -> None:  # type: ignore[no-untyped-def]
    by_line = {r.key: _counts(r) for r in rates(session, group_by="line")}
    assert by_line == {"A": (3, 1, 2, 1), "B": (2, 1, 0, 0)}
    by_station = {r.key: _counts(r) for r in rates(session, group_by="station")}
    assert by_station == {"A / A1": (3, 1, 2, 1), "B / B1": (2, 1, 0, 0)}
    [b_only] = rates(session, Filters(line_id=history["line_b"].id))
    assert b_only.false_call_rate is None and b_only.miss_rate == pytest.approx(0.5)


def test_rates_per_station_keep_two_lines_stations_of_one_name_apart(session, history) -> None:  # type: ignore[no-untyped-def]
    """Grouped by the station's name alone, a station "A1" of line B merged with line A's:
    one row of both lines' parts."""
    line_b = history["line_b"]
    also_a1 = Station(line=line_b, name="A1")
    session.add(also_a1)
    session.flush()
    part = Part(
        content_hash=f"{10:064d}",
        stored_path="images/10.png",
        size_bytes=100,
        line_id=line_b.id,
        station_id=also_a1.id,
        captured_at=DAY2,
    )
    session.add(part)
    session.flush()
    session.add(Inspection(part_id=part.id, verdict=Verdict.PASS, inspected_at=DAY2))
    session.add(Review(part=part, kind=ReviewKind.GOOD_PART, reviewer="qa"))
    session.commit()
    by_station = {r.key: _counts(r) for r in rates(session, group_by="station")}
    assert by_station == {
        "A / A1": (3, 1, 2, 1),
        "B / A1": (0, 0, 1, 0),
        "B / B1": (2, 1, 0, 0),
    }


def test_reviewed_of_judged_counts_the_rates_parts(session, history) -> None:  # type: ignore[no-untyped-def]
    # Judged: every part but p7 (an error); reviewed: all of those but p8. A class chosen
    # changes neither (the rates look at every verdict of the range for it).
    assert reviewed_of_judged(session) == (7, 8)
    assert reviewed_of_judged(session, Filters(class_name="scratch")) == (7, 8)
    assert reviewed_of_judged(session, Filters(line_id=history["line_b"].id)) == (2, 3)
    [overall] = rates(session)
    assert overall.n_defective + overall.n_good == 7


def test_rates_per_class(session, history) -> None:  # type: ignore[no-untyped-def]
    by_class = {r.key: _counts(r) for r in rates(session, group_by="class")}
    assert by_class == {"inclusion": (2, 1, 2, 0), "scratch": (3, 1, 2, 1)}
    [scratch] = rates(session, Filters(class_name="scratch"))
    assert _counts(scratch) == (3, 1, 2, 1)


def test_rates_per_model_version_and_time_range(session, history) -> None:  # type: ignore[no-untyped-def]
    m1, m2 = history["models"]
    by_model = {r.key: _counts(r) for r in rates(session, group_by="model_version")}
    assert by_model == {m1.id: (4, 2, 2, 1), m2.id: (1, 0, 0, 0)}
    [day2] = rates(session, Filters(start=datetime(2026, 1, 6)))
    assert _counts(day2) == (3, 1, 1, 0)
    assert rates(session, Filters(end=datetime(2026, 1, 5))) == []


def test_defect_pareto(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = defect_pareto(session)
    assert [(r.class_name, r.failed_parts) for r in rows] == [
        ("scratch", 3),
        ("inclusion", 1),
        ("patches", 1),
    ]
    assert [r.cumulative_share for r in rows] == pytest.approx([0.6, 0.8, 1.0])


def test_daily_volume(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = daily_volume(session)
    assert [(r.day, r.inspected, r.failed, r.errors) for r in rows] == [
        (date(2026, 1, 5), 3, 2, 0),
        (date(2026, 1, 6), 6, 3, 1),
    ]


def test_latency_summary(session, history) -> None:  # type: ignore[no-untyped-def]
    summary = latency_summary(session)
    assert summary.count == 8
    assert summary.mean_ms == pytest.approx(47.5)
    assert (summary.p50_ms, summary.p99_ms, summary.max_ms) == (40.0, 90.0, 90.0)
    assert latency_summary(session, Filters(start=datetime(2030, 1, 1))).count == 0


def test_latency_counts_each_part_at_its_deciding_verdict_a_candidates_with_it_picked(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    # The candidate's 5 ms verdicts of p1 to p8 were ranked with m1's and m2's: 15 verdicts
    # of 9 parts, p50 5 ms, the plant's line read as twice as fast.
    candidate = _candidate_judges_parts_1_to_8(session)
    summary = latency_summary(session)
    assert (summary.count, summary.p50_ms, summary.max_ms) == (8, 40.0, 90.0)  # as before it
    [plant] = latency_by_grid(session)
    assert plant.summary == summary and sum(plant.counts) == 8
    own = latency_summary(session, Filters(model_version_id=candidate.id))
    assert (own.count, own.p50_ms, own.max_ms) == (8, 5.0, 5.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_run_throughput(session, history) -> None:  # type: ignore[no-untyped-def]
    result = run_throughput(session, history["run"].id)
    assert (result.parts, result.failed, result.errors) == (3, 2, 0)
    assert result.seconds == pytest.approx(30.0)
    assert result.parts_per_second == pytest.approx(0.1)
    with pytest.raises(LookupError):
        run_throughput(session, 999)


def test_model_usage(session, history) -> None:  # type: ignore[no-untyped-def]
    usage = model_usage(session)
    assert [(u.model_name, u.inspections) for u in usage] == [("m1", 8), ("m2", 1)]
    assert usage[1].first_at == DAY2 + timedelta(hours=1)


def test_a_verdict_given_again_replaces_the_earlier_one_in_the_figures(session, history) -> None:  # type: ignore[no-untyped-def]
    # p2 (a missed inclusion) judged again by the same model after a recalibration: caught.
    m1 = history["models"][0]
    earlier = session.scalars(
        select(Inspection).join(Part).where(Part.content_hash == f"{2:064d}")
    ).one()
    earlier.superseded_at = DAY2
    again = Inspection(
        part_id=earlier.part_id, model_version_id=m1.id, verdict=Verdict.FAIL, inspected_at=DAY2
    )
    again.predictions.append(Prediction(class_name="inclusion", confidence=0.5, counted=True))
    session.add(again)
    session.commit()
    [row] = rates(session)
    assert _counts(row) == (5, 1, 2, 1)  # was (5, 2, 2, 1)
    by_class = {r.key: _counts(r) for r in rates(session, group_by="class")}
    assert by_class["inclusion"] == (2, 0, 2, 0)
    [everything] = rates(session, Filters(include_superseded=True))
    assert _counts(everything) == (6, 2, 2, 1)  # both verdicts of p2, as recorded
    # p2 keeps its day (it was captured on the 5th): its new verdict counts there, not on the
    # day it was given.
    assert [(v.day, v.inspected, v.failed) for v in daily_volume(session)] == [
        (date(2026, 1, 5), 3, 3),
        (date(2026, 1, 6), 6, 3),
    ]
    assert [_counts(r) for r in rates(session, group_by="day")] == [(2, 0, 1, 1), (3, 1, 1, 0)]
    [day2] = rates(session, Filters(start=datetime(2026, 1, 6)))
    assert _counts(day2) == (3, 1, 1, 0)  # p2's new verdict is not a part of the 6th
    # The download keeps both verdicts of p2, the earlier one marked.
    assert len(inspection_rows(session)) == 9
    record = inspection_rows(session, Filters(include_superseded=True))
    assert len(record) == 10
    assert [r["verdict"] for r in record if r["superseded_at"] is not None] == ["pass"]
    assert {r["captured_at"] for r in record if r["content_hash"] == f"{2:064d}"} == {
        DAY1 + timedelta(seconds=10)
    }


def _candidate_judges_parts_1_to_8(session) -> ModelVersion:  # type: ignore[no-untyped-def]
    """A candidate (m3) judges parts 1 to 8 of `history` after m1 did (`defects batch --model
    m3`): each then holds two current verdicts. The candidate passes p1 (a missed scratch by
    its count), fails p4 (a false call) and p7 (m1's error), and finds nothing on p8."""
    candidate = ModelVersion(
        name="m3",
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        file_path="x.pt",
        sha256="0" * 64,
    )
    session.add(candidate)
    session.flush()
    parts = {
        int(p.content_hash): p
        for p in session.scalars(select(Part).where(Part.content_hash <= f"{8:064d}"))
    }
    later = timedelta(days=3)
    fails = {3: "scratch", 4: "scratch", 6: "inclusion", 7: "scratch"}
    for n, part in parts.items():
        again = Inspection(
            part_id=part.id,
            model_version_id=candidate.id,
            verdict=Verdict.FAIL if n in fails else Verdict.PASS,
            latency_ms=5.0,
            inspected_at=DAY2 + later,
        )
        if n in fails:
            again.predictions.append(Prediction(class_name=fails[n], confidence=0.9, counted=True))
        session.add(again)
    session.commit()
    return candidate


def test_a_candidates_verdicts_beside_productions_leave_each_part_counted_once(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    candidate = _candidate_judges_parts_1_to_8(session)
    # The plant's figures: each part once, at the verdict of the model that judged it first,
    # as before the candidate ran.
    [row] = rates(session)
    assert _counts(row) == (5, 2, 2, 1)
    assert reviewed_of_judged(session) == (7, 8)
    assert [(v.day, v.inspected, v.failed, v.errors) for v in daily_volume(session)] == [
        (date(2026, 1, 5), 3, 2, 0),
        (date(2026, 1, 6), 6, 3, 1),
    ]
    assert [(r.class_name, r.failed_parts) for r in defect_pareto(session)] == [
        ("scratch", 3),
        ("inclusion", 1),
        ("patches", 1),
    ]
    by_class = {r.key: _counts(r) for r in rates(session, group_by="class")}
    assert by_class == {"inclusion": (2, 1, 2, 0), "scratch": (3, 1, 2, 1)}
    # The candidate's own: p1, p2, p5 missed of the defective p1 p2 p5 p6; both good parts
    # (p3, whose scratch reviewers called a false call, and p4) failed; p7 judged, not reviewed.
    [own] = rates(session, Filters(model_version_id=candidate.id))
    assert _counts(own) == (4, 3, 2, 2)
    assert reviewed_of_judged(session, Filters(model_version_id=candidate.id)) == (6, 8)
    assert [
        (v.inspected, v.failed, v.errors)
        for v in daily_volume(session, Filters(model_version_id=candidate.id))
    ] == [(3, 1, 0), (5, 3, 0)]
    by_model = {r.key: _counts(r) for r in rates(session, group_by="model_version")}
    assert by_model[candidate.id] == (4, 3, 2, 2)
    assert by_model[history["models"][0].id] == (4, 2, 2, 1)


def test_the_download_marks_each_parts_deciding_verdict_to_rebuild_the_plants_rates(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    # With no model picked the download lists m1's and the candidate's current verdicts of
    # p1 to p8, nothing saying which of the two the rates counted.
    candidate = _candidate_judges_parts_1_to_8(session)
    rows = inspection_rows(session, Filters(include_superseded=True))
    deciding = [r for r in rows if r["deciding"]]
    # Each part once, at the verdict of the model that judged it first (m1, or m2 for p9
    # on), never at the candidate's.
    assert sorted(int(r["content_hash"]) for r in deciding) == sorted(
        int(r["content_hash"]) for r in rows if r["model"] != candidate.name
    )
    assert len(deciding) == len({r["content_hash"] for r in rows}) < len(rows)
    counted = [r for r in deciding if r["verdict"] != "error"]
    defective = [r for r in counted if r["reviewed"] == "defective"]
    good = [r for r in counted if r["reviewed"] == "good"]
    rebuilt = (
        len(defective),
        sum(r["verdict"] == "pass" for r in defective),
        len(good),
        sum(r["verdict"] == "fail" for r in good),
    )
    [row] = rates(session)
    assert rebuilt == _counts(row) == (5, 2, 2, 1)
    # A verdict superseded by its model's later one is not the deciding one.
    p2 = session.scalars(select(Part).where(Part.content_hash == f"{2:064d}")).one()
    first = session.scalars(
        select(Inspection).where(
            Inspection.part_id == p2.id, Inspection.model_version_id == history["models"][0].id
        )
    ).one()
    first.superseded_at = DAY2
    session.flush()
    session.add(
        Inspection(
            part_id=p2.id,
            model_version_id=first.model_version_id,
            verdict=Verdict.FAIL,
            inspected_at=DAY2,
        )
    )
    session.commit()
    p2_rows = [
        (r["model"], r["verdict"], r["superseded_at"] is not None, r["deciding"])
        for r in inspection_rows(session, Filters(include_superseded=True))
        if int(r["content_hash"]) == 2
    ]
    assert sorted(p2_rows) == [
        ("m1", "fail", False, True),
        ("m1", "pass", True, False),
        ("m3", "pass", False, False),
    ]


def test_inspection_rows_name_each_parts_counted_classes(
    session, history, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import db.queries as queries

    monkeypatch.setattr(queries, "_IN_LIST", 2)  # the classes looked up over several IN lists
    rows = inspection_rows(session)
    by_part = {int(r["content_hash"]): r["defects"] for r in rows}
    # p6's scratch was not counted; p7 is an error; the passed parts have none.
    assert by_part == {
        1: "scratch",
        2: "",
        3: "scratch",
        4: "",
        5: "",
        6: "inclusion",
        7: "",
        8: "patches",
        9: "scratch",
    }
    assert int(rows[0]["content_hash"]) == 9 and rows[0]["model"] == "m2"  # newest first
    assert rows[0]["line"] == "A" and rows[0]["station"] == "A1"
    scratched = inspection_rows(session, Filters(class_name="scratch"))
    assert sorted(int(r["content_hash"]) for r in scratched) == [1, 3, 5, 9]  # p5: its escape
    assert [int(r["content_hash"]) for r in inspection_rows(session, limit=1)] == [9]


def test_inspection_rows_give_each_parts_truth_as_the_rates_decide_it(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = inspection_rows(session)
    by_part = {int(r["content_hash"]): (r["reviewed"], r["reviewed_defects"]) for r in rows}
    assert by_part == {
        1: ("defective", "scratch"),
        2: ("defective", "inclusion"),
        3: ("good", ""),  # its one detection a false call
        4: ("good", ""),
        5: ("defective", "scratch"),
        6: ("defective", "inclusion"),
        7: ("not reviewed", ""),
        8: ("not reviewed", ""),
        9: ("defective", "scratch"),  # marked good, then a defect confirmed
    }
    # The scratch rates, recounted from the rows: defective with a scratch found, and good
    # parts failed with a counted scratch.
    judged = [r for r in rows if r["verdict"] != "error"]
    scratched = [r for r in judged if "scratch" in r["reviewed_defects"].split(";")]
    false_calls = [
        r for r in judged if r["reviewed"] == "good" and "scratch" in r["defects"].split(";")
    ]
    [scratch] = rates(session, Filters(class_name="scratch"))
    assert (scratch.n_defective, scratch.n_missed, scratch.n_false_calls) == (
        len(scratched),
        sum(r["verdict"] == "pass" for r in scratched),
        sum(r["verdict"] == "fail" for r in false_calls),
    )


def test_station_activity_since_a_moment(session, history) -> None:  # type: ignore[no-untyped-def]
    b1 = session.scalars(select(Station).where(Station.name == "B1")).one()
    blank = Part(
        content_hash="b" * 64,
        stored_path="",
        size_bytes=100,
        line_id=b1.line_id,
        station_id=b1.id,
        captured_at=DAY2,
    )
    session.add(blank)
    session.flush()
    session.add(
        Inspection(
            part_id=blank.id,
            verdict=Verdict.ERROR,
            inspected_at=DAY2,
            error="blank image (every pixel at gray level 0): check the camera and its lighting",
        )
    )
    session.commit()
    a1, b1_now = station_activity(session, since=DAY2 - timedelta(minutes=1))
    # A1: p4 pass and p9 fail since DAY2; its run (the only one) is not marked finished.
    assert (a1.line, a1.station, a1.run_id, a1.run_open) == ("A", "A1", history["run"].id, True)
    assert (a1.inspected, a1.failed, a1.errors, a1.blank_frames) == (2, 1, 0, 0)
    assert a1.last_inspected_at == DAY2 + timedelta(hours=1) and a1.fail_rate == 0.5
    # B1: p5 pass, p6 and p8 fail, p7 and the blank frame errors; no run recorded for it.
    assert (b1_now.station, b1_now.run_id, b1_now.run_open) == ("B1", None, False)
    assert (b1_now.inspected, b1_now.failed, b1_now.errors, b1_now.blank_frames) == (5, 2, 2, 1)
    assert b1_now.fail_rate == pytest.approx(2 / 3)
    # Nothing since: counts of zero, the last verdict however old.
    later = station_activity(session, since=DAY2 + timedelta(days=1))
    assert [(a.inspected, a.last_inspected_at) for a in later] == [
        (0, DAY2 + timedelta(hours=1)),
        (0, DAY2),
    ]


def test_station_activity_counts_a_part_where_it_was_judged(session, history) -> None:  # type: ignore[no-untyped-def]
    """A part first seen at B1, judged again in A1's run: A1's work now, in its counts as in
    its last verdict (before, the counts went to B1 while A1's last verdict moved)."""
    a1 = session.scalars(select(Station).where(Station.name == "A1")).one()
    since = DAY2 + timedelta(days=1)
    p5 = session.scalars(select(Part).where(Part.content_hash == f"{5:064d}")).one()
    assert p5.station_id != a1.id
    for earlier in p5.inspections:
        earlier.superseded_at = since
    session.add(
        Inspection(
            part_id=p5.id, run_id=history["run"].id, verdict=Verdict.FAIL, inspected_at=since
        )
    )
    session.commit()
    a1_now, b1_now = station_activity(session, since=since)
    assert (a1_now.inspected, a1_now.failed, a1_now.last_inspected_at) == (1, 1, since)
    assert (b1_now.inspected, b1_now.failed) == (0, 0)
    assert [(r.inspected, r.failed) for r in minute_volume(session, since, a1.id)] == [(1, 1)]
    assert minute_volume(session, since, b1_now.station_id) == []


def test_station_activity_shows_the_run_a_one_off_inspection_did_not_replace(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    """An upload on the Inspect page (or `defects inspect`) at a station whose watch runs
    opened and finished a run of its own: the station showed as "run finished", with the
    upload's model and source, while its watch judged on. B1, with no run but one-offs,
    shows its latest."""
    from db.models import INSPECT_COMMAND_SOURCE, UPLOAD_SOURCE

    a1, b1 = session.scalars(select(Station).order_by(Station.name)).all()
    m2 = session.scalars(select(ModelVersion).where(ModelVersion.name == "m2")).one()
    watch = history["run"]  # A1's, open
    for station, source in [(a1, UPLOAD_SOURCE), (b1, INSPECT_COMMAND_SOURCE)]:
        session.add(
            InspectionRun(
                line_id=station.line_id,
                station_id=station.id,
                source=source,
                one_off=True,
                model_version_id=m2.id,
                started_at=DAY2,
                finished_at=DAY2,
            )
        )
    session.commit()
    a1_now, b1_now = station_activity(session, since=DAY1)
    assert (a1_now.run_id, a1_now.run_open, a1_now.run_model) == (watch.id, True, "")
    assert (b1_now.run_open, b1_now.run_model, b1_now.run_source) == (
        False,
        "m2",
        INSPECT_COMMAND_SOURCE,
    )


def test_station_activity_shows_a_batch_of_a_folder_named_as_a_one_off_source(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    """`defects batch cli` (a relative folder named `cli`) recorded the source a `defects
    inspect` run does, and the station's row passed it over as a one-off, showing the
    station's earlier run instead."""
    from db.models import INSPECT_COMMAND_SOURCE, UPLOAD_SOURCE
    from inspection.batch import open_run

    a1 = session.scalars(select(Station).order_by(Station.name)).first()
    line = session.get_one(ProductionLine, a1.line_id).name
    runs = []
    for source in (INSPECT_COMMAND_SOURCE, UPLOAD_SOURCE):
        run, _ = open_run(session, line, a1.name, "m2", "", source)
        runs.append(run.id)
        session.commit()
        (a1_now, _) = station_activity(session, since=DAY1)
        assert (a1_now.run_id, a1_now.run_source) == (run.id, source)
    one_off, _ = open_run(session, line, a1.name, "m2", "", INSPECT_COMMAND_SOURCE, one_off=True)
    session.commit()
    (a1_now, _) = station_activity(session, since=DAY1)
    assert a1_now.run_id == runs[-1] != one_off.id


def test_run_rows_page_by_page(session, history) -> None:  # type: ignore[no-untyped-def]
    """A run's export read a page at a time lists every part it judged once, in the order
    written, with only its counted defects, whatever the page size; another run's or no
    run's verdicts in between are not its own."""
    run = history["run"]
    for inspection in session.scalars(select(Inspection)):
        if int(inspection.part.content_hash) in (6, 8):  # p4, p5 and p7 stay outside the run
            inspection.run_id = run.id
    session.commit()
    rows = list(run_rows(session, run.id, page=2))
    assert [(int(r.content_hash), r.verdict, r.defects, r.max_confidence) for r in rows] == [
        (1, "fail", "scratch", 0.8),
        (2, "pass", "", 0.0),
        (3, "fail", "scratch", 0.8),
        (6, "fail", "inclusion", 0.8),  # its scratch was not counted
        (8, "fail", "patches", 0.8),
    ]
    assert rows == list(run_rows(session, run.id, page=1)) == list(run_rows(session, run.id))
    assert list(run_rows(session, run.id + 1)) == []


def test_source_rows_list_each_file_read_at_its_current_verdict(session, history) -> None:  # type: ignore[no-untyped-def]
    """A batch's CSV: every file the command read, judged by its run or before it, in the
    order read; a copy of a file is its own row; a file with no verdict yet is left out."""
    run = history["run"]
    run.model_version_id = history["models"][0].id
    session.commit()
    keys = [
        ("b/p8.png", f"{8:064d}"),  # judged outside this run, by the run's model
        ("a/p1.png", f"{1:064d}"),
        ("copy-of-p1.png", f"{1:064d}"),
        ("p9.png", f"{9:064d}"),  # judged by another model version only
        ("never-written.png", "f" * 64),
    ]
    rows = list(source_rows(session, run.id, keys))
    assert [(r.part, r.verdict, r.defects) for r in rows] == [
        ("b/p8.png", "fail", "patches"),
        ("a/p1.png", "fail", "scratch"),
        ("copy-of-p1.png", "fail", "scratch"),
    ]


def test_minute_volume(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = minute_volume(session, since=DAY2 - timedelta(minutes=1))
    assert [(r.minute, r.inspected, r.failed, r.errors) for r in rows] == [
        ("2026-01-06 08:00", 5, 2, 1),  # p4 to p8
        ("2026-01-06 09:00", 1, 1, 0),  # p9
    ]
    a1 = session.scalars(select(Station).where(Station.name == "A1")).one()
    assert [(r.inspected, r.failed) for r in minute_volume(session, DAY2, a1.id)] == [
        (1, 0),
        (1, 1),
    ]


def test_the_plants_minute_volume_counts_a_part_a_candidate_judged_too_once(
    session, history
) -> None:  # type: ignore[no-untyped-def]
    # A candidate at a station of its own (C1) judges p4 and p8 again a minute after A1 and
    # B1 did, failing p4: the plant's chart counted them as 2 more parts, 1 more failed.
    m1, m2 = history["models"]
    shadow = Station(line_id=history["line_a"].id, name="C1")
    session.add(shadow)
    session.flush()
    run = InspectionRun(
        line_id=shadow.line_id, station_id=shadow.id, model_version_id=m2.id, started_at=DAY2
    )
    session.add(run)
    session.flush()
    for n, verdict in ((4, Verdict.FAIL), (8, Verdict.PASS)):
        part = session.scalars(select(Part).where(Part.content_hash == f"{n:064d}")).one()
        session.add(
            Inspection(
                part_id=part.id,
                model_version_id=m2.id,
                run_id=run.id,
                verdict=verdict,
                inspected_at=DAY2 + timedelta(minutes=1),
            )
        )
    session.commit()
    rows = minute_volume(session, since=DAY2 - timedelta(minutes=1))
    assert [(r.minute, r.inspected, r.failed, r.errors) for r in rows] == [
        ("2026-01-06 08:00", 5, 2, 1),  # p4 to p8, as before
        ("2026-01-06 09:00", 1, 1, 0),  # p9
    ]
    # The candidate's station: its own verdicts, as its row on the Live page counts them.
    assert [(r.inspected, r.failed) for r in minute_volume(session, DAY2, shadow.id)] == [(2, 1)]
    activity = {a.station: a.inspected for a in station_activity(session, DAY2)}
    assert activity["C1"] == 2


@contextmanager
def local_zone(name: str) -> Iterator[None]:
    """This process in the time zone `name`, as a dashboard server started with TZ=name."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_local_days_run_from_local_midnight_to_local_midnight() -> None:
    with local_zone("America/New_York"):
        winter = Filters.local_days(date(2026, 1, 5), date(2026, 1, 6), line_id=3)
        assert (winter.start, winter.end, winter.utc_offset_minutes, winter.line_id) == (
            datetime(2026, 1, 5, 5),
            datetime(2026, 1, 7, 5),
            -300,
            3,
        )
        # 8 March 2026: the clocks go forward at 2:00, a day of 23 hours.
        spring = Filters.local_days(date(2026, 3, 8), date(2026, 3, 8))
        assert (spring.start, spring.end, spring.utc_offset_minutes) == (
            datetime(2026, 3, 8, 5),
            datetime(2026, 3, 9, 4),
            -240,
        )
    with local_zone("Asia/Kolkata"):  # east of UTC, and not by whole hours
        one_day = Filters.local_days(date(2026, 1, 5), date(2026, 1, 5))
        assert (one_day.start, one_day.end, one_day.utc_offset_minutes) == (
            datetime(2026, 1, 4, 18, 30),
            datetime(2026, 1, 5, 18, 30),
            330,
        )


def test_days_are_counted_at_the_filters_offset_from_utc(session, history) -> None:  # type: ignore[no-untyped-def]
    # 9 hours west of UTC, DAY1's parts were captured the day before, DAY2's at 23:00 the
    # day before and p9 (an hour later) at midnight.
    west = daily_volume(session, Filters(utc_offset_minutes=-9 * 60))
    assert [(r.day, r.inspected, r.failed, r.errors) for r in west] == [
        (date(2026, 1, 4), 3, 2, 0),
        (date(2026, 1, 5), 5, 2, 1),
        (date(2026, 1, 6), 1, 1, 0),
    ]
    east = daily_volume(session, Filters(utc_offset_minutes=16 * 60))  # 08:00 UTC: midnight
    assert [(r.day, r.inspected) for r in east] == [(date(2026, 1, 6), 3), (date(2026, 1, 7), 6)]


def test_rates_count_days_at_the_filters_offset_from_utc(session, history) -> None:  # type: ignore[no-untyped-def]
    rows = rates(session, Filters(utc_offset_minutes=-9 * 60), group_by="day")
    assert [r.key for r in rows] == [date(2026, 1, 4), date(2026, 1, 5), date(2026, 1, 6)]


def test_every_history_figure_follows_the_class_filter(session, history) -> None:  # type: ignore[no-untyped-def]
    scratch = Filters(class_name="scratch")
    # Called scratch by the model (p1, p3, p9) or found scratched by a reviewer (p1, p9, and
    # p5, missed); p6's scratch was below its threshold and not found by its reviewer.
    assert [(r.day, r.inspected, r.failed, r.errors) for r in daily_volume(session, scratch)] == [
        (date(2026, 1, 5), 2, 2, 0),
        (date(2026, 1, 6), 2, 1, 0),
    ]
    assert latency_summary(session, scratch).count == 4
    scratch_latencies = latency_histogram(session, scratch)
    assert sum(scratch_latencies.counts) == 4 and scratch_latencies.summary.max_ms == 90.0
    assert [(u.model_name, u.inspections) for u in model_usage(session, scratch)] == [
        ("m1", 3),
        ("m2", 1),
    ]
    # The download: the newest of the class up to the limit, not those of the class among
    # the newest rows.
    assert [int(r["content_hash"]) for r in inspection_rows(session, scratch, limit=2)] == [9, 5]
    # The Pareto: the class's row, its shares still of every failed part.
    assert defect_pareto(session, scratch) == [ParetoRow("scratch", 3, 0.6, 0.6)]
    patches = Filters(class_name="patches")
    assert [(r.inspected, r.failed) for r in daily_volume(session, patches)] == [(1, 1)]
    assert [(u.model_name, u.inspections) for u in model_usage(session, patches)] == [("m1", 1)]


def test_latencies_are_binned_and_ranked_in_the_database(session) -> None:  # type: ignore[no-untyped-def]
    """The History page read every part's latency to bin and rank it (a month of a line's
    parts at each render): the database's bins and nearest ranks are numpy's and ours."""
    import numpy as np

    line = ProductionLine(name="L")
    station = Station(line=line, name="S")
    model = ModelVersion(
        name="m",
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        file_path="x.pt",
        sha256="0" * 64,
    )
    session.add_all([line, station, model])
    session.flush()
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.gamma(4.0, 6.0, size=997)]
    for n, latency in enumerate([*values, None]):
        part = Part(
            content_hash=f"{n:064d}",
            stored_path=f"images/{n}.png",
            size_bytes=1,
            line_id=line.id,
            station_id=station.id,
            captured_at=DAY1,
        )
        session.add(part)
        session.flush()
        session.add(
            Inspection(
                part_id=part.id,
                model_version_id=model.id,
                inspected_at=DAY1,
                verdict=Verdict.ERROR if latency is None else Verdict.PASS,
                latency_ms=5000.0 if latency is None else latency,  # (an error's: left out)
                error="cannot decode" if latency is None else None,
            )
        )
    session.flush()
    histogram = latency_histogram(session, bins=20)
    counts, edges = np.histogram(np.asarray(values), bins=20)
    assert histogram.counts == counts.tolist()
    assert histogram.edges == pytest.approx(edges.tolist())
    ordered = sorted(values)
    summary = histogram.summary
    assert summary.count == 997 and summary.mean_ms == pytest.approx(np.mean(values))
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms, summary.max_ms) == pytest.approx(
        [percentile(ordered, q) for q in (50, 95, 99, 100)]
    )
    later = latency_histogram(session, Filters(start=datetime(2030, 1, 1)))
    assert later.counts == [] and later.summary.count == 0


def test_latencies_of_parts_judged_in_tiles_and_whole_are_told_apart(session) -> None:  # type: ignore[no-untyped-def]
    """A part judged in tiles takes a pass of the network a tile: mixed with parts judged
    whole in one histogram and its percentiles, a station that started tiling read as a
    station grown slower. Each grid gets its own, on shared bins; one grid keeps one."""
    line = ProductionLine(name="L")
    station = Station(line=line, name="S")
    model = ModelVersion(
        name="m", kind=ModelKind.DETECTOR, architecture="a", file_path="x.pt", sha256="0" * 64
    )
    session.add_all([line, station, model])
    session.flush()
    tiles = {"size": 64, "overlap": 0.2}
    judged = [(None, 10.0 + n) for n in range(10)]  # the model's own grid
    judged += [(tiles, 60.0 + n) for n in range(5)]  # --tile 64
    judged += [("off", 8.0), ("off", 9.0)]  # --tile off
    for n, (tile, latency) in enumerate(judged):
        part = Part(
            content_hash=f"{n:064d}",
            stored_path=f"images/{n}.png",
            size_bytes=1,
            line_id=line.id,
            station_id=station.id,
            captured_at=DAY1,
        )
        session.add(part)
        session.flush()
        point = {"default": 0.25, **({} if tile is None else {"tile": tile})}
        session.add(
            Inspection(
                part_id=part.id,
                model_version_id=model.id,
                inspected_at=DAY1,
                verdict=Verdict.PASS,
                latency_ms=latency,
                thresholds=point,
            )
        )
    session.flush()
    by_grid = latency_by_grid(session, bins=10)
    assert [h.grid for h in by_grid] == ["off", None, tiles]  # the fastest first
    assert [h.summary.count for h in by_grid] == [2, 10, 5]
    assert [(h.summary.p50_ms, h.summary.p99_ms) for h in by_grid] == [
        (8.0, 9.0),
        (14.0, 19.0),
        (62.0, 64.0),
    ]
    assert all(h.edges == pytest.approx(by_grid[0].edges) for h in by_grid)  # shared bins
    assert by_grid[0].edges[0] == 8.0 and by_grid[0].edges[-1] == 64.0
    whole = latency_histogram(session, bins=10)
    assert [sum(c) for c in zip(*(h.counts for h in by_grid), strict=True)] == whole.counts
    # One grid in range: one histogram, as before.
    session.execute(update(Inspection).values(thresholds={"default": 0.25, "tile": tiles}))
    [only] = latency_by_grid(session, bins=10)
    assert only.grid == tiles and only.counts == whole.counts and only.summary == whole.summary


def test_days_across_a_change_of_daylight_saving_time_are_each_parts_own_local_day(
    session,  # type: ignore[no-untyped-def]
) -> None:
    # Berlin leaves summer time on 25 October 2026 (03:00 CEST is 02:00 CET, a day of 25
    # hours). A part at 00:30, 12:30 and 23:30 local time on each day of the range: every day
    # counts its three, none goes to the day before, and no day outside the range shows.
    line = ProductionLine(name="L")
    station = Station(line=line, name="S")
    session.add_all([line, station])
    session.flush()
    berlin = ZoneInfo("Europe/Berlin")
    days = [date(2026, 10, 20) + timedelta(days=n) for n in range(11)]
    for n, moment in enumerate(
        datetime.combine(day, dtime(hour, 30), tzinfo=berlin)
        for day in days
        for hour in (0, 12, 23)
    ):
        at = moment.astimezone(UTC).replace(tzinfo=None)
        part = Part(
            content_hash=f"{n:064d}",
            stored_path="",
            size_bytes=1,
            captured_at=at,
            line_id=line.id,
            station_id=station.id,
        )
        session.add(part)
        session.flush()
        session.add(Inspection(part_id=part.id, verdict=Verdict.PASS, inspected_at=at))
    session.commit()
    with local_zone("Europe/Berlin"):
        filters = Filters.local_days(days[0], days[-1])
    assert [(r.day, r.inspected) for r in daily_volume(session, filters)] == [
        (day, 3) for day in days
    ]
    with local_zone("America/New_York"):  # the range holds no change there: one offset
        assert Filters.local_days(days[0], days[-1]).offset_changes == ()
        # 8 March 2026, 2:00 EST: the first moment of EDT, to the second.
        spring = Filters.local_days(date(2026, 3, 1), date(2026, 3, 31))
        assert spring.offset_changes == ((datetime(2026, 3, 8, 7), -300),)
        assert spring.utc_offset_minutes == -240
