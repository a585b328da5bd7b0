"""Reviews: a person's truth about parts, the queue of parts to check, and what they say.

The queue puts the least certain parts first: those whose strongest evidence (a detection's
confidence, or the part classifier's defect probability) lies closest to the threshold that
decided the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Subquery, and_, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, selectinload

from db.models import (
    Dataset,
    Inspection,
    Part,
    Prediction,
    Review,
    ReviewKind,
    Verdict,
    database_utcnow,
)
from db.registry import class_name_as_stored, look_alike_classes

DEFECT_REVIEWS = (ReviewKind.CONFIRMED_DEFECT, ReviewKind.MISSED_DEFECT)


@dataclass(frozen=True)
class QueueItem:
    inspection_id: int
    part_id: int
    margin: float  # distance of the deciding score from its threshold; small = uncertain


def _threshold_for(inspection: Inspection, class_name: str) -> float:
    thresholds = inspection.thresholds or {}
    per_class = thresholds.get("per_class") or {}
    return float(per_class.get(class_name, thresholds.get("default", 0.25)))


def uncertainty_margin(inspection: Inspection) -> float:
    margins = [
        abs(p.confidence - _threshold_for(inspection, p.class_name)) for p in inspection.predictions
    ]
    part_threshold = ((inspection.thresholds or {}).get("classifier") or {}).get("part")
    if inspection.defect_probability is not None and part_threshold is not None:
        margins.append(abs(inspection.defect_probability - float(part_threshold)))
    # A pass with nothing found at all is the most certain kind of verdict.
    return min(margins, default=1.0)


def standing_defect(review: type[Review] = Review) -> ColumnElement[bool]:
    """A review (`review`, correlated) saying the part is defective that stands: a missed
    defect, or a confirmation its detection's false calls do not outnumber. Each reviewer has
    one word on a detection, so a dispute (one confirmation, one false call) counts as a defect,
    an escape never hidden by a tie, until a third reviewer's word settles it either way."""
    word = aliased(Review)

    def said(kind: ReviewKind) -> ColumnElement[int]:
        return (
            select(func.count(word.id))
            .where(word.prediction_id == review.prediction_id, word.kind == kind)
            .scalar_subquery()
        )

    return and_(
        review.kind.in_(DEFECT_REVIEWS),
        or_(
            review.prediction_id.is_(None),
            said(ReviewKind.FALSE_CALL) <= said(ReviewKind.CONFIRMED_DEFECT),
        ),
    )


def _has_dispute(part_id: ColumnElement[int]) -> ColumnElement[bool]:
    """A detection of the part (`part_id`, correlated) reviewers are split on evenly (`disputed`):
    the part waits in the queue for the word that settles it."""
    word = aliased(Review)
    said = func.sum(case((word.kind == ReviewKind.CONFIRMED_DEFECT, 1), else_=-1))
    return (
        select(word.prediction_id)
        .where(
            word.part_id == part_id,
            word.prediction_id.is_not(None),
            word.kind.in_((ReviewKind.CONFIRMED_DEFECT, ReviewKind.FALSE_CALL)),
        )
        .group_by(word.prediction_id)
        .having(said == 0, func.count(func.distinct(word.kind)) > 1)
        .exists()
    )


def _undecided(detection: type[Prediction] = Prediction) -> ColumnElement[bool]:
    """A detection (`detection`, correlated) no review has decided yet."""
    # (Its own alias: inside a query of reviews, it would otherwise be taken for that review.)
    decision = aliased(Review)
    return ~select(decision.id).where(decision.prediction_id == detection.id).exists()


def _decided_in_full(part_id: ColumnElement[int]) -> ColumnElement[bool]:
    """A verdict of the part with detections, every one of them decided by a reviewer.

    Found from the part's reviews of detections, then that verdict's other detections, all by
    index: by the part's inspections it was a scan of every inspection for each reviewed part
    (no index has inspections by part alone), seconds for the rates of 200000 parts."""
    reviewed, detection, sibling = aliased(Review), aliased(Prediction), aliased(Prediction)
    return (
        select(reviewed.id)
        .join(detection, detection.id == reviewed.prediction_id)
        .where(
            reviewed.part_id == part_id,
            ~select(sibling.id)
            .where(sibling.inspection_id == detection.inspection_id, _undecided(sibling))
            .exists(),
        )
        .exists()
    )


def _judged_with_nothing_found(part_id: ColumnElement[int]) -> ColumnElement[bool]:
    """The part's current verdict has no detection at all: a reviewer who added a missed
    defect to it has said all there is to say. (Current: by the index of current verdicts.)"""
    return (
        select(Inspection.id)
        .where(
            Inspection.part_id == part_id,
            Inspection.is_current(),
            Inspection.verdict != Verdict.ERROR,
            ~select(Prediction.id).where(Prediction.inspection_id == Inspection.id).exists(),
        )
        .exists()
    )


