"""The questions QA asks of the inspection history, answered in SQL on SQLite and PostgreSQL.

Ground truth comes from reviews (`db.reviews.truth_subquery`): a part is *defective* when any
review confirms a defect on it or adds a missed one, and *good* when reviewed in full with none
of them saying defective (a review marking it good, or every detection of a verdict marked a
false call); a part part-way through its review is neither. When reviewers disagree on a
detection the word more of them gave counts, and a tie is a defect: an escape must never be
hidden by a later "good" alone, and a third reviewer's word settles it (`standing_defect`).

Miss rate = defective parts passed / defective parts; false-call rate = good parts failed /
good parts. Both count inspections (a part inspected by two model versions counts once for
each); inspections that ended in an error are neither. A verdict superseded by a later one of
the same model version (the part judged again after a recalibration) is left out unless asked.

Days and date ranges are those of the parts (when each was captured, that is first seen), not of
the verdicts: a week of parts judged again on Saturday after a recalibration stays on its days,
with its new verdicts, instead of piling up on Saturday.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from db.models import (
    Inspection,
    InspectionRun,
    ModelVersion,
    Part,
    Prediction,
    ProductionLine,
    Review,
    Station,
    Verdict,
)
from db.reviews import DEFECT_REVIEWS, standing_defect, truth_subquery

# Ids in one IN list: well under the bound parameters SQLite allows in one statement.
_IN_LIST = 900

GroupBy = Literal["day", "line", "station", "model_version", "class", "all"]


@dataclass(frozen=True)
class Filters:
    """Which inspections a query looks at: of parts captured from `start` to `end` (exclusive;
    naive UTC, as stored), of one class (see `class_conditions`), with days that begin
    `utc_offset_minutes` from UTC's midnight; before each of `offset_changes` (a UTC moment,
    and the offset in force until it), at that earlier offset."""

    start: datetime | None = None
    end: datetime | None = None
    line_id: int | None = None
    station_id: int | None = None
    model_version_id: int | None = None
    class_name: str | None = None
    include_superseded: bool = False
    utc_offset_minutes: int = 0  # of the days the figures count by (0: days of UTC)
    offset_changes: tuple[tuple[datetime, int], ...] = ()  # oldest first

    @classmethod
    def local_days(cls, first: date, last: date, **others: Any) -> Filters:
        """The parts captured on the days `first` to `last` (both included) of this machine's
        time zone, counted by its days: what a person picking dates means.

        The bounds are each day's own local midnight, right across a change of daylight
        saving time, and each part is counted on its own local day: before a change in the
        range at the offset then in force (counted at the last day's offset alone, the hour
        next to midnight of every day on the other side of the change went to the day before,
        and the range's first day lent parts to a day before the range)."""

        def utc_midnight(day: date) -> datetime:
            # A naive datetime's astimezone() reads it as local time, at that day's offset.
            return datetime.combine(day, time.min).astimezone(UTC).replace(tzinfo=None)

        start, end = utc_midnight(first), utc_midnight(last + timedelta(days=1))
        changes = _offset_changes(start, end)
        return cls(
            start=start,
            end=end,
            utc_offset_minutes=_local_offset_minutes(end - timedelta(seconds=1)),
            offset_changes=changes,
            **others,
        )

    def class_conditions(self) -> list[ColumnElement[bool]]:
        """With a class chosen, the inspections that concern it in the volume, latency, model
        and download figures: the model counted a detection of it, or a reviewer found it on
        the part (its escapes too). The rates count a class their own way (see `rates`); a
        query joins inspections and their parts."""
        if self.class_name is None:
            return []
        return [
            or_(
                _has_counted_prediction_of(self.class_name),
                _has_defect_review_of(self.class_name),
            )
        ]

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if not self.include_superseded:
            found.append(Inspection.is_current())
        if self.start is not None:
            found.append(Part.captured_at >= self.start)
        if self.end is not None:
            found.append(Part.captured_at < self.end)
        if self.line_id is not None:
            found.append(Part.line_id == self.line_id)
        if self.station_id is not None:
            found.append(Part.station_id == self.station_id)
        if self.model_version_id is not None:
            found.append(Inspection.model_version_id == self.model_version_id)
        return found

    def part_conditions(self) -> list[ColumnElement[bool]]:
        """`conditions`, each part once: at the verdict that decided its fate, where no model
        version is chosen (see `_deciding_verdict`). A candidate judging the parts production
        judged (`defects batch --model`) gives each a second current verdict, one per model
        version, and the figures that say parts counted each such part twice."""
        if self.model_version_id is not None or self.include_superseded:
            return self.conditions()
        return [*self.conditions(), _deciding_verdict()]


def _deciding_verdict() -> ColumnElement[bool]:
    """The verdict is its part's current one of the model version that judged the part first:
    the one on the line when it was captured (a candidate, a model promoted since, judges it
    after), which the plant's figures are of. Judged again by that version at a new
    operating point, its new verdict counts, as everywhere. The part holds that version
    (`Part.first_model_version_id`): a query joins inspections and their parts, and compares
    two columns of the row, where looking each part's first verdict up took seconds a page
    on a year's history."""
    return Inspection.model_version_id.is_not_distinct_from(Part.first_model_version_id)


@dataclass(frozen=True)
class PartCounts:
    """Defective parts and how many were missed; good parts and how many were failed."""

    n_defective: int
    n_missed: int
    n_good: int
    n_false_calls: int

    @property
    def miss_rate(self) -> float | None:
        return self.n_missed / self.n_defective if self.n_defective else None

    @property
    def false_call_rate(self) -> float | None:
        return self.n_false_calls / self.n_good if self.n_good else None

    def as_dict(self) -> dict[str, int | float | None]:
        return {
            "miss_rate": self.miss_rate,
            "false_call_rate": self.false_call_rate,
            "n_defective": self.n_defective,
            "n_missed": self.n_missed,
            "n_good": self.n_good,
            "n_false_calls": self.n_false_calls,
        }


@dataclass(frozen=True)
class RateRow(PartCounts):
    key: str | date | int | None = None


def _as_date(value: str | date | datetime | None) -> date | None:
    # SQLite's date() gives text, PostgreSQL's gives a date.
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value))


class _ShiftedDate(FunctionElement[Any]):
    """The calendar date of a naive-UTC timestamp shifted by a whole number of minutes (a
    literal column): SQLite and PostgreSQL each shift a time in words the other lacks."""

    name = "shifted_date"
    inherit_cache = True  # the minutes are a clause, so a part of the cache key


@compiles(_ShiftedDate)
def _shifted_date_sqlite(element: _ShiftedDate, compiler: Any, **kw: Any) -> str:
    timestamp, minutes = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"date({timestamp}, '{minutes} minutes')"