def truth_subquery() -> Subquery:
    """Parts whose truth reviewers have given: `part_id`, `defective` (1 or 0) and `complete`
    (1 where every detection of a verdict is decided, or the part is marked good: its boxes
    are then all its defects).

    A part is defective once any review confirms a defect or adds a missed one, complete or
    not (a confirmation outvoted by false calls on its detection aside: `standing_defect`). It is good only when complete with no such review: marked good, or every detection of
    a verdict marked a false call. A part with some detections marked false calls and others
    not yet decided is neither (it was counted good, a false call, while still in the queue)."""
    defective = func.max(case((standing_defect(), 1), else_=0))
    marked_good = func.max(case((Review.kind == ReviewKind.GOOD_PART, 1), else_=0))
    about_detections = func.max(case((Review.prediction_id.is_not(None), 1), else_=0))
    complete = case(
        (
            or_(
                marked_good == 1,
                _decided_in_full(Review.part_id),
                and_(about_detections == 0, _judged_with_nothing_found(Review.part_id)),
            ),
            1,
        ),
        else_=0,
    )
    return (
        select(
            Review.part_id.label("part_id"),
            defective.label("defective"),
            complete.label("complete"),
        )
        .group_by(Review.part_id)
        .having(or_(defective == 1, complete == 1))
        .subquery("truth")
    )


def review_queue(
    session: Session, limit: int = 50, line_id: int | None = None, scan: int = 2000
) -> list[QueueItem]:
    """Inspected parts not yet reviewed in full, least certain first (among the `scan` most
    recent).

    A part stays until each detection of a verdict of it is decided (confirmed or a false
    call), or it is marked good, or, where no detection of it was ever decided, the current
    verdict looked at found nothing and a review was given: `truth_subquery`'s `complete`,
    asked of each current verdict (of each model version that judged the part), so that a
    part the export leaves out as undecided is always still offered. (One judged by two
    versions and reviewed where one found nothing is complete for the export, and still
    offered with the other's verdict.) A part with a detection reviewers are split on evenly
    waits too, for the word that settles it (it had left the queue, and nobody saw it again).
    Leaving at its first review (as it once did) left its other detections undecided for good,
    so an export labelled them background.

    A part judged again (a recalibration, another model version) after some of its detections
    were decided is offered with the verdict those decisions were made on (`verdicts_reviewed`),
    so that what was decided is kept and shown and only the rest is asked; a part reviewed in
    full on an earlier verdict is not asked again. (A part partly reviewed, then judged again,
    once left the queue while the export still waited for it: it could never be finished.)"""
    of_part = Review.part_id == Inspection.part_id
    nothing_found = ~select(Prediction.id).where(Prediction.inspection_id == Inspection.id).exists()
    reviewed_in_full = or_(
        select(Review.id).where(of_part, Review.kind == ReviewKind.GOOD_PART).exists(),
        _decided_in_full(Inspection.part_id),
        and_(
            select(Review.id).where(of_part).exists(),
            ~select(Review.id).where(of_part, Review.prediction_id.is_not(None)).exists(),
            nothing_found,
        ),
    )
    query = (
        select(Inspection)
        .join(Part, Part.id == Inspection.part_id)
        .where(
            Inspection.verdict != Verdict.ERROR,
            Inspection.is_current(),
            or_(~reviewed_in_full, _has_dispute(Inspection.part_id)),
        )
        .options(selectinload(Inspection.predictions))
        .order_by(Inspection.inspected_at.desc())
        .limit(scan)
    )
    if line_id is not None:
        query = query.where(Part.line_id == line_id)
    inspections = list(session.scalars(query))
    began = verdicts_reviewed(session, list({i.part_id for i in inspections}))
    by_id = {i.id: i for i in inspections}
    missing = [i for i in began.values() if i not in by_id]
    if missing:
        by_id.update(
            (i.id, i)
            for i in session.scalars(
                select(Inspection)
                .where(Inspection.id.in_(missing))
                .options(selectinload(Inspection.predictions))
            )
        )
    items = [
        QueueItem(shown.id, shown.part_id, uncertainty_margin(shown))
        for shown in {by_id[began.get(i.part_id, i.id)] for i in inspections}
    ]
    seen: set[int] = set()
    unique = []
    for item in sorted(items, key=lambda i: (i.margin, -i.inspection_id)):
        if item.part_id not in seen:
            seen.add(item.part_id)
            unique.append(item)
    return unique[:limit]


def verdicts_reviewed(session: Session, part_ids: list[int]) -> dict[int, int]:
    """The verdict each part's decisions of detections were made on (its latest decision's),
    by part; parts with no decided detection are not in it. The Review page shows a part by
    that verdict until it is finished, current or not: its decisions stay in front of the
    reviewer, and finishing it makes the part's truth complete (`_decided_in_full`)."""
    found: dict[int, int] = {}
    for start in range(0, len(part_ids), 500):  # (a bound on the IN list's parameters)
        rows = session.execute(
            select(Review.part_id, Prediction.inspection_id)
            .join(Prediction, Prediction.id == Review.prediction_id)
            .where(Review.part_id.in_(part_ids[start : start + 500]))
            .order_by(Review.id)
        )
        found.update((part_id, inspection_id) for part_id, inspection_id in rows)
    return found