@compiles(_ShiftedDate, "postgresql")
def _shifted_date_postgresql(element: _ShiftedDate, compiler: Any, **kw: Any) -> str:
    timestamp, minutes = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"date({timestamp} + interval '{minutes} minutes')"


class _UtcMoment(FunctionElement[Any]):
    """A naive-UTC moment written into the SQL (a literal column holding its text), compared
    with stored times: SQLite holds them as text of this form, PostgreSQL as timestamps."""

    name = "utc_moment"
    inherit_cache = True


@compiles(_UtcMoment)
def _utc_moment_sqlite(element: _UtcMoment, compiler: Any, **kw: Any) -> str:
    (moment,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"'{moment}'"


@compiles(_UtcMoment, "postgresql")
def _utc_moment_postgresql(element: _UtcMoment, compiler: Any, **kw: Any) -> str:
    (moment,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"TIMESTAMP '{moment}'"


def _local_offset_minutes(moment: datetime) -> int:
    """This machine's offset from UTC at the naive-UTC `moment`, in minutes."""
    offset = moment.replace(tzinfo=UTC).astimezone().utcoffset() or timedelta(0)
    return round(offset.total_seconds() / 60)


def _offset_changes(start: datetime, end: datetime) -> tuple[tuple[datetime, int], ...]:
    """Each change of this machine's offset from UTC between the naive-UTC `start` and `end`:
    the first moment of the new offset, to the second, and the offset before it. Looked for
    at each day's end (a zone changes at most once a day), then narrowed down."""
    changes = []
    before, offset = start, _local_offset_minutes(start)
    while before < end:
        after = min(before + timedelta(days=1), end)
        later = _local_offset_minutes(after)
        if later != offset:
            low, high = before, after  # the offset is `offset` at low, `later` at high
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                if middle <= low:
                    break
                if _local_offset_minutes(middle) == offset:
                    low = middle
                else:
                    high = middle
            changes.append((high, offset))
            offset = later
        before = after
    return tuple(changes)


def _day_column(filters: Filters) -> ColumnElement[Any]:
    """The day a part was captured, in a time zone the filters' `utc_offset_minutes` from UTC,
    or before each of their `offset_changes`, at the offset in force until it."""
    utc_offset_minutes, offset_changes = filters.utc_offset_minutes, filters.offset_changes

    # The minutes and moments are written into the SQL, not bound: PostgreSQL takes the
    # select's `date(t + $1)` and the GROUP BY's `date(t + $2)` for different expressions.
    def shifted(minutes: int) -> ColumnElement[Any]:
        return _ShiftedDate(Part.captured_at, literal_column(f"{int(minutes):+d}"))

    if not offset_changes:
        return shifted(utc_offset_minutes)
    return case(
        *(
            (
                Part.captured_at < _UtcMoment(literal_column(f"{moment:%Y-%m-%d %H:%M:%S}")),
                shifted(minutes),
            )
            for moment, minutes in offset_changes
        ),
        else_=shifted(utc_offset_minutes),
    )


def _normalise_key(group_by: GroupBy, key: object) -> str | date | int | None:
    return _as_date(key) if group_by == "day" else key  # type: ignore[return-value,arg-type]


def rates(
    session: Session, filters: Filters = Filters(), group_by: GroupBy = "all"
) -> list[RateRow]:
    """Miss and false-call rates over reviewed parts, one row per group, ordered by key."""
    if group_by == "class":
        return _rates_by_class(session, filters)
    truth = truth_subquery()
    is_pass = Inspection.verdict == Verdict.PASS
    is_fail = Inspection.verdict == Verdict.FAIL
    defective: ColumnElement[bool] = truth.c.defective == 1
    good = truth.c.defective == 0
    false_call = and_(good, is_fail)
    if filters.class_name is not None:
        # Defective parts of that class; good parts failed by a prediction of that class.
        defective = and_(defective, _has_defect_review_of(filters.class_name))
        false_call = and_(false_call, _has_counted_prediction_of(filters.class_name))
    # A station by its identity, named "line / station": by its name alone, a station "S1" of
    # each of two lines was one row, their parts summed.
    station_label = ProductionLine.name + " / " + Station.name
    key_column: ColumnElement[object] = {
        "all": literal("all"),
        "day": _day_column(filters),
        "line": ProductionLine.name,
        "station": station_label,
        "model_version": Inspection.model_version_id,
    }[group_by]
    grouped_by = (
        [Station.id, ProductionLine.name, Station.name] if group_by == "station" else [key_column]
    )
    # Per model version, each version's own verdicts; otherwise each part once.
    looked_at = filters.conditions() if group_by == "model_version" else filters.part_conditions()
    query = (
        select(
            key_column.label("key"),
            func.sum(case((defective, 1), else_=0)),
            func.sum(case((and_(defective, is_pass), 1), else_=0)),
            func.sum(case((good, 1), else_=0)),
            func.sum(case((false_call, 1), else_=0)),
        )
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .join(truth, truth.c.part_id == Part.id)
        .join(ProductionLine, ProductionLine.id == Part.line_id)
        .join(Station, Station.id == Part.station_id)
        .where(Inspection.verdict != Verdict.ERROR, *looked_at)
        .group_by(*grouped_by)
        .order_by(key_column)
    )
    return [
        RateRow(
            int(nd or 0),
            int(nm or 0),
            int(ng or 0),
            int(nf or 0),
            key=_normalise_key(group_by, key),
        )
        for key, nd, nm, ng, nf in session.execute(query)
    ]


def reviewed_of_judged(session: Session, filters: Filters = Filters()) -> tuple[int, int]:
    """How many of the parts `rates` looks at (errors left out; each part once, at its
    deciding verdict) reviewers gave the truth of, and how many there are: the rates are of the reviewed ones only, which a
    report has to say (240 of 10000 is not the line's every part)."""
    truth = truth_subquery()
    reviewed, judged = session.execute(
        select(func.count(truth.c.part_id), func.count(Inspection.id))
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .outerjoin(truth, truth.c.part_id == Part.id)
        .where(Inspection.verdict != Verdict.ERROR, *filters.part_conditions())
    ).one()
    return int(reviewed or 0), int(judged or 0)


def _has_defect_review_of(class_name: str) -> ColumnElement[bool]:
    return (
        select(Review.id)
        .where(
            Review.part_id == Part.id,
            standing_defect(),
            Review.class_name == class_name,
        )
        .exists()
    )


def _has_counted_prediction_of(class_name: str) -> ColumnElement[bool]:
    return (
        select(Prediction.id)
        .where(
            Prediction.inspection_id == Inspection.id,
            Prediction.counted.is_(True),
            Prediction.class_name == class_name,
        )
        .exists()
    )


def defect_classes(session: Session) -> list[str]:
    """Every class a model called or a reviewer found, sorted: the History page's class choice.

    Reviewers' classes too: a class every model misses (one new to the line, which only the
    production model learned and still never finds) had no detection, so it could not be
    chosen, and its misses, the figures that matter most, could not be looked at."""
    called = select(Prediction.class_name).distinct()
    found = (
        select(Review.class_name)
        .where(Review.kind.in_(DEFECT_REVIEWS), Review.class_name.is_not(None))
        .distinct()
    )
    return sorted(set(session.scalars(called)) | set(session.scalars(found)))


def _rates_by_class(session: Session, filters: Filters) -> list[RateRow]:
    """Per class: defective parts of that class passed, and good parts failed by that class."""
    truth = truth_subquery()
    # The inspections looked at, as conditions on a join of inspections and their parts (an
    # `Inspection.id IN (subquery)` here made SQLite, without the planner's statistics, look
    # every id of the list up again for each reviewed part: 5.9 s for 200000 parts,
    # bench/results/history_scale_sqlite_200k_before.json).
    looked_at = (Inspection.verdict != Verdict.ERROR, *filters.part_conditions())
    # Defective parts by the classes reviewers gave them.
    defect_rows = session.execute(
        select(
            Review.class_name,
            func.count(func.distinct(Inspection.id)),
            func.count(func.distinct(case((Inspection.verdict == Verdict.PASS, Inspection.id)))),
        )
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .join(Review, Review.part_id == Part.id)
        .where(
            *looked_at,
            standing_defect(),
            Review.class_name.is_not(None),
        )
        .group_by(Review.class_name)
    ).all()
    n_good = session.execute(
        select(func.count(Inspection.id))
        .join(Part, Part.id == Inspection.part_id)
        .join(truth, truth.c.part_id == Inspection.part_id)
        .where(*looked_at, truth.c.defective == 0)
    ).scalar_one()
    false_call_rows = session.execute(
        select(Prediction.class_name, func.count(func.distinct(Inspection.id)))
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .join(truth, truth.c.part_id == Inspection.part_id)
        .join(Prediction, Prediction.inspection_id == Inspection.id)
        .where(
            *looked_at,
            truth.c.defective == 0,
            Inspection.verdict == Verdict.FAIL,
            Prediction.counted.is_(True),
        )
        .group_by(Prediction.class_name)
    ).all()
    defects = {name: (int(n), int(missed)) for name, n, missed in defect_rows}
    false_calls = {name: int(n) for name, n in false_call_rows}
    names = sorted(set(defects) | set(false_calls))
    if filters.class_name is not None:
        names = [n for n in names if n == filters.class_name]
    return [
        RateRow(*defects.get(name, (0, 0)), int(n_good), false_calls.get(name, 0), key=name)
        for name in names
    ]


PART_CLASSIFIER_ALONE = "part classifier alone"  # a failed part with no counted defect


@dataclass(frozen=True)
class ParetoRow:
    class_name: str
    failed_parts: int
    share: float
    cumulative_share: float


def defect_pareto(session: Session, filters: Filters = Filters()) -> list[ParetoRow]:
    """Failed parts per defect class, most frequent first, with the cumulative share of the
    class counts (a part failed for two classes counts in both bars, as a Pareto of causes
    does); with a class chosen, its row alone, its shares still of every class's count (its
    place in the Pareto). Parts the part classifier failed with no counted defect are a row of their own,
    PART_CLASSIFIER_ALONE: in no class, they were missing from the chart."""
    rows = session.execute(
        select(Prediction.class_name, func.count(func.distinct(Inspection.id)).label("n"))
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .join(Prediction, Prediction.inspection_id == Inspection.id)
        .where(
            Inspection.verdict == Verdict.FAIL,
            Prediction.counted.is_(True),
            *filters.part_conditions(),
        )
        .group_by(Prediction.class_name)
        .order_by(func.count(func.distinct(Inspection.id)).desc(), Prediction.class_name)
    ).all()
    alone = session.scalar(
        select(func.count(Inspection.id))
        .select_from(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .where(
            Inspection.verdict == Verdict.FAIL,
            ~exists().where(
                Prediction.inspection_id == Inspection.id, Prediction.counted.is_(True)
            ),
            *filters.part_conditions(),
        )
    )
    if alone:
        rows = sorted([*rows, (PART_CLASSIFIER_ALONE, alone)], key=lambda row: (-row[1], row[0]))
    total = sum(int(n) for _, n in rows)
    result: list[ParetoRow] = []
    running = 0
    for name, n in rows:
        running += int(n)
        result.append(ParetoRow(name, int(n), int(n) / total, running / total))
    if filters.class_name is not None:
        result = [row for row in result if row.class_name == filters.class_name]
    return result


@dataclass(frozen=True)
class VolumeRow:
    day: date
    inspected: int
    failed: int
    errors: int


def daily_volume(session: Session, filters: Filters = Filters()) -> list[VolumeRow]:
    """Parts judged, failed and in error per day they were captured (a day of the filters'
    offset from UTC), each at its deciding verdict (`Filters.part_conditions`)."""
    day = _day_column(filters)
    rows = session.execute(
        select(
            day,
            func.count(Inspection.id),
            func.sum(case((Inspection.verdict == Verdict.FAIL, 1), else_=0)),
            func.sum(case((Inspection.verdict == Verdict.ERROR, 1), else_=0)),
        )
        .join(Part, Part.id == Inspection.part_id)
        .where(*filters.part_conditions(), *filters.class_conditions())
        .group_by(day)
        .order_by(day)
    ).all()
    return [VolumeRow(_as_date(d), int(n), int(f or 0), int(e or 0)) for d, n, f, e in rows]  # type: ignore[arg-type]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value a QA engineer can point at in the data)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _latency_conditions(filters: Filters) -> list[ColumnElement[bool]]:
    """The verdicts whose judging times the latency figures rank: each part once, at its
    deciding verdict, as the other figures count it (`Filters.part_conditions`), or a picked
    model version's own. Every model's verdicts mixed a candidate's times (another network,
    judged at its own station or after hours) into the plant's, which read as the line grown
    faster or slower; a candidate's own are there with it picked."""
    return [
        Inspection.latency_ms.is_not(None),
        Inspection.verdict != Verdict.ERROR,  # an error's time is not a verdict's
        *filters.part_conditions(),
        *filters.class_conditions(),
    ]


def latency_summary(session: Session, filters: Filters = Filters()) -> LatencySummary:
    return latency_histogram(session, filters).summary


LATENCY_BINS = 50
FINE_BINS_PER_BIN = 40  # the fine bins percentiles are looked for in


@dataclass(frozen=True)
class LatencyHistogram:
    """Parts per latency bin, equal bins from the fastest to the slowest part (numpy's
    histogram's), with the summary the chart marks."""

    edges: list[float]  # bins + 1
    counts: list[int]
    summary: LatencySummary
    # The grid its parts were judged in, as their operating point's "tile" holds it (None the
    # model's own, "off", or a --tile's {"size", "overlap"}), where `latency_by_grid` split them.
    grid: dict[str, Any] | str | None = None


def _grid_text() -> ColumnElement[Any]:
    """A verdict's grid as text (NULL: the model's own): a JSON value cannot be grouped by in
    PostgreSQL."""
    return Inspection.thresholds["tile"].as_string()


def _grid_of(text: str | None) -> dict[str, Any] | str | None:
    if text is None or text == "off":
        return text
    try:
        found = json.loads(text)
    except ValueError:
        return text
    return found if isinstance(found, dict) else text


def latency_by_grid(
    session: Session, filters: Filters = Filters(), bins: int = LATENCY_BINS
) -> list[LatencyHistogram]:
    """The latency histogram of each grid the parts in range were judged in (each part at its
    deciding verdict, or the picked model version's: `_latency_conditions`), on the same
    bins, each with its own percentiles; one histogram of them all where they share one grid.
    A part judged in tiles takes a pass of the network a tile: mixed with parts judged whole,
    a station that started tiling read as a station grown slower."""
    grids: dict[str, tuple[dict[str, Any] | str | None, list[str | None], float, float]] = {}
    # (One expression in both places, labelled: PostgreSQL took the grid selected and the grid
    # grouped by, each with a parameter of its own, for two expressions.)
    grid_text = _grid_text().label("grid")
    for text, lowest, highest in session.execute(
        select(grid_text, func.min(Inspection.latency_ms), func.max(Inspection.latency_ms))
        .join(Part, Part.id == Inspection.part_id)
        .where(*_latency_conditions(filters))
        .group_by(grid_text)
    ):
        grid = _grid_of(text)
        # (One key a grid, however its JSON was spelt.)
        key = json.dumps(grid, sort_keys=True)
        _, texts, low, high = grids.get(key, (grid, [], math.inf, -math.inf))
        grids[key] = (grid, [*texts, text], min(low, lowest), max(high, highest))
    if len(grids) <= 1:
        whole = latency_histogram(session, filters, bins)
        return [replace(whole, grid=next(iter(grids.values()))[0] if grids else None)]
    span = (min(g[2] for g in grids.values()), max(g[3] for g in grids.values()))
    found = []
    for grid, texts, _, _ in sorted(grids.values(), key=lambda g: g[2]):  # fastest first
        named = [t for t in texts if t is not None]
        of_grid = or_(
            _grid_text().in_(named) if named else false(),
            _grid_text().is_(None) if None in texts else false(),
        )
        found.append(replace(latency_histogram(session, filters, bins, of_grid, span), grid=grid))
    return found


def latency_histogram(
    session: Session,
    filters: Filters = Filters(),
    bins: int = LATENCY_BINS,
    where: ColumnElement[bool] | None = None,
    span: tuple[float, float] | None = None,
) -> LatencyHistogram:
    """Counted and binned in the database. The History page read every part's latency to bin
    and rank it, at each render: 72 MB of Python memory for a month of 500000 parts
    (bench/results/latency_chart_sqlite.json). Exact
    nearest-rank percentiles without a sort of every value: the parts are counted in fine
    bins, and only the values of the fine bins that hold the ranks are read. `where` narrows
    the parts; `span` (lowest, highest) gives bins shared with another histogram."""

    def selected(*columns: Any) -> Select[Any]:
        return (
            select(*columns)
            .join(Part, Part.id == Inspection.part_id)
            .where(*_latency_conditions(filters), *([] if where is None else [where]))
        )

    count, mean, lowest, highest = session.execute(
        selected(
            func.count(Inspection.latency_ms),
            func.avg(Inspection.latency_ms),
            func.min(Inspection.latency_ms),
            func.max(Inspection.latency_ms),
        )
    ).one()
    if not count:
        return LatencyHistogram([], [], LatencySummary(0, None, None, None, None, None))
    low, high = (float(lowest), float(highest)) if span is None else span
    if high <= low:  # (one value: numpy centres a bin of width 1/bins on it)
        low, high = low - 0.5, high + 0.5
    fine = bins * FINE_BINS_PER_BIN
    offset = (Inspection.latency_ms - low) * (fine / (high - low))  # >= 0: truncation floors
    fine_bin = (
        func.floor(offset)
        if session.get_bind().dialect.name == "postgresql"  # (its integer cast rounds)
        else cast(offset, Integer)
    )
    fine_counts = [0] * fine
    for index, parts in session.execute(
        selected(fine_bin.label("bin"), func.count()).group_by("bin")
    ):
        fine_counts[min(int(index), fine - 1)] += int(parts)  # (the slowest: the last bin)
    counts = [
        sum(fine_counts[i * FINE_BINS_PER_BIN : (i + 1) * FINE_BINS_PER_BIN]) for i in range(bins)
    ]
    ranks = {q: max(1, math.ceil(q / 100 * count)) for q in (50, 95, 99)}  # nearest rank
    cumulative = list(itertools.accumulate(fine_counts))
    holding = {q: bisect.bisect_left(cumulative, rank) for q, rank in ranks.items()}
    wanted = sorted(set(holding.values()))
    values: dict[int, list[float]] = defaultdict(list)
    for index, value in session.execute(
        selected(fine_bin.label("bin"), Inspection.latency_ms).where(
            fine_bin.in_(wanted)
            if fine - 1 not in wanted
            else or_(fine_bin.in_(wanted), fine_bin >= fine)
        )
    ):
        values[min(int(index), fine - 1)].append(float(value))
    at = {}
    for q, k in holding.items():
        before = cumulative[k - 1] if k else 0
        at[q] = sorted(values[k])[ranks[q] - before - 1]
    edges = [low + (high - low) * i / bins for i in range(bins)] + [high]
    summary = LatencySummary(
        count=int(count),
        mean_ms=float(mean),
        p50_ms=at[50],
        p95_ms=at[95],
        p99_ms=at[99],
        max_ms=float(highest),
    )
    return LatencyHistogram(edges, counts, summary)


@dataclass(frozen=True)
class RunThroughput:
    run_id: int
    parts: int
    failed: int
    errors: int
    seconds: float | None

    @property
    def parts_per_second(self) -> float | None:
        return self.parts / self.seconds if self.seconds else None


def run_throughput(session: Session, run_id: int) -> RunThroughput:
    """A run's parts and rate, from its first start to its last recorded inspection."""
    run = session.get(InspectionRun, run_id)
    if run is None:
        raise LookupError(f"no inspection run {run_id}")
    parts, failed, errors, last = session.execute(
        select(
            func.count(Inspection.id),
            func.sum(case((Inspection.verdict == Verdict.FAIL, 1), else_=0)),
            func.sum(case((Inspection.verdict == Verdict.ERROR, 1), else_=0)),
            func.max(Inspection.inspected_at),
        ).where(Inspection.run_id == run_id)
    ).one()
    end = run.finished_at or last
    seconds = (end - run.started_at).total_seconds() if end else None
    return RunThroughput(run_id, int(parts), int(failed or 0), int(errors or 0), seconds)


@dataclass(frozen=True)
class ModelUsage:
    model_version_id: int | None
    model_name: str | None
    first_at: datetime
    last_at: datetime
    inspections: int


def model_usage(session: Session, filters: Filters = Filters()) -> list[ModelUsage]:
    """Which model version judged the parts, and over which span of time."""
    rows = session.execute(
        select(
            Inspection.model_version_id,
            ModelVersion.name,
            func.min(Inspection.inspected_at),
            func.max(Inspection.inspected_at),
            func.count(Inspection.id),
        )
        .join(Part, Part.id == Inspection.part_id)
        .outerjoin(ModelVersion, ModelVersion.id == Inspection.model_version_id)
        .where(*filters.conditions(), *filters.class_conditions())
        .group_by(Inspection.model_version_id, ModelVersion.name)
        .order_by(func.min(Inspection.inspected_at))
    ).all()
    return [ModelUsage(mid, name, first, last, int(n)) for mid, name, first, last, n in rows]


def part_results(
    session: Session,
    content_hashes: list[str],
    model_version_id: int,
    where: ColumnElement[bool] | None = None,
) -> dict[str, Inspection]:
    """The current inspection of each part (by content hash) by one model version, predictions
    loaded; `where` narrows them, so that no predictions are loaded for records not wanted."""
    from sqlalchemy.orm import contains_eager, selectinload

    rows = session.scalars(
        select(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .options(contains_eager(Inspection.part), selectinload(Inspection.predictions))
        .where(
            Part.content_hash.in_(content_hashes),
            Inspection.model_version_id == model_version_id,
            Inspection.is_current(),
            *([] if where is None else [where]),
        )
    ).all()
    return {i.part.content_hash: i for i in rows}


def counted_detections(
    session: Session, inspection_ids: list[int]
) -> dict[int, list[tuple[str, float]]]:
    """(class, confidence) of each inspection's counted detections, in a few IN queries, not
    one query an inspection."""
    counted: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for first in range(0, len(inspection_ids), _IN_LIST):
        for inspection_id, class_name, confidence in session.execute(
            select(Prediction.inspection_id, Prediction.class_name, Prediction.confidence).where(
                Prediction.inspection_id.in_(inspection_ids[first : first + _IN_LIST]),
                Prediction.counted.is_(True),
            )
        ):
            counted[inspection_id].append((class_name, confidence))
    return counted


# The keys of inspection_rows' rows, in order: the CSV's header, rows or none.
INSPECTION_COLUMNS = (
    "captured_at",
    "inspected_at",
    "line",
    "station",
    "part",
    "content_hash",
    "verdict",
    "defects",
    "latency_ms",
    "model",
    "superseded_at",
    "error",
    # The "tile" of its operating point: None the model's own grid, "off", or a --tile's. (Last:
    # a script reading the columns by place reads the earlier ones where they were.)
    "grid",
    # Counted boxes a part did not keep, past the most a part keeps (0: none; empty: an error,
    # or a verdict from before this was recorded for it). After the grid, for the same reason.
    "boxes_left_out",
    # The part's truth as the rates decide it: "defective", "good" or "not reviewed" (a part
    # under review, some of its detections still undecided, too), and the classes reviewers
    # found on it, ";"-joined: the miss and false-call counts, of a class too, rebuilt from
    # the download. Last, for the same reason.
    "reviewed",
    "reviewed_defects",
    # True where the row is its part's deciding verdict (`_deciding_verdict`), the one the
    # page's rates, volume and Pareto count with no model picked: every model's current
    # verdicts are listed, and a part a candidate judged too had two rows, nothing saying which
    # the figures counted. Last, for the same reason.
    "deciding",
)


def _reviewed_truths(session: Session, part_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Each reviewed part's truth, as `rates` decides it, and the classes reviewers found on
    it, in a few IN queries (a part missing: not reviewed)."""
    truth = truth_subquery()
    found: dict[int, tuple[str, str]] = {}
    for first in range(0, len(part_ids), _IN_LIST):
        chunk = part_ids[first : first + _IN_LIST]
        classes: dict[int, set[str]] = defaultdict(set)
        for part_id, class_name in session.execute(
            select(Review.part_id, Review.class_name).where(
                Review.part_id.in_(chunk),
                standing_defect(),
                Review.class_name.is_not(None),
            )
        ):
            classes[part_id].add(class_name)
        for part_id, defective in session.execute(
            select(truth.c.part_id, truth.c.defective).where(truth.c.part_id.in_(chunk))
        ):
            found[part_id] = (
                "defective" if defective else "good",
                ";".join(sorted(classes.get(part_id, ()))),
            )
    return found


def _selected_inspections(filters: Filters, judging_station: bool, *columns: Any) -> Select[Any]:
    """The inspections `filters` select, with their part, station, line and model joined."""
    return (
        select(*columns)
        .join(Part, Part.id == Inspection.part_id)
        .outerjoin(InspectionRun, InspectionRun.id == Inspection.run_id)
        .join(
            Station,
            Station.id
            == (
                func.coalesce(InspectionRun.station_id, Part.station_id)
                if judging_station
                else Part.station_id
            ),
        )
        .join(ProductionLine, ProductionLine.id == Station.line_id)
        .outerjoin(ModelVersion, ModelVersion.id == Inspection.model_version_id)
        # The class in SQL, before the limit (a limit taken first left fewer rows).
        .where(*filters.conditions(), *filters.class_conditions())
    )


def inspection_count(session: Session, filters: Filters = Filters()) -> int:
    """How many rows `inspection_rows` would give with no limit: a download capped at its
    limit has to say what it left out."""
    selected = _selected_inspections(filters, False, Inspection.id).subquery()
    return int(session.scalar(select(func.count()).select_from(selected)) or 0)


def inspection_rows(
    session: Session,
    filters: Filters = Filters(),
    limit: int = 100_000,
    judging_station: bool = False,
    every_fault: bool = False,
) -> list[dict[str, object]]:
    """Flat rows of inspections for CSV download, newest first; times naive UTC, as stored.

    Line and station are where each part was first seen, or with `judging_station` where the
    verdict was given (its run's; the Live page's station table counts parts so). With
    `every_fault`, a blank frame or empty file is listed each time it came, superseded or not,
    as the floor's figures count it (`_live_counted`): the same black frame sent by another
    station superseded this one's, which left the Live page's latest parts."""
    if every_fault:
        filters = replace(filters, include_superseded=True)
    # Columns, not ORM objects, and each row's counted classes in a few IN queries, not one
    # query a row: a month of 16431 rows took 2.5 s so, 0.2 s now
    # (bench/results/history_scale_sqlite_200k_rows_before.json, history_scale_sqlite_200k.json).
    selected = _selected_inspections(
        filters,
        judging_station,
        Inspection.id,
        Part.id,
        Part.captured_at,
        Inspection.inspected_at,
        ProductionLine.name,
        Station.name,
        Part.original_name,
        Part.content_hash,
        Inspection.verdict,
        Inspection.latency_ms,
        ModelVersion.name,
        # (The one key, not the whole operating point: a row's thresholds are a kilobyte.)
        Inspection.thresholds["tile"],
        Inspection.superseded_at,
        Inspection.error,
        Inspection.boxes_left_out,
        and_(Inspection.is_current(), _deciding_verdict()),
    )
    if every_fault:
        selected = selected.where(_live_counted())
    query = selected.order_by(Inspection.inspected_at.desc()).limit(limit)
    found = session.execute(query).all()
    counted = {
        inspection_id: {c for c, _ in detections}
        for inspection_id, detections in counted_detections(
            session, [row[0] for row in found]
        ).items()
    }
    truths = _reviewed_truths(session, sorted({row[1] for row in found}))
    rows = []
    for (
        inspection_id,
        part_id,
        *as_selected,
        verdict,
        latency_ms,
        model,
        tile,
        superseded_at,
        error,
        boxes_left_out,
        deciding,
    ) in found:
        # (captured_at, inspected_at, line, station, part, content_hash: as selected)
        classes = ";".join(sorted(counted.get(inspection_id, ())))
        values = (
            *as_selected,
            verdict.value,
            classes,
            latency_ms,
            model,
            superseded_at,
            error or "",
            tile,
            boxes_left_out,
            *truths.get(part_id, ("not reviewed", "")),
            bool(deciding),  # (SQLite gives 1 or 0)
        )
        rows.append(dict(zip(INSPECTION_COLUMNS, values, strict=True)))
    return rows


@dataclass(frozen=True)
class RunRow:
    """One part a run judged, as its CSV export lists it."""

    part: str
    content_hash: str
    verdict: str
    defects: str  # the counted classes, ";"-joined
    max_confidence: float  # of the counted detections; 0 with none
    latency_ms: float | None
    error: str
    inspected_at: datetime
    # The part classifier's, where one judged: a part it failed had no other trace in the CSV.
    defect_probability: float | None = None
    # As INSPECTION_COLUMNS' (the History page's CSV): the "tile" of its operating point, and
    # the counted boxes it did not keep. Last, so a script reading the columns by place reads
    # the earlier ones where they were.
    grid: dict[str, Any] | str | None = None
    boxes_left_out: int | None = None

    @classmethod
    def of(
        cls,
        name: str,
        digest: str,
        verdict: Verdict,
        counted: list[tuple[str, float]],  # (class, confidence) of its counted detections
        latency_ms: float | None,
        error: str | None,
        inspected_at: datetime,
        defect_probability: float | None = None,
        grid: dict[str, Any] | str | None = None,
        boxes_left_out: int | None = None,
    ) -> RunRow:
        return cls(
            name,
            digest,
            verdict.value,
            ";".join(sorted({c for c, _ in counted})),
            max((confidence for _, confidence in counted), default=0.0),
            latency_ms,
            error or "",
            inspected_at,
            defect_probability,
            grid,
            boxes_left_out,
        )


RUN_PAGE = 5000
# A run row's verdict columns, in `RunRow.of`'s order after name, digest and detections: one
# list for both exports (a column added to one of two copies was missing from the other).
_RUN_ROW_VERDICT = (
    Inspection.verdict,
    Inspection.latency_ms,
    Inspection.error,
    Inspection.inspected_at,
    Inspection.defect_probability,
    Inspection.thresholds["tile"],
    Inspection.boxes_left_out,
)


def run_rows(session: Session, run_id: int, page: int = RUN_PAGE) -> Iterator[RunRow]:
    """Every part a run judged, in the order written, `page` inspections a query.

    Paged by id, as columns, so a run of any length (a watch of weeks) is exported in constant
    memory and without one transaction held open across it: loaded whole as ORM objects, a
    run of 100000 parts took 6.0 s and 517 MB, against 1.4 s and 108 MB
    (bench/results/run_export_cpu.json)."""
    after = 0
    while True:
        found = session.execute(
            select(Inspection.id, Part.original_name, Part.content_hash, *_RUN_ROW_VERDICT)
            .join(Part, Part.id == Inspection.part_id)
            .where(Inspection.run_id == run_id, Inspection.id > after)
            .order_by(Inspection.id)
            .limit(page)
        ).all()
        if not found:
            return
        counted = counted_detections(session, [row[0] for row in found])
        for inspection_id, name, digest, verdict, *rest in found:
            yield RunRow.of(name, digest, verdict, counted.get(inspection_id, []), *rest)
        after = found[-1][0]


def source_rows(
    session: Session, run_id: int, named_keys: list[tuple[str, str]]
) -> Iterator[RunRow]:
    """The current verdict, by the run's model version, of each file a command read (its name
    and content key), in the order read: what the run judged and what it skipped as judged
    before, so that a resumed batch's CSV still lists the whole batch. A file whose part has
    no verdict (the command was stopped before it was written) is left out."""
    model_version_id = session.scalar(
        select(InspectionRun.model_version_id).where(InspectionRun.id == run_id)
    )
    for first in range(0, len(named_keys), _IN_LIST):
        chunk = named_keys[first : first + _IN_LIST]
        found = {
            digest: (inspection_id, verdict, rest)
            for digest, inspection_id, verdict, *rest in (
                session.execute(
                    select(Part.content_hash, Inspection.id, *_RUN_ROW_VERDICT)
                    .join(Part, Part.id == Inspection.part_id)
                    .where(
                        Part.content_hash.in_({digest for _, digest in chunk}),
                        Inspection.model_version_id == model_version_id,
                        Inspection.is_current(),
                    )
                )
            )
        }
        counted = counted_detections(session, [row[0] for row in found.values()])
        for name, digest in chunk:
            if digest not in found:
                continue
            inspection_id, verdict, rest = found[digest]
            yield RunRow.of(name, digest, verdict, counted.get(inspection_id, []), *rest)


@dataclass(frozen=True)
class StationActivity:
    """A station as the floor sees it now: its latest run and the verdicts it gave since a
    moment (not parts: a candidate judging there beside production gives a part a second)."""

    line: str
    station: str
    station_id: int
    run_id: int | None  # its latest run
    run_source: str
    run_open: bool  # the latest run is not marked finished: at work, watching, or killed
    last_inspected_at: datetime | None
    inspected: int  # since the moment asked for
    failed: int
    errors: int
    blank_frames: int  # among the errors: frames a camera sent blank
    # The model its latest run judges with: after a promotion, stations that were not started
    # again judge on with the earlier one, which nothing on the floor showed.
    run_model: str = ""
    # The grid its latest run judges in, as that run's latest verdict was stored: None, the
    # model's own grid (or no verdict yet: see run_judged); "off", or {"size", "overlap"}, a
    # station's --tile. A station judging a tiled model's strips whole (or an untiled model's
    # in tiles) looked on the floor like every other station of that model.
    run_tile: dict[str, Any] | str | None = None
    run_judged: bool = False  # its latest run has given a verdict, which run_tile is read from
    # Among the errors: empty captures (a file with no image, the camera's fault as a blank
    # frame is), each time one came; counted only among the errors, a camera writing nothing
    # was called out nowhere on the floor.
    empty_captures: int = 0

    @property
    def fail_rate(self) -> float | None:
        judged = self.inspected - self.errors
        return self.failed / judged if judged else None


def _judged_at() -> ColumnElement[int]:
    """The station a verdict was given at: its run's, or its part's for a verdict with no run
    (the query joins runs with an outer join)."""
    return func.coalesce(InspectionRun.station_id, Part.station_id)


# As blank_frame_reason words a blank frame's error, and decode_image an empty file's (db
# imports nothing of inspection).
_BLANK_FRAME = Inspection.error.like("blank image%")
_EMPTY_FILE = Inspection.error.like("empty file%")


def _live_counted() -> ColumnElement[bool]:
    """The verdicts the floor's figures count: the current ones, and every blank frame or
    empty file that came, superseded or not (the same black frame or empty file sent again is
    recorded again, superseding the one before, and each is the camera's fault and a part the
    station did not judge)."""
    return or_(Inspection.is_current(), _BLANK_FRAME, _EMPTY_FILE)


def station_activity(session: Session, since: datetime) -> list[StationActivity]:
    """Every station, its latest run, and what it judged from `since` on (current verdicts).

    A verdict counts at the station whose run gave it, where the part was judged, not where
    the part was first seen: the same image judged again at another station (a part passed
    along the line, a frame uploaded from the dashboard) is that station's work now, as its
    latest run and last verdict below already are."""
    judged_at = _judged_at()
    current = Inspection.is_current()
    counted = _live_counted()
    counts = {
        station_id: (int(n), int(f or 0), int(e or 0), int(b or 0), int(z or 0), last)
        for station_id, n, f, e, b, z, last in session.execute(
            select(
                judged_at,
                func.sum(case((counted, 1), else_=0)),
                func.sum(case((and_(current, Inspection.verdict == Verdict.FAIL), 1), else_=0)),
                func.sum(case((and_(counted, Inspection.verdict == Verdict.ERROR), 1), else_=0)),
                func.sum(case((_BLANK_FRAME, 1), else_=0)),
                func.sum(case((_EMPTY_FILE, 1), else_=0)),
                func.max(Inspection.inspected_at),
            )
            .join(Part, Part.id == Inspection.part_id)
            .outerjoin(InspectionRun, InspectionRun.id == Inspection.run_id)
            .where(Inspection.inspected_at >= since)
            .group_by(judged_at)
        )
    }
    # Its latest batch or watch: an upload or `defects inspect` at the station since, finished
    # at once, showed a watch still at work as "run finished", with the upload's model and
    # source (and a killed watch never came up as idle). A station with none but one-off runs
    # shows its latest.
    is_one_off = InspectionRun.one_off
    latest_run = (
        select(
            InspectionRun.station_id,
            func.coalesce(
                func.max(case((~is_one_off, InspectionRun.id))), func.max(InspectionRun.id)
            ).label("run_id"),
        )
        .group_by(InspectionRun.station_id)
        .subquery("latest_run")
    )
    stations = session.execute(
        select(Station, ProductionLine.name, InspectionRun, ModelVersion.name)
        .join(ProductionLine, ProductionLine.id == Station.line_id)
        .outerjoin(latest_run, latest_run.c.station_id == Station.id)
        .outerjoin(InspectionRun, InspectionRun.id == latest_run.c.run_id)
        .outerjoin(ModelVersion, ModelVersion.id == InspectionRun.model_version_id)
        .order_by(ProductionLine.name, Station.name)
    ).all()
    # Nothing since: a quiet station's last verdict, however old, as the latest of its runs'
    # last verdicts, one index seek a run (looked up through its parts, a quiet station cost a
    # scan of all of them: 1.0 s on PostgreSQL for a year of four stations, every 5 s refresh,
    # bench/results/history_scale_postgresql_before.json). Grouped, a few queries in all, not
    # two a quiet station (a plant of thousands of idle stations, every refresh).
    quiet = [station.id for station, _, _, _ in stations if station.id not in counts]
    last_of_run = (
        select(func.max(Inspection.inspected_at))
        .where(Inspection.run_id == InspectionRun.id)
        .scalar_subquery()
    )
    quiet_last: dict[int, datetime] = {}
    for first in range(0, len(quiet), _IN_LIST):
        ids = quiet[first : first + _IN_LIST]
        in_runs = session.execute(
            select(InspectionRun.station_id, func.max(last_of_run))
            .where(InspectionRun.station_id.in_(ids))
            .group_by(InspectionRun.station_id)
        )
        # (Verdicts recorded with no run, as none of the product's are: by their parts.)
        outside_runs = session.execute(
            select(Part.station_id, func.max(Inspection.inspected_at))
            .join(Part, Part.id == Inspection.part_id)
            .where(Inspection.run_id.is_(None), Part.station_id.in_(ids))
            .group_by(Part.station_id)
        )
        for station_id, last in [*in_runs, *outside_runs]:
            if last is not None and (station_id not in quiet_last or last > quiet_last[station_id]):
                quiet_last[station_id] = last
    run_tiles = _run_tiles(session, [run.id for _, _, run, _ in stations if run is not None])
    found = []
    for station, line, run, model in stations:
        n, failed, errors, blank, empty, last = counts.get(
            station.id, (0, 0, 0, 0, 0, quiet_last.get(station.id))
        )
        found.append(
            StationActivity(
                line,
                station.name,
                station.id,
                run.id if run else None,
                run.source if run else "",
                run is not None and run.finished_at is None,
                last,
                n,
                failed,
                errors,
                blank,
                model or "",
                run_tiles.get(run.id) if run else None,
                run is not None and run.id in run_tiles,
                empty_captures=empty,
            )
        )
    return found


def _run_tiles(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any] | str | None]:
    """The grid each run judges in, from its latest verdict's operating point (a verdict in
    another grid than the model's carries it as "tile"; the run itself records none): runs
    with no verdict yet are left out. A few queries in all, not one a station; each run's
    latest verdict found through the (run, time) index, not by reading every verdict of a run
    (a watch's run holds weeks of them, and the Live page asks at each refresh)."""
    found: dict[int, dict[str, Any] | str | None] = {}
    latest = (
        select(Inspection.id)
        .where(Inspection.run_id == InspectionRun.id)
        .order_by(Inspection.inspected_at.desc(), Inspection.id.desc())
        .limit(1)
        .correlate(InspectionRun)
        .scalar_subquery()
    )
    for first in range(0, len(run_ids), _IN_LIST):
        for run_id, point in session.execute(
            select(InspectionRun.id, Inspection.thresholds)
            .join(Inspection, Inspection.id == latest)
            .where(InspectionRun.id.in_(run_ids[first : first + _IN_LIST]))
        ):
            found[run_id] = (point or {}).get("tile")
    return found


@dataclass(frozen=True)
class MinuteVolume:
    minute: str  # "YYYY-MM-DD HH:MM" (UTC, as stored)
    inspected: int
    failed: int
    errors: int


def _minute_column(session: Session) -> ColumnElement[str]:
    # Neither SQLite nor PostgreSQL truncates to the minute in the other's words.
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M", Inspection.inspected_at)
    return func.to_char(func.date_trunc("minute", Inspection.inspected_at), "YYYY-MM-DD HH24:MI")


def minute_volume(
    session: Session, since: datetime, station_id: int | None = None
) -> list[MinuteVolume]:
    """Verdicts given per minute from `since` on, oldest first, counted as station_activity
    counts them (`_live_counted`). Of every station, a part judged again by a candidate at a
    station of its own (`defects batch --model`) is counted once, at the verdict of the model
    that judged it first, as the History page counts it: the plant's parts, not twice them."""
    minute = _minute_column(session)
    counted = _live_counted()
    if station_id is None:
        counted = and_(counted, or_(_deciding_verdict(), _BLANK_FRAME, _EMPTY_FILE))
    query = (
        select(
            minute,
            func.count(Inspection.id),
            func.sum(case((Inspection.verdict == Verdict.FAIL, 1), else_=0)),
            func.sum(case((Inspection.verdict == Verdict.ERROR, 1), else_=0)),
        )
        .join(Part, Part.id == Inspection.part_id)
        .where(Inspection.inspected_at >= since, counted)
        .group_by(minute)
        .order_by(minute)
    )
    if station_id is not None:  # judged there, as station_activity counts
        query = query.outerjoin(InspectionRun, InspectionRun.id == Inspection.run_id).where(
            _judged_at() == station_id
        )
    return [
        MinuteVolume(str(m), int(n), int(f or 0), int(e or 0))
        for m, n, f, e in session.execute(query)
    ]


def _judged_since(since: datetime) -> ColumnElement[bool]:
    """A part with a verdict given at or after `since`: the newest verdict of a part is a
    current one (a superseded verdict has a later one beside it), so only current verdicts
    are looked at, which the partial index on (part, model) serves."""
    return exists().where(
        Inspection.part_id == Part.id, Inspection.is_current(), Inspection.inspected_at >= since
    )


def _failed_now() -> ColumnElement[bool]:
    return exists().where(
        Inspection.part_id == Part.id, Inspection.is_current(), Inspection.verdict == Verdict.FAIL
    )


def _reviewed() -> ColumnElement[bool]:
    return exists().where(Review.part_id == Part.id)


def _old_parts(before: datetime, since: datetime | None) -> list[list[ColumnElement[bool]]]:
    """The parts last judged before `before`, as one or two disjoint sets of conditions; with
    `since` (the cut-off of a prune that looked at every part older than it), only those last
    judged from `since` on. That is exactly what the earlier prune did not look at: a part it
    saw was captured before `since` and not judged since. The two sets keep each query to a
    range of an index (parts captured in the window; verdicts given in it) where one OR over
    an EXISTS would read every part of a station's years, night after night."""
    old = [Part.captured_at < before, Part.stored_path != "", ~_judged_since(before)]
    if since is None:
        return [old]
    judged_in_window = select(Inspection.part_id).where(
        Inspection.is_current(), Inspection.inspected_at >= since, Inspection.inspected_at < before
    )
    return [
        [*old, Part.captured_at >= since],
        [*old, Part.captured_at < since, Part.id.in_(judged_in_window)],
    ]


def prunable_images(
    session: Session,
    before: datetime,
    keep_failed: bool,
    keep_reviewed: bool,
    since: datetime | None = None,
) -> Iterator[tuple[int, str]]:
    """(part id, recorded image path) of the parts last judged before `before` (and, with
    `since`, from `since` on) whose image may go: failed parts (the evidence a reviewer looks
    at) and reviewed ones (the parts a plant retrains on) are left out unless asked. Streamed:
    a station's year is millions."""
    kept = []
    if keep_failed:
        kept.append(~_failed_now())
    if keep_reviewed:
        kept.append(~_reviewed())
    for old in _old_parts(before, since):
        query = select(Part.id, Part.stored_path).where(*old, *kept).order_by(Part.id)
        for part_id, stored_path in session.execute(query.execution_options(yield_per=2000)):
            yield int(part_id), str(stored_path)


def kept_old_parts(
    session: Session, before: datetime, keep_failed: bool, since: datetime | None = None
) -> tuple[int, int]:
    """Of the parts last judged before `before` (and, with `since`, from `since` on): how many
    failed, and how many more were reviewed (those whose images a prune keeps by default).
    Where failed parts are not kept, the reviewed count takes in the failed ones reviewed:
    their images are kept as reviewed."""
    failed = reviewed = 0
    counted_failed = [~_failed_now()] if keep_failed else []
    for old in _old_parts(before, since):
        failed += session.scalar(select(func.count(Part.id)).where(*old, _failed_now())) or 0
        reviewed += (
            session.scalar(select(func.count(Part.id)).where(*old, *counted_failed, _reviewed()))
            or 0
        )
    return int(failed), int(reviewed)