def part_item(session: Session, part_id: int) -> QueueItem | None:
    """The part's verdict as a queue item, waiting or not: the part a reviewer has just
    finished stays within reach. (It left the queue at its last decision, and a missed defect,
    added below the detections, was often still to come: it was then lost, and the export
    taught that defect as background.) The verdict its detections were decided on, where
    there is one (`verdicts_reviewed`), else its latest current verdict."""
    reviewed_on = verdicts_reviewed(session, [part_id]).get(part_id)
    inspection = session.scalars(
        select(Inspection)
        .where(
            Inspection.part_id == part_id,
            Inspection.verdict != Verdict.ERROR,
            Inspection.id == reviewed_on if reviewed_on is not None else Inspection.is_current(),
        )
        .options(selectinload(Inspection.predictions))
        .order_by(Inspection.inspected_at.desc(), Inspection.id.desc())
    ).first()
    if inspection is None:
        return None
    return QueueItem(inspection.id, part_id, uncertainty_margin(inspection))


def _prediction(session: Session, prediction_id: int) -> Prediction:
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        raise LookupError(f"no prediction {prediction_id}")
    return prediction


def _review_prediction(
    session: Session, prediction_id: int, kind: ReviewKind, reviewer: str
) -> Review:
    prediction = _prediction(session, prediction_id)
    box = (prediction.x1, prediction.y1, prediction.x2, prediction.y2)
    return _add(
        session,
        prediction.inspection.part_id,
        kind,
        reviewer,
        prediction.class_name,
        box,
        prediction_id,
    )


def confirm_defect(session: Session, prediction_id: int, reviewer: str) -> Review:
    return _review_prediction(session, prediction_id, ReviewKind.CONFIRMED_DEFECT, reviewer)


def mark_false_call(session: Session, prediction_id: int, reviewer: str) -> Review:
    return _review_prediction(session, prediction_id, ReviewKind.FALSE_CALL, reviewer)


def settle_dispute(session: Session, prediction_id: int, kind: ReviewKind, reviewer: str) -> Review:
    """`kind` (a confirmation or a false call) on a detection reviewers are split on evenly
    (`disputed`), the word that settles it; refused (`ReviewRecorded`, nothing written) where
    it is no longer split. Two reviewers settling one dispute in the same moment were both
    recorded, a tie again, and each was told the dispute was settled by their word."""
    prediction = _prediction(session, prediction_id)
    _hold_part(session, prediction.inspection.part_id)
    words = [
        (said, who)
        for said, who in session.execute(
            select(Review.kind, Review.reviewer)
            .where(Review.prediction_id == prediction_id)
            .order_by(Review.id)
        )
    ]
    if not disputed(words):
        raise ReviewRecorded(f"settled meanwhile ({said_of(words)}): your word was not recorded")
    return _review_prediction(session, prediction_id, kind, reviewer)


def decided_words(session: Session, inspection_id: int) -> dict[int, list[tuple[ReviewKind, str]]]:
    """Every word given on the detections of a verdict: prediction id to (kind, reviewer), in
    the order given. Two reviewers on pages drawn before the other's click may both decide one
    detection, and the database keeps both."""
    found: dict[int, list[tuple[ReviewKind, str]]] = {}
    for prediction_id, kind, reviewer in session.execute(
        select(Review.prediction_id, Review.kind, Review.reviewer)
        .join(Prediction, Prediction.id == Review.prediction_id)
        .where(Prediction.inspection_id == inspection_id)
        .order_by(Review.id)
    ):
        found.setdefault(prediction_id, []).append((kind, reviewer))
    return found


def said_of(words: list[tuple[ReviewKind, str]]) -> str:
    """What a detection's decision counts as, in words: "confirmed defect" or "false call";
    where reviewers disagree, who said what and what it counts as: the word more reviewers
    gave, a defect on a tie (as `standing_defect` counts it for the rates and the export).
    Said as the latest word, the page told the reviewer who marked a false call after a
    confirmation that the box would not be taught, when it was."""
    by_kind: dict[ReviewKind, list[str]] = {}
    for kind, reviewer in words:
        if reviewer not in by_kind.setdefault(kind, []):
            by_kind[kind].append(reviewer)
    if len(by_kind) == 1:
        return next(iter(by_kind)).replace("_", " ")
    confirmed = by_kind.get(ReviewKind.CONFIRMED_DEFECT, [])
    false_call = by_kind.get(ReviewKind.FALSE_CALL, [])
    said = f"confirmed by {', '.join(confirmed)}, marked a false call by {', '.join(false_call)}"
    if len(confirmed) == len(false_call):
        return f"{said}: counted as a defect until another reviewer settles it"
    counted = "a defect" if len(confirmed) > len(false_call) else "a false call"
    most, fewest = sorted((len(confirmed), len(false_call)), reverse=True)
    return f"{said}: counted as {counted} ({most} to {fewest})"


def disputed(words: list[tuple[ReviewKind, str]]) -> bool:
    """Reviewers gave a detection both words, as many of each: another reviewer settles it."""
    kinds = [kind for kind, _ in words]
    return kinds.count(ReviewKind.CONFIRMED_DEFECT) == kinds.count(ReviewKind.FALSE_CALL) > 0


def decisions(session: Session, inspection_id: int) -> dict[int, str]:
    """The detections of a verdict a person has decided: prediction id to what the decision
    counts as (`said_of`)."""
    return {
        prediction_id: said_of(words)
        for prediction_id, words in decided_words(session, inspection_id).items()
    }


def withdraw_decision(session: Session, prediction_id: int, reviewer: str) -> list[Review]:
    """The reviewer's own decisions of one detection, deleted: how one of two reviewers who
    disagree on it gives way (the other's word then stands alone); returned as they were."""
    mine = list(
        session.scalars(
            select(Review).where(
                Review.prediction_id == prediction_id, Review.reviewer == reviewer.strip()
            )
        )
    )
    if not mine:
        raise LookupError(
            f"{reviewer.strip() or 'nobody'} has no decision of detection {prediction_id}"
        )
    for each in mine:
        session.delete(each)
    session.flush()
    return mine


# The note of the reviews one "the others are false calls" writes: one action, undone as one.
THE_REST_NOTE = "the rest of verdict"


def decide_the_rest(session: Session, inspection_id: int, reviewer: str) -> int:
    """Every detection of a verdict not yet decided marked a false call, once the real defects
    are confirmed (a part can hold dozens of faint detections); returns how many."""
    undecided = session.scalars(
        select(Prediction.id).where(Prediction.inspection_id == inspection_id, _undecided())
    ).all()
    note = f"{THE_REST_NOTE} {inspection_id}"
    for prediction_id in undecided:
        mark_false_call(session, prediction_id, reviewer).note = note
    session.flush()
    return len(undecided)


# The `source_format` of a dataset exported from reviews (training/backtest.py).
REVIEW_EXPORT = "reviews"


def reviewer_classes(session: Session, known: list[str]) -> list[str]:
    """The classes of the defects reviewers recorded, added as missed or confirmed, that
    `known` (the production detector's) lacks: new defect types found on the line, and the
    classes of a detector since replaced by one that does not know them (a rollback), whose
    confirmed detections are kept as the missed ones are (a confirmed box of such a class once
    left its part out of the export, while a missed one of the same class was kept). In the
    order an export of reviews listed them already (the oldest export first), then those
    never exported in the order they were first recorded (then by name): a version fine-tuned
    on one export knows its classes in that order, and the next export must extend it, not
    reorder it.

    Sorted by name, a class added later but named earlier ("bubble" after "crack") came first;
    ordered by the earliest review alone, undoing the first crack after an export moved crack
    after bubble: either way the next export no longer extended a version fine-tuned on the
    one before (refused as reordered).

    A confirmation outvoted by false calls (`standing_defect`) is not a defect found: its
    class was offered as a new one, and the export said its parts were left out."""
    first_added = func.min(Review.created_at)
    rows = session.execute(
        select(Review.class_name, first_added)
        .where(standing_defect(), Review.class_name.is_not(None))
        .group_by(Review.class_name)
        .order_by(first_added, Review.class_name)
    )
    found = [name for name, _ in rows if name and name not in known]
    exported: list[str] = []
    for classes in session.scalars(
        select(Dataset.classes).where(Dataset.source_format == REVIEW_EXPORT).order_by(Dataset.id)
    ):
        exported += [c for c in classes or [] if c in found and c not in exported]
    return exported + [name for name in found if name not in exported]


def _checked_class(
    session: Session, class_name: str, classes: list[str] | None, new_class: bool
) -> str:
    """The class a missed defect is recorded under. One the production detector does not know
    is a new defect type: taken only when the reviewer says so (a typo would otherwise become
    a class of its own, trained on and counted apart), and refused where it reads as a known
    class or a new one added already spelled another way."""
    name = class_name_as_stored(class_name)
    if classes is None or name in classes:
        return name
    if not new_class:
        raise ValueError(
            f"new class {name!r}: not one the production detector knows "
            f"({', '.join(classes)}); add it as a new class if it is one"
        )
    added = reviewer_classes(session, classes)
    if name in added:
        return name
    for known, what in [(c, "a class the production detector knows") for c in classes] + [
        (c, "a new class reviewers added already") for c in added
    ]:
        if look_alike_classes(name, known):
            raise ValueError(
                f"new class {name!r} looks like {known!r}, {what}: pick that one, or give "
                "the new class a name that cannot be taken for it"
            )
    return name


def add_missed_defect(
    session: Session,
    part_id: int,
    class_name: str,
    box: tuple[float, float, float, float],
    reviewer: str,
    classes: list[str] | None = None,
    new_class: bool = False,
) -> Review:
    """`classes`: the production detector's, where known; a defect of another class is a new
    defect type, recorded only with `new_class` (see `_checked_class`), and exported as a class
    appended to the detector's, to fine-tune it on."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError("a defect box needs x2 > x1 and y2 > y1")
    class_name = _checked_class(session, class_name, classes, new_class)
    part = session.get(Part, part_id)
    if part is None:
        raise LookupError(f"no part {part_id}")
    if part.width and part.height and (x1 < 0 or y1 < 0 or x2 > part.width or y2 > part.height):
        raise ValueError(f"the box lies outside the {part.width}x{part.height} image")
    _hold_part(session, part_id)
    # Only boxes that stand (`standing_defect`): a confirmation its detection's false calls
    # outvote is neither counted nor exported, so a defect seen there was refused as "drawn on
    # the part now" and lost. Added, it is the reviewer's own word, as any missed defect is.
    for same in session.scalars(
        select(Review)
        .where(
            Review.part_id == part_id,
            standing_defect(),
            Review.class_name == class_name,
            Review.x1.is_not(None),
        )
        .order_by(Review.id)
    ):
        recorded = (same.x1, same.y1, same.x2, same.y2)
        if recorded == (x1, y1, x2, y2):  # (a second press of Add wrote the same label twice)
            raise ValueError(f"this {class_name} box is recorded already (by {same.reviewer})")
        if _overlap(recorded, (x1, y1, x2, y2)) >= SAME_DEFECT_IOU:  # type: ignore[arg-type]
            # Two reviewers, each on a page drawn before the other's Add (or over a detection
            # another confirmed meanwhile), drew one defect twice: the export taught it as two.
            said = "added" if same.kind == ReviewKind.MISSED_DEFECT else "confirmed"
            raise ValueError(
                f"a {class_name} box over the same place is recorded already ({said} by "
                f"{same.reviewer}, {_corners(recorded)}): it is drawn on the part now; undo it "
                "first to draw it again"
            )
    return _add(session, part_id, ReviewKind.MISSED_DEFECT, reviewer, class_name, box)


def _hold_part(session: Session, part_id: int) -> None:
    """The part's row held to the end of the transaction (PostgreSQL: its row lock; SQLite:
    the database's write lock), so that a look at its reviews and the write it decides run
    whole, one request after another: two reviewers adding one defect in the same moment each
    found no box there, and both were recorded. (A unique index could refuse the same box
    only, not one drawn a few pixels off.)"""
    session.execute(update(Part).where(Part.id == part_id).values(id=Part.id))


# Two boxes of one class overlapping this much (intersection over union) are one defect, as
# evaluation matches a detection to a label.
SAME_DEFECT_IOU = 0.5


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _corners(box: tuple[float | None, ...]) -> str:
    return ", ".join(f"{c:g}" for c in box if c is not None)


def missed_defects(session: Session, part_id: int) -> list[Review]:
    """The defects reviewers added to the part, oldest first: the Review page draws them, so
    whoever adds one sees where it landed and the next reviewer sees it is there already."""
    return list(
        session.scalars(
            select(Review)
            .where(Review.part_id == part_id, Review.kind == ReviewKind.MISSED_DEFECT)
            .order_by(Review.id)
        )
    )


def mark_good(session: Session, part_id: int, reviewer: str) -> Review:
    """Refused where a review says the part is defective: the defective reading would win, and
    "marked good" would have been said for nothing. The refusal names every defect that stands
    (`_defective_by`): it named the oldest alone, often a box drawn over a confirmed detection
    that the export does not even teach, and said "undo that review first" while the
    confirmation kept the part defective. A confirmation its detection's false calls outvote
    does not refuse it (`standing_defect`, as the rates and the export count it): it once
    did, and only its reviewer could undo it."""
    _check_reviewer(reviewer)
    standing = list(
        session.scalars(
            select(Review).where(Review.part_id == part_id, standing_defect()).order_by(Review.id)
        )
    )
    if standing:
        raise ValueError(_defective_by(session, part_id, standing))
    return _add(session, part_id, ReviewKind.GOOD_PART, reviewer)


def _defective_by(session: Session, part_id: int, standing: list[Review]) -> str:
    """Why the part cannot be marked good, in words: each defect that stands (`standing`: its
    standing reviews, oldest first), a detection once however many confirmed it, and what
    makes the part good."""
    given_way = drawn_over_detections(session, part_id)
    # A detection by its first standing review (dicts keep the order first seen).
    defects: dict[int | tuple[str, int], list[Review]] = {}
    for review in standing:
        key = review.prediction_id if review.prediction_id is not None else ("missed", review.id)
        defects.setdefault(key, []).append(review)
    said: list[str] = []
    to_undo = disputes = 0
    for key, reviews in defects.items():
        first = reviews[0]
        if not isinstance(key, int):
            drawn = ", drawn over a confirmed detection" if first.id in given_way else ""
            said.append(f"a missed defect ({first.class_name}, by {first.reviewer}{drawn})")
            to_undo += 1
            continue
        words = [
            (kind, who)
            for kind, who in session.execute(
                select(Review.kind, Review.reviewer)
                .where(Review.prediction_id == key)
                .order_by(Review.id)
            )
        ]
        if any(kind == ReviewKind.FALSE_CALL for kind, _ in words):
            # Reviewers disagree on it: "undo that review" asked for another's word to go, when
            # a false call (a third reviewer's, settling a tie) is what makes the part good.
            said.append(f"a {first.class_name} detection {said_of(words)}")
            disputes += 1
        else:
            by = ", ".join(r.reviewer for r in reviews)
            said.append(f"a confirmed defect ({first.class_name}, by {by})")
            to_undo += len(reviews)
    remedy = []
    if to_undo:
        remedy.append("undo that review first" if to_undo == 1 else "undo those reviews first")
    if disputes:
        remedy.append(
            "the part is good once false calls outnumber confirmations of "
            + (
                "it"
                if len(said) == 1
                else "the disputed detection"
                if disputes == 1
                else "each disputed detection"
            )
        )
    else:
        remedy[-1] += " if the part is good"
    has = said[0] if len(said) == 1 else f"{len(said)} defects that stand: {'; '.join(said)}"
    return f"part {part_id} has {has}: {', and '.join(remedy)}"


def last_review(session: Session, part_id: int, reviewer: str) -> Review | None:
    """The reviewer's latest review of the part, where there is one: what "undo" would take
    back (the Review page offers undo only then; it offered it after the only review was
    undone, and the click said there was nothing to undo)."""
    return session.scalars(
        select(Review)
        .where(Review.part_id == part_id, Review.reviewer == reviewer.strip())
        .order_by(Review.id.desc())
    ).first()


def good_marks(session: Session, part_id: int) -> list[Review]:
    """The part's "marked good" reviews, oldest first: the Review page says who marked it good
    and when, so a reviewer about to confirm a defect on it knows (it never said)."""
    return list(
        session.scalars(
            select(Review)
            .where(Review.part_id == part_id, Review.kind == ReviewKind.GOOD_PART)
            .order_by(Review.id)
        )
    )


def counted_defective(session: Session, part_id: int) -> bool | None:
    """What the rates and the export count the part as (`truth_subquery`): defective, good,
    or None while reviewers have not given its truth. Asked of the same query, so that what
    the Review page says of a part marked good agrees with what is counted."""
    truth = truth_subquery()
    defective = session.scalar(select(truth.c.defective).where(truth.c.part_id == part_id))
    return None if defective is None else bool(defective)


def undo_last_review(session: Session, part_id: int, reviewer: str) -> list[Review]:
    """The reviewer's latest review action on the part, deleted (a mis-click is otherwise for
    ever: a wrong "confirm" made the part defective for good); returned as it was. "The others
    are false calls" is one action of many reviews, undone together: undo took back one of
    them and left the rest decided."""
    mine = (Review.part_id == part_id, Review.reviewer == reviewer.strip())
    review = last_review(session, part_id, reviewer)
    if review is None:
        raise LookupError(f"{reviewer.strip() or 'nobody'} has no review of part {part_id} to undo")
    undone = [review]
    if review.note.startswith(THE_REST_NOTE):
        undone = list(session.scalars(select(Review).where(*mine, Review.note == review.note)))
    for each in undone:
        session.delete(each)
    session.flush()
    return undone


def _check_reviewer(reviewer: str) -> None:
    if not reviewer.strip():
        raise ValueError("a review needs the reviewer's name")


class ReviewRecorded(ValueError):
    """The reviewer's word on this is recorded already (another tab, a double click whose
    writes crossed): what it says, so the reviewer knows what stands."""


def _add(
    session: Session,
    part_id: int,
    kind: ReviewKind,
    reviewer: str,
    class_name: str | None = None,
    box: tuple[float | None, float | None, float | None, float | None] | None = None,
    prediction_id: int | None = None,
) -> Review:
    """Written unless the reviewer's one word on it is there already (`Review`'s unique
    indexes), then `ReviewRecorded`: the insert does nothing on that conflict, so a write that
    lost the race leaves the session's transaction whole (a unique violation would end it, and
    a savepoint on SQLite commits early)."""
    _check_reviewer(reviewer)
    x1, y1, x2, y2 = box or (None, None, None, None)
    who = reviewer.strip()
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    written = session.scalars(
        insert(Review)
        .values(
            part_id=part_id,
            prediction_id=prediction_id,
            kind=kind,
            class_name=class_name,
            x1=x1,
            y1=y1,
            x2=x2,
            y2=y2,
            reviewer=who,
            note="",
            # (By the database's clock, as verdicts are: the queue compares the two.)
            created_at=database_utcnow(session),
        )
        .on_conflict_do_nothing()
        .returning(Review)
    ).first()
    if written is not None:
        return written
    if prediction_id is not None:
        recorded = session.scalars(
            select(Review).where(Review.prediction_id == prediction_id, Review.reviewer == who)
        ).one()
        said = recorded.kind.value.replace("_", " ")
        raise ReviewRecorded(
            f"{who} decided this detection already ({said}, at {recorded.created_at:%H:%M:%S}): "
            "that stands; undo it first to decide it again"
        )
    raise ReviewRecorded(f"{who} marked part {part_id} good already: that stands")


@dataclass(frozen=True)
class PartTruth:
    part_id: int
    stored_path: str
    defective: bool
    # Every detection decided (or the part marked good): `boxes` are all its defects. A part
    # known defective by one confirmed defect, its other detections not yet decided, is not.
    complete: bool
    boxes: list[tuple[str, float, float, float, float]]  # class, x1, y1, x2, y2
    original_name: str = ""  # as recorded: the camera's file, which `stored_path` does not keep


def _outvoted(reviews: list[Review]) -> set[int]:
    """The detections whose false calls outnumber their confirmations (`standing_defect`)."""
    votes: dict[int, int] = {}
    for review in reviews:
        if review.prediction_id is not None and review.kind != ReviewKind.MISSED_DEFECT:
            confirmed = review.kind == ReviewKind.CONFIRMED_DEFECT
            votes[review.prediction_id] = votes.get(review.prediction_id, 0) + (
                1 if confirmed else -1
            )
    return {prediction_id for prediction_id, vote in votes.items() if vote < 0}


def _drawn_over(review: Review, confirmed: list[Review]) -> Review | None:
    """The standing confirmation (`confirmed`: the part's) a missed defect was drawn over, the
    one it overlaps most, where there is one: one defect, taught by the detection's box alone.
    A box drawn there while the detection stood is refused at Add (`add_missed_defect`), so
    one drawn while it was undecided or outvoted gives way once a later confirmation makes it
    stand: the export then holds what it would have held had the confirmation come first (it
    taught the one defect as two boxes). Outvoted again, the drawn box is the defect's."""
    if review.prediction_id is not None:
        return None
    drawn = (review.x1, review.y1, review.x2, review.y2)
    overlaps = [
        (_overlap(drawn, (same.x1, same.y1, same.x2, same.y2)), same)  # type: ignore[arg-type]
        for same in confirmed
        if same.class_name == review.class_name
    ]
    most, same = max(overlaps, key=lambda o: o[0], default=(0.0, None))
    return same if most >= SAME_DEFECT_IOU else None


def _same_defect_detections(
    confirmed: list[Review], confidence: dict[int, float]
) -> dict[int, int]:
    """The standing detections (`confirmed`: their confirmations) that repeat a more confident
    one of the same class over the same place (IoU >= SAME_DEFECT_IOU), each to the one it
    repeats. Two such boxes are one defect that non-maximum suppression left twice, and
    reviewers confirm both (both are real); taught as two boxes, the retrained model learned
    to give the duplicate. One defect, one box: the more confident detection's, as NMS itself
    would have kept (on a tie, the first detected)."""
    by_detection = {r.prediction_id: r for r in confirmed if r.prediction_id is not None}
    kept: list[Review] = []
    repeats: dict[int, int] = {}
    for review in sorted(
        by_detection.values(),
        key=lambda r: (-confidence.get(r.prediction_id, 0.0), r.prediction_id),  # type: ignore[arg-type]
    ):
        box = (review.x1, review.y1, review.x2, review.y2)
        same = next(
            (
                k
                for k in kept
                if k.class_name == review.class_name
                and _overlap(box, (k.x1, k.y1, k.x2, k.y2)) >= SAME_DEFECT_IOU  # type: ignore[arg-type]
            ),
            None,
        )
        if same is None:
            kept.append(review)
        else:
            repeats[review.prediction_id] = same.prediction_id  # type: ignore[index,assignment]
    return repeats


def _taught(reviews: list[Review], confidence: dict[int, float]) -> list[Review]:
    """The part's reviews (`reviews`: all of them) whose boxes the export teaches: the defects
    that stand, less those drawn over a detection that stands (`_drawn_over`) and the
    detections that repeat a more confident one (`_same_defect_detections`; `confidence`:
    the detections' confidences, by id)."""
    outvoted = _outvoted(reviews)
    standing = [
        r
        for r in reviews
        if r.kind in DEFECT_REVIEWS
        and r.prediction_id not in outvoted
        and None not in (r.x1, r.y1, r.x2, r.y2)
    ]
    confirmed = [r for r in standing if r.prediction_id is not None]
    repeats = _same_defect_detections(confirmed, confidence)
    return [
        r for r in standing if _drawn_over(r, confirmed) is None and r.prediction_id not in repeats
    ]


def _part_reviews(session: Session, part_id: int) -> tuple[list[Review], dict[int, float]]:
    """The part's reviews, and the confidences of the detections they decide (`_taught`)."""
    reviews = list(session.scalars(select(Review).where(Review.part_id == part_id)))
    confidence = dict(
        session.execute(
            select(Prediction.id, Prediction.confidence)
            .join(Review, Review.prediction_id == Prediction.id)
            .where(Review.part_id == part_id)
        ).all()
    )
    return reviews, confidence


def same_defect_detections(session: Session, part_id: int) -> dict[int, int]:
    """The detections of the part (prediction ids) the export leaves out as the same defect as
    a more confident detection confirmed too, each to that detection's id
    (`_same_defect_detections`): the Review page says so beside each, where it showed two
    confirmed defects while the export taught one box."""
    reviews, confidence = _part_reviews(session, part_id)
    outvoted = _outvoted(reviews)
    confirmed = [
        r
        for r in reviews
        if r.kind == ReviewKind.CONFIRMED_DEFECT
        and r.prediction_id not in outvoted
        and None not in (r.x1, r.y1, r.x2, r.y2)
    ]
    return _same_defect_detections(confirmed, confidence)


def drawn_over_detections(session: Session, part_id: int) -> dict[int, int]:
    """The missed defects of the part (review ids) the export leaves out as drawn over a
    detection that stands (`_drawn_over`), each to the detection (prediction id) the export
    teaches in its place: the Review page says so beside each, where it listed them as defects
    of their own while the export taught the detection's box alone. Drawn over a detection
    that repeats a more confident one (`_same_defect_detections`), it is the more confident
    one's box that is taught: the page named the one drawn over, whose box the export drops."""
    reviews, confidence = _part_reviews(session, part_id)
    outvoted = _outvoted(reviews)
    confirmed = [
        r
        for r in reviews
        if r.kind in DEFECT_REVIEWS
        and r.prediction_id is not None
        and r.prediction_id not in outvoted
        and None not in (r.x1, r.y1, r.x2, r.y2)
    ]
    repeats = _same_defect_detections(confirmed, confidence)
    given_way = {}
    for review in reviews:
        if review.kind != ReviewKind.MISSED_DEFECT or None in (
            review.x1,
            review.y1,
            review.x2,
            review.y2,
        ):
            continue
        same = _drawn_over(review, confirmed)
        if same is not None:
            given_way[review.id] = repeats.get(same.prediction_id, same.prediction_id)  # type: ignore[arg-type]
    return given_way


def reviewed_parts(session: Session) -> list[PartTruth]:
    """Every part whose truth reviewers have given (`truth_subquery`), with its defects' boxes
    (a disputed detection's as `standing_defect` counts it; a box given twice is one box, one
    drawn over a detection that stands is that detection's: `_drawn_over`, and two confirmed
    detections of one defect are the more confident one's: `_same_defect_detections`)."""
    truth = truth_subquery()
    rows = session.execute(
        select(Part, truth.c.defective, truth.c.complete)
        .join(truth, truth.c.part_id == Part.id)
        .order_by(Part.id)
    ).all()
    # The parts' reviews with their detections' confidences (`_taught` keeps the more
    # confident of two that are one defect), in one query a chunk of parts: the confidences
    # were read by a query of their own that ran `truth_subquery` a second time.
    by_part: dict[int, list[Review]] = {}
    confidence: dict[int, float] = {}
    part_ids = [part.id for part, _, _ in rows]
    for start in range(0, len(part_ids), 500):  # (a bound on the IN list's parameters)
        for review, detection_confidence in session.execute(
            select(Review, Prediction.confidence)
            .outerjoin(Prediction, Prediction.id == Review.prediction_id)
            .where(Review.part_id.in_(part_ids[start : start + 500]))
            .order_by(Review.id)
        ):
            by_part.setdefault(review.part_id, []).append(review)
            if review.prediction_id is not None:
                confidence[review.prediction_id] = detection_confidence
    truths = []
    for part, defective, complete in rows:
        boxes = {
            (r.class_name or "defect", r.x1, r.y1, r.x2, r.y2): None
            for r in _taught(by_part.get(part.id, []), confidence)
        }
        truths.append(
            PartTruth(
                part.id,
                part.stored_path,
                bool(defective),
                bool(complete),
                list(boxes),  # type: ignore[arg-type]
                part.original_name,
            )
        )
    return truths
