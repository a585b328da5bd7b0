"""The review queue: a part stays until each detection of its verdict is decided."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from db.models import Inspection, Part, Prediction, Verdict, utcnow
from db.registry import ensure_station
from db.reviews import (
    add_missed_defect,
    confirm_defect,
    decide_the_rest,
    decisions,
    mark_false_call,
    mark_good,
    review_queue,
)


def _part(session: Session, n: int, confidences: list[float]) -> Inspection:
    station = ensure_station(session, "L", "S")
    part = Part(
        content_hash=f"{n:064d}",
        stored_path="",
        size_bytes=1,
        width=100,
        height=100,
        line_id=station.line_id,
        station_id=station.id,
    )
    session.add(part)
    session.flush()
    inspection = Inspection(
        part_id=part.id,
        verdict=Verdict.FAIL if confidences else Verdict.PASS,
        thresholds={"default": 0.5},
        inspected_at=utcnow() - timedelta(minutes=1),
    )
    for confidence in confidences:
        inspection.predictions.append(
            Prediction(
                class_name="scratch",
                confidence=confidence,
                counted=confidence >= 0.5,
                x1=1.0,
                y1=1.0,
                x2=9.0,
                y2=9.0,
            )
        )
    session.add(inspection)
    session.flush()
    return inspection


def _queued(session: Session) -> set[int]:
    return {item.part_id for item in review_queue(session)}


def test_a_part_stays_queued_until_each_detection_is_decided(session: Session) -> None:
    two = _part(session, 1, [0.9, 0.6])
    passed = _part(session, 2, [])
    three = _part(session, 3, [0.7, 0.3, 0.2])
    good = _part(session, 4, [0.8])
    assert _queued(session) == {two.part_id, passed.part_id, three.part_id, good.part_id}
    first, second = two.predictions
    confirm_defect(session, first.id, "ana")
    assert decisions(session, two.id) == {first.id: "confirmed defect"}
    assert two.part_id in _queued(session)  # its second detection is not decided yet
    mark_false_call(session, second.id, "ana")
    assert two.part_id not in _queued(session)
    # A pass with nothing found: one review decides it (a missed defect, or good).
    add_missed_defect(session, passed.part_id, "scratch", (10, 10, 20, 20), "ana")
    assert passed.part_id not in _queued(session)
    confirm_defect(session, three.predictions[0].id, "ana")
    assert three.part_id in _queued(session)
    assert decide_the_rest(session, three.id, "ana") == 2
    assert decide_the_rest(session, three.id, "ana") == 0
    mark_good(session, good.part_id, "ana")  # good: its detection is a false call by that
    assert _queued(session) == set()


def test_a_part_reviewed_before_it_was_judged_again_is_not_asked_again(session: Session) -> None:
    earlier = _part(session, 1, [0.9])
    confirm_defect(session, earlier.predictions[0].id, "ana")
    # Judged again after a recalibration: a new verdict with new detection rows.
    earlier.superseded_at = utcnow()
    again = Inspection(part_id=earlier.part_id, verdict=Verdict.FAIL, inspected_at=utcnow())
    again.predictions.append(Prediction(class_name="scratch", confidence=0.9, counted=True))
    session.add(again)
    session.flush()
    assert _queued(session) == set()


def test_a_part_part_way_through_its_review_is_neither_good_nor_trained_on(
    session: Session, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """It counted as a good part (a false call) while still waiting in the queue, and an
    export taught its undecided detections as background."""
    from db.queries import rates
    from db.reviews import reviewed_parts
    from inspection.errors import UserError
    from training.backtest import export_reviews

    three = _part(session, 1, [0.9, 0.8, 0.7])
    image = tmp_path / "part.png"
    from PIL import Image

    Image.new("L", (100, 100), 90).save(image)
    three.part.stored_path = str(image)
    mark_false_call(session, three.predictions[2].id, "ana")
    assert three.part_id in _queued(session)
    assert rates(session) == []  # not known yet: neither good nor defective
    assert reviewed_parts(session) == []
    confirm_defect(session, three.predictions[0].id, "ana")
    [row] = rates(session)  # defective from its first confirmed defect on
    assert (row.n_defective, row.n_good) == (1, 0)
    [truth] = reviewed_parts(session)
    assert truth.defective and not truth.complete
    with pytest.raises(UserError, match="not decided yet"):
        export_reviews(session, "partial", ["scratch"], tmp_path / "datasets")
    mark_false_call(session, three.predictions[1].id, "ana")
    [truth] = reviewed_parts(session)
    assert truth.complete and truth.boxes == [("scratch", 1.0, 1.0, 9.0, 9.0)]


def test_a_mistaken_review_is_undone_and_good_cannot_overrule_a_defect(session: Session) -> None:
    from db.reviews import undo_last_review

    one = _part(session, 1, [0.9])
    confirm_defect(session, one.predictions[0].id, "ana")
    with pytest.raises(ValueError, match="confirmed defect .*undo that review first"):
        mark_good(session, one.part_id, "ana")  # was recorded, and said for nothing
    with pytest.raises(LookupError, match="bob has no review of part"):
        undo_last_review(session, one.part_id, "bob")
    [undone] = undo_last_review(session, one.part_id, "ana")
    assert undone.kind.value == "confirmed_defect"
    assert one.part_id in _queued(session)
    mark_good(session, one.part_id, "ana")
    assert _queued(session) == set()


def test_the_others_are_false_calls_is_undone_as_one_action(session: Session) -> None:
    """Undo after "the other N are false calls" took back one of them: the part stayed
    decided, the other N-1 false calls kept, with no undo left that reached them."""
    from db.reviews import decide_the_rest, undo_last_review

    part = _part(session, 1, [0.9, 0.5, 0.4, 0.3])
    confirm_defect(session, part.predictions[0].id, "ana")
    assert decide_the_rest(session, part.id, "ana") == 3
    assert part.part_id not in _queued(session)
    undone = undo_last_review(session, part.part_id, "ana")
    assert [r.kind.value for r in undone] == ["false_call"] * 3
    assert part.part_id in _queued(session)  # its 3 detections are undecided again
    [confirmed] = undo_last_review(session, part.part_id, "ana")  # then the confirm
    assert confirmed.kind.value == "confirmed_defect"


def test_a_missed_defect_is_recorded_once_and_of_a_known_class(session: Session) -> None:
    passed = _part(session, 1, [])
    box = (10.0, 10.0, 20.0, 20.0)
    add_missed_defect(session, passed.part_id, "scratch", box, "ana", classes=["scratch"])
    with pytest.raises(ValueError, match="recorded already"):  # a second press of Add
        add_missed_defect(session, passed.part_id, "scratch", box, "bob", classes=["scratch"])
    with pytest.raises(ValueError, match="new class 'dent': not one the production detector"):
        add_missed_defect(session, passed.part_id, "dent", (1, 1, 5, 5), "ana", classes=["scratch"])


def test_one_defect_drawn_by_two_reviewers_is_recorded_once(session: Session) -> None:
    """Ana and Bob, each on a page drawn before the other's Add, drew the same missed defect
    a few pixels apart (or over a detection another had confirmed meanwhile): both were
    recorded, and the export taught one defect as two."""
    passed = _part(session, 1, []).part_id
    add_missed_defect(session, passed, "scratch", (10, 10, 30, 30), "ana")
    with pytest.raises(ValueError, match=r"over the same place .*\(added by ana, 10, 10, 30, 30\)"):
        add_missed_defect(session, passed, "scratch", (12, 11, 31, 29), "bob")
    add_missed_defect(session, passed, "dent", (12, 11, 31, 29), "bob")  # another class
    add_missed_defect(session, passed, "scratch", (40, 40, 60, 60), "bob")  # another place
    failed = _part(session, 2, [0.9])
    confirm_defect(session, failed.predictions[0].id, "ana")  # a box at 1, 1, 9, 9
    with pytest.raises(ValueError, match="confirmed by ana"):
        add_missed_defect(session, failed.part_id, "scratch", (1, 1, 8, 9), "bob")


def test_a_new_defect_type_is_added_only_when_said_and_a_look_alike_is_refused(
    session: Session,
) -> None:
    """A defect type the production detector does not know had no way in: the reviewer could
    only pick one of its classes (or none), so the export could never carry it."""
    from db.reviews import reviewer_classes

    known = ["scratch", "spot"]
    part = _part(session, 1, []).part_id
    review = add_missed_defect(
        session, part, " crack ", (1, 1, 5, 5), "ana", classes=known, new_class=True
    )
    assert review.class_name == "crack" and reviewer_classes(session, known) == ["crack"]
    # Another reviewer picks it from the list: known now, said new or not.
    add_missed_defect(session, part, "crack", (6, 6, 9, 9), "bob", classes=known, new_class=True)
    for typo, like in (("crak", "crack"), ("Scratch", "scratch"), ("spott", "spot")):
        with pytest.raises(ValueError, match=f"new class '{typo}' looks like '{like}'"):
            add_missed_defect(
                session, part, typo, (1, 1, 5, 5), "ana", classes=known, new_class=True
            )
    for bad in ("", "two\nlines", "x" * 129):
        with pytest.raises(ValueError, match="class name"):
            add_missed_defect(
                session, part, bad, (1, 1, 5, 5), "ana", classes=known, new_class=True
            )
    assert reviewer_classes(session, known) == ["crack"]


def test_a_new_class_that_is_the_singular_of_a_known_plural_is_refused(session: Session) -> None:
    """ "Scratch" typed on the shipped demo, whose class is "scratches", was recorded as a new
    defect type: the export then taught the detector scratches under two classes."""
    known = ["crazing", "patches", "scratches", "cavities"]
    part = _part(session, 1, []).part_id
    for typed, like in (("Scratch", "scratches"), ("patch", "patches"), ("Cavity", "cavities")):
        with pytest.raises(ValueError, match=f"new class '{typed}' looks like '{like}'"):
            add_missed_defect(
                session, part, typed, (1, 1, 5, 5), "ana", classes=known, new_class=True
            )
    add_missed_defect(session, part, "cracks", (1, 1, 5, 5), "ana", classes=known, new_class=True)
    with pytest.raises(ValueError, match="new class 'crack' looks like 'cracks'"):
        add_missed_defect(
            session, part, "crack", (2, 2, 6, 6), "bob", classes=known, new_class=True
        )
    # A name unlike any known one is still a new class.
    add_missed_defect(session, part, "pit", (2, 2, 6, 6), "bob", classes=known, new_class=True)


def test_a_reviewer_whose_clock_is_behind_keeps_a_part_in_the_queue_until_it_is_decided(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review was stamped by the reviewing machine's clock and the verdict by the database's:
    a reviewer 10 minutes behind confirmed one of two detections, and the part left the queue
    as if reviewed against an earlier verdict, its other detection undecided for good."""
    from datetime import datetime, tzinfo

    import db.models

    inspection = _part(session, 1, [0.9, 0.8])

    class Behind(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Behind:
            return super().now(tz) - timedelta(minutes=10)

    monkeypatch.setattr(db.models, "datetime", Behind)  # the reviewing machine's clock
    confirm_defect(session, inspection.predictions[0].id, "ana")
    assert _queued(session) == {inspection.part_id}


def test_new_classes_come_in_the_order_they_were_first_added(session: Session) -> None:
    """Sorted by name, "bubble" found after "crack" came first, and the next export no longer
    extended the version fine-tuned on the one before (refused as reordered)."""
    from sqlalchemy import update

    from db.models import Review
    from db.reviews import reviewer_classes

    known = ["scratch", "spot"]
    part = _part(session, 1, []).part_id
    crack = add_missed_defect(session, part, "crack", (1, 1, 5, 5), "ana", known, new_class=True)
    bubble = add_missed_defect(session, part, "bubble", (6, 6, 9, 9), "bob", known, new_class=True)
    later = crack.created_at + timedelta(minutes=5)  # (one clock tick could hold both)
    session.execute(update(Review).where(Review.id == bubble.id).values(created_at=later))
    assert reviewer_classes(session, known) == ["crack", "bubble"]


def _judged_again(session: Session, earlier: Inspection, superseded: bool) -> Inspection:
    """A new verdict of the part with the same detections (new rows): after a recalibration
    (`superseded`: the earlier verdict is replaced) or by another model version (both stay)."""
    if superseded:
        earlier.superseded_at = utcnow()
    again = Inspection(part_id=earlier.part_id, verdict=Verdict.FAIL, inspected_at=utcnow())
    for p in earlier.predictions:
        again.predictions.append(
            Prediction(
                class_name=p.class_name,
                confidence=p.confidence,
                counted=p.counted,
                x1=p.x1,
                y1=p.y1,
                x2=p.x2,
                y2=p.y2,
            )
        )
    session.add(again)
    session.flush()
    return again


@pytest.mark.parametrize("superseded", [True, False], ids=["recalibrated", "new-version"])
def test_a_part_partly_reviewed_then_judged_again_can_be_finished_and_exported(
    session: Session, tmp_path, superseded: bool
) -> None:  # type: ignore[no-untyped-def]
    """One of two detections decided, then the part judged again: the queue no longer offered
    it (a review older than its verdict) and the export left it out for good as "not decided
    yet". It is offered with the verdict the decision was made on, and finished there."""
    from PIL import Image

    from db.reviews import part_item, reviewed_parts
    from training.backtest import export_reviews

    earlier = _part(session, 1, [0.9, 0.6])
    image = tmp_path / "part.png"
    Image.new("L", (100, 100), 90).save(image)
    earlier.part.stored_path = str(image)
    first, second = earlier.predictions
    confirm_defect(session, first.id, "ana")
    _judged_again(session, earlier, superseded)
    [item] = review_queue(session)
    assert (item.part_id, item.inspection_id) == (earlier.part_id, earlier.id)
    assert decisions(session, item.inspection_id) == {first.id: "confirmed defect"}
    mark_false_call(session, second.id, "ana")
    assert review_queue(session) == []
    done = part_item(session, earlier.part_id)  # (the part just finished, still in reach)
    assert done is not None and done.inspection_id == earlier.id
    [truth] = reviewed_parts(session)
    assert truth.complete and truth.boxes == [("scratch", 1.0, 1.0, 9.0, 9.0)]
    report = export_reviews(session, "finished", ["scratch"], tmp_path / "datasets", "off")
    assert report.n_images == 1 and not report.left_out


def test_a_part_reviewed_only_by_a_missed_defect_then_judged_with_detections_is_asked_again(
    session: Session,
) -> None:
    """Nothing found, a missed defect added, then judged again with a detection: left the
    queue as reviewed before its verdict, while its truth waited for that detection."""
    from db.reviews import reviewed_parts

    passed = _part(session, 1, [])
    add_missed_defect(session, passed.part_id, "scratch", (10, 10, 20, 20), "ana")
    passed.superseded_at = utcnow()
    again = Inspection(part_id=passed.part_id, verdict=Verdict.FAIL, inspected_at=utcnow())
    again.predictions.append(
        Prediction(class_name="scratch", confidence=0.9, counted=True, x1=10, y1=10, x2=20, y2=20)
    )
    session.add(again)
    session.flush()
    [item] = review_queue(session)
    assert item.inspection_id == again.id  # (no detection was decided: its current verdict)
    confirm_defect(session, again.predictions[0].id, "ana")
    assert review_queue(session) == []
    [truth] = reviewed_parts(session)
    assert truth.complete


def _with_image(inspection: Inspection, folder, seed: int) -> Inspection:  # type: ignore[no-untyped-def]
    """The part given an image of its own on disk, as a station stores it."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    image = folder / f"part-{seed}.png"
    Image.new("L", (100, 100), 40 + seed).save(image)
    inspection.part.stored_path = str(image)
    return inspection


def test_new_classes_keep_the_order_of_the_export_before_when_a_first_review_is_undone(
    session: Session, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The order came from each new class's earliest surviving missed defect: the first crack
    undone after an export put bubble before crack in the next one, and a version fine-tuned
    on the first export could not be fine-tuned on the second (refused as reordered)."""
    from sqlalchemy import update

    from db.models import ModelVersion, Review
    from db.reviews import undo_last_review
    from training.backtest import export_reviews
    from training.train_detector import refuse_other_classes

    known = ["scratch"]
    parts = [_with_image(_part(session, n, []), tmp_path / "store", n) for n in (1, 2, 3)]
    added = [
        add_missed_defect(session, parts[0].part_id, "crack", (1, 1, 5, 5), "ana", known, True),
        add_missed_defect(session, parts[1].part_id, "bubble", (1, 1, 5, 5), "bob", known, True),
        add_missed_defect(session, parts[2].part_id, "crack", (6, 6, 9, 9), "cy", known, True),
    ]
    start = added[0].created_at
    for minutes, review in enumerate(added):  # (one clock tick could hold all three)
        later = start + timedelta(minutes=minutes)
        session.execute(update(Review).where(Review.id == review.id).values(created_at=later))
    datasets = tmp_path / "datasets"
    first = export_reviews(session, "week-1", known, datasets, "off")
    assert first.classes == ["scratch", "crack", "bubble"]
    tuned = ModelVersion(name="tuned", classes=first.classes)  # fine-tuned on week-1
    undo_last_review(session, parts[0].part_id, "ana")  # the first crack was a scratch
    add_missed_defect(session, parts[0].part_id, "scratch", (1, 1, 5, 5), "ana", known)
    session.expire_all()
    second = export_reviews(session, "week-2", known, datasets, "off")
    assert second.classes == ["scratch", "crack", "bubble"]
    refuse_other_classes(tuned, "week-2", second.classes, "fine-tuning")
    # A class never exported before still comes after those that were.
    add_missed_defect(session, parts[1].part_id, "dent", (6, 6, 9, 9), "bob", known, True)
    session.expire_all()  # (each export reads the reviews afresh, as in a session of its own)
    third = export_reviews(session, "week-3", known, datasets, "off")
    assert third.classes == ["scratch", "crack", "bubble", "dent"]


def test_confirmed_defects_of_a_class_the_production_detector_lost_are_exported_as_new(
    session: Session, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Production rolled back to a detector without "spot": a confirmed spot left its part out
    of the export (class not one of the detector's), while a spot added as missed was kept as
    a new class, and the promotion's warning said "left out"."""
    from db.reviews import reviewer_classes
    from training.backtest import export_reviews

    confirmed = _with_image(_part(session, 1, [0.9]), tmp_path / "store", 1)
    confirmed.predictions[0].class_name = "spot"  # found when production knew spot
    confirm_defect(session, confirmed.predictions[0].id, "ana")
    marked_good = _with_image(_part(session, 2, []), tmp_path / "store", 2)
    mark_good(session, marked_good.part_id, "ana")
    known = ["scratch"]  # the production detector now
    assert reviewer_classes(session, known) == ["spot"]
    session.expire_all()
    report = export_reviews(session, "after-rollback", known, tmp_path / "datasets", "off")
    assert report.classes == ["scratch", "spot"] and report.n_images == 2
    assert report.issues == []  # (reviewers could label spot then: no caveat of parts before)
    labels = [
        line.split()[0]
        for label in (report.root / "labels").rglob("*.txt")
        for line in label.read_text().splitlines()
    ]
    assert labels == ["1"]


def test_a_confirmation_overruled_by_a_false_call_keeps_its_class_and_its_place(
    session: Session, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A detection confirmed, then marked a false call by another reviewer (a page drawn
    before the confirmation): reviewers disagree, and the defective reading wins, so its box
    is one of the export's. Its class keeps the place of that first confirmation: counted
    from the later missed defects only, it was not a class of the export at all, and the part
    holding the box was left out ("class spot is not one of ...")."""
    from sqlalchemy import update

    from db.models import Review
    from db.reviews import reviewer_classes
    from training.backtest import export_reviews

    known = ["scratch"]  # the production detector, since a rollback, knows no spot
    spotted = _with_image(_part(session, 1, [0.9]), tmp_path / "store", 1)
    spotted.predictions[0].class_name = "spot"
    confirmed = confirm_defect(session, spotted.predictions[0].id, "ana")
    cracked = _with_image(_part(session, 2, []), tmp_path / "store", 2)
    crack = add_missed_defect(session, cracked.part_id, "crack", (1, 1, 5, 5), "bob", known, True)
    overruled = mark_false_call(session, spotted.predictions[0].id, "cy")
    start = confirmed.created_at
    for minutes, review in enumerate([confirmed, crack, overruled]):  # (one clock tick)
        later = start + timedelta(minutes=minutes)
        session.execute(update(Review).where(Review.id == review.id).values(created_at=later))
    assert reviewer_classes(session, known) == ["spot", "crack"]
    # The Review page says what counts, not the latest word ("false call").
    assert decisions(session, spotted.id) == {
        spotted.predictions[
            0
        ].id: "confirmed by ana, marked a false call by cy: counted as a defect until "
        "another reviewer settles it"
    }
    session.expire_all()
    report = export_reviews(session, "disputed", known, tmp_path / "datasets", "off")
    assert report.classes == ["scratch", "spot", "crack"]
    assert report.n_images == 2 and not report.left_out


@pytest.mark.parametrize("second", ["confirm", "false call", "good"])
def test_one_reviewers_two_tabs_writing_at_once_record_one_word(
    database_url: str, second: str
) -> None:
    """Ana's two tabs (or a double click whose writes crossed) sent her word on one detection
    in the same moment: both were recorded, one saying a false call beside her confirmation,
    and her undo took back one of two. Now the database keeps one; the other write is told what
    stands, and leaves its transaction usable. Bob's word on the same detection still stands
    beside hers."""
    import threading

    from sqlalchemy import select

    from db.models import Review
    from db.reviews import ReviewRecorded
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.9])
        part_id, prediction_id = inspection.part_id, inspection.predictions[0].id
    if second == "good":
        writes = [lambda s: mark_good(s, part_id, "ana"), lambda s: mark_good(s, part_id, "ana ")]
    else:
        other = confirm_defect if second == "confirm" else mark_false_call
        writes = [
            lambda s: confirm_defect(s, prediction_id, "ana"),
            lambda s: other(s, prediction_id, "ana"),
        ]
    together = threading.Barrier(2)
    refused: list[str] = []

    def write(action) -> None:  # type: ignore[no-untyped-def]
        try:
            with session_scope(database_url) as session:
                together.wait()
                action(session)
        except ReviewRecorded as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=write, args=(w,)) for w in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope(database_url) as session:
        words = session.execute(select(Review.reviewer, Review.kind)).all()
        assert len(words) == 1, words
        assert len(refused) == 1 and "ana " in refused[0] and "already" in refused[0]
        if second != "good":
            mark_false_call(session, prediction_id, "bob")  # (a dispute: both words stand)
            with pytest.raises(ReviewRecorded, match=r"ana decided this detection already"):
                confirm_defect(session, prediction_id, "ana")
            # The refusal left the transaction whole: Bob's word is still in it.
            assert len(session.scalars(select(Review)).all()) == 2


@pytest.mark.parametrize("third", ["false call", "confirm"])
def test_a_third_reviewers_word_settles_a_dispute_in_the_rates_and_the_export(
    database_url: str, third: str
) -> None:
    """Ana confirmed a detection that Bob marked a false call: counted as a defect, and no
    third word could change it (the defective reading won whatever anyone said). Now a tie is
    a defect until Cy's word settles it: the word more reviewers gave counts, in the rates (by
    class too) and in the export's boxes."""
    from db.queries import Filters, rates
    from db.reviews import reviewed_parts
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.9])
        detection = inspection.predictions[0].id
        confirm_defect(session, detection, "ana")
        mark_false_call(session, detection, "bob")
        assert decisions(session, inspection.id) == {
            detection: "confirmed by ana, marked a false call by bob: counted as a defect "
            "until another reviewer settles it"
        }
        (tied,) = rates(session)
        assert (tied.n_defective, tied.n_good) == (1, 0)
        assert _queued(session) == {inspection.part_id}  # (waiting for the third word)
        (mark_false_call if third == "false call" else confirm_defect)(session, detection, "cy")
    with session_scope(database_url) as session:
        (settled,) = rates(session)
        (by_class,) = rates(session, Filters(class_name="scratch"))
        (truth,) = reviewed_parts(session)
        said = decisions(session, inspection.id)[detection]
        assert _queued(session) == set()
    if third == "false call":
        assert (
            said
            == "confirmed by ana, marked a false call by bob, cy: counted as a false call (2 to 1)"
        )
        assert (settled.n_defective, settled.n_good, settled.n_false_calls) == (0, 1, 1)
        assert by_class.n_defective == 0
        assert not truth.defective and truth.complete and truth.boxes == []
    else:
        assert (
            said == "confirmed by ana, cy, marked a false call by bob: counted as a defect (2 to 1)"
        )
        assert (settled.n_defective, settled.n_good) == (1, 0)
        assert by_class.n_defective == 1
        assert truth.defective and truth.boxes == [("scratch", 1.0, 1.0, 9.0, 9.0)]


def test_a_part_whose_only_confirmation_was_outvoted_can_be_marked_good(session: Session) -> None:
    """Ana confirmed the part's one detection, Bob and Cy marked it a false call: the rates
    and the export counted the part good, yet "Mark part good" was refused for Ana's
    confirmation ("undo that review first"), which was not hers to undo. A tie still refuses:
    it counts as a defect."""
    part = _part(session, 1, [0.9])
    detection = part.predictions[0].id
    confirm_defect(session, detection, "ana")
    mark_false_call(session, detection, "bob")
    # (A tie counts as a defect: undoing Ana's word is not Dee's to do, a false call settles it.)
    with pytest.raises(
        ValueError,
        match=r"has a scratch detection confirmed by ana, marked a false call by bob: counted as "
        r"a defect until another reviewer settles it: the part is good once false calls",
    ):
        mark_good(session, part.part_id, "dee")
    mark_false_call(session, detection, "cy")
    assert mark_good(session, part.part_id, "dee").kind.value == "good_part"


def test_mark_good_refused_names_every_defect_that_stands(session: Session) -> None:
    """Bob drew a scratch over a detection not yet decided, Ana then confirmed the detection:
    "Mark part good" was refused for Bob's box alone ("undo that review first"), a box the
    export does not even teach, while Ana's confirmation kept the part defective once Bob's
    box was undone. The refusal names both, and what makes the part good."""
    from db.reviews import undo_last_review

    part = _part(session, 1, [0.9])  # a box at 1, 1, 9, 9
    detection = part.predictions[0].id
    add_missed_defect(session, part.part_id, "scratch", (1, 1, 8, 9), "bob")
    confirm_defect(session, detection, "ana")
    with pytest.raises(ValueError) as refused:
        mark_good(session, part.part_id, "dee")
    assert str(refused.value) == (
        f"part {part.part_id} has 2 defects that stand: a missed defect (scratch, by bob, drawn "
        "over a confirmed detection); a confirmed defect (scratch, by ana): undo those reviews "
        "first if the part is good"
    )
    undo_last_review(session, part.part_id, "bob")
    with pytest.raises(ValueError, match=r"has a confirmed defect \(scratch, by ana\): undo that"):
        mark_good(session, part.part_id, "dee")
    confirm_defect(session, detection, "bob")
    mark_false_call(session, detection, "cy")  # (2 to 1: it stands, and says who said what)
    add_missed_defect(session, part.part_id, "scratch", (50, 50, 60, 60), "cy")
    with pytest.raises(ValueError) as refused:
        mark_good(session, part.part_id, "dee")
    assert str(refused.value) == (
        f"part {part.part_id} has 2 defects that stand: a scratch detection confirmed by ana, "
        "bob, marked a false call by cy: counted as a defect (2 to 1); a missed defect "
        "(scratch, by cy): undo that review first, and the part is good once false calls "
        "outnumber confirmations of the disputed detection"
    )


@pytest.mark.parametrize("bobs", [(10, 10, 30, 30), (12, 11, 31, 29)])
def test_two_reviewers_adding_one_missed_defect_at_once_record_it_once(
    database_url: str, bobs: tuple[float, float, float, float]
) -> None:
    """Ana and Bob pressed Add over the same defect in the same moment (the same box, or one a
    few pixels off): each request looked for a box there, found none, and both were recorded,
    the export teaching one defect as two. Now the second waits for the first and is told."""
    import threading

    from sqlalchemy import select

    from db.models import Review
    from db.session import session_scope

    with session_scope(database_url) as session:
        part_id = _part(session, 1, []).part_id
    together = threading.Barrier(2)
    refused: list[str] = []

    def add(reviewer: str, box: tuple[float, float, float, float]) -> None:
        try:
            with session_scope(database_url) as session:
                together.wait()
                add_missed_defect(session, part_id, "scratch", box, reviewer)
        except ValueError as exc:
            refused.append(str(exc))

    threads = [
        threading.Thread(target=add, args=("ana", (10, 10, 30, 30))),
        threading.Thread(target=add, args=("bob", bobs)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope(database_url) as session:
        boxes = session.scalars(select(Review.reviewer)).all()
    assert len(boxes) == 1, boxes
    assert len(refused) == 1 and "recorded already" in refused[0]


def test_a_class_whose_only_confirmation_was_outvoted_is_no_new_class(
    session: Session, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A spot detection of a detector since replaced, confirmed by Ana and marked a false
    call by Bob and Cy, counts as a false call: yet the Review page offered "spot (new class)"
    to every reviewer, and the export said of spot that its parts were left out, when the part
    was exported, good. A tie still keeps it (a defect until settled)."""
    from db.reviews import reviewer_classes
    from training.backtest import export_reviews

    known = ["scratch"]
    spotted = _with_image(_part(session, 1, [0.9]), tmp_path / "store", 1)
    spotted.predictions[0].class_name = "spot"
    detection = spotted.predictions[0].id
    confirm_defect(session, detection, "ana")
    mark_false_call(session, detection, "bob")
    assert reviewer_classes(session, known) == ["spot"]  # (a dispute: a defect until settled)
    mark_false_call(session, detection, "cy")
    cracked = _with_image(_part(session, 2, []), tmp_path / "store", 2)
    add_missed_defect(session, cracked.part_id, "crack", (1, 1, 5, 5), "bob", known, True)
    assert reviewer_classes(session, known) == ["crack"]
    session.expire_all()
    report = export_reviews(session, "outvoted", known, tmp_path / "datasets", "off")
    assert report.classes == ["scratch", "crack"]
    assert report.n_images == 2
    assert not [issue for issue in report.issues if "spot" in str(issue)], report.issues


def test_two_reviewers_settling_one_dispute_at_once_record_one_word(database_url: str) -> None:
    """Cy (a confirmation) and Dee (a false call) settled Ana's and Bob's dispute in the same
    moment: both words were recorded, a tie again, and each was told it was settled by their
    word. Now the first settles it and the second is told it was settled meanwhile."""
    import threading

    from sqlalchemy import select

    from db.models import Review, ReviewKind
    from db.reviews import ReviewRecorded, settle_dispute
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.9])
        detection = inspection.predictions[0].id
        confirm_defect(session, detection, "ana")
        mark_false_call(session, detection, "bob")
    together = threading.Barrier(2)
    refused: list[str] = []

    def settle(reviewer: str, kind: ReviewKind) -> None:
        try:
            with session_scope(database_url) as session:
                together.wait()
                settle_dispute(session, detection, kind, reviewer)
        except ReviewRecorded as exc:
            refused.append(str(exc))

    threads = [
        threading.Thread(target=settle, args=("cy", ReviewKind.CONFIRMED_DEFECT)),
        threading.Thread(target=settle, args=("dee", ReviewKind.FALSE_CALL)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope(database_url) as session:
        words = session.scalars(select(Review.reviewer)).all()
        assert len(words) == 3, words
        assert len(refused) == 1 and refused[0].startswith("settled meanwhile (")
        assert decisions(session, inspection.id)[detection].endswith("(2 to 1)")


def test_a_missed_defect_over_a_detection_voted_a_false_call_is_recorded_and_counted(
    database_url: str,
) -> None:
    """Bob and Cy marked the part's detection a false call, Ana had confirmed it (1 to 2): Dee,
    who sees a real defect there, was refused its box as "recorded already ... drawn on the part
    now", a defect neither counted nor exported. It is a missed defect now, counted as one; a
    box over a detection that still stands (a tie) is refused as before."""
    from db.queries import rates
    from db.reviews import reviewed_parts
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.9])
        detection = inspection.predictions[0].id
        confirm_defect(session, detection, "ana")
        mark_false_call(session, detection, "bob")
        with pytest.raises(ValueError, match="confirmed by ana"):  # a tie: the defect stands
            add_missed_defect(session, inspection.part_id, "scratch", (1, 1, 8, 9), "dee")
        mark_false_call(session, detection, "cy")
        add_missed_defect(session, inspection.part_id, "scratch", (1, 1, 8, 9), "dee")
    with session_scope(database_url) as session:
        (counted,) = rates(session)
        (truth,) = reviewed_parts(session)
    assert (counted.n_defective, counted.n_good) == (1, 0)
    assert truth.defective and truth.boxes == [("scratch", 1.0, 1.0, 8.0, 9.0)]


def test_a_detection_confirmed_after_a_box_was_drawn_over_it_is_exported_as_one_box(
    database_url: str,
) -> None:
    """Bob marked the detection a false call and drew the defect himself; Ana's confirmation
    came after (a tie: the detection stands). The export taught one defect as two boxes, the
    detection's and Bob's; as one drawn over a detection that stands is refused at Add, the
    detection's box is the one kept. Outvoted again, Bob's box is the defect's."""
    from db.reviews import reviewed_parts, withdraw_decision
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.9])  # a box at 1, 1, 9, 9
        detection = inspection.predictions[0].id
        mark_false_call(session, detection, "bob")
        add_missed_defect(session, inspection.part_id, "scratch", (1, 1, 8, 9), "bob")
        add_missed_defect(session, inspection.part_id, "scratch", (50, 50, 60, 60), "bob")
        confirm_defect(session, detection, "ana")
    with session_scope(database_url) as session:
        (truth,) = reviewed_parts(session)
        assert sorted(truth.boxes) == [
            ("scratch", 1.0, 1.0, 9.0, 9.0),
            ("scratch", 50.0, 50.0, 60.0, 60.0),
        ]
        withdraw_decision(session, detection, "ana")
    with session_scope(database_url) as session:
        (truth,) = reviewed_parts(session)
    assert truth.boxes == [("scratch", 1.0, 1.0, 8.0, 9.0), ("scratch", 50.0, 50.0, 60.0, 60.0)]


def test_a_box_drawn_over_the_weaker_of_two_detections_names_the_one_the_export_teaches(
    database_url: str,
) -> None:
    """Ana drew a scratch over the weaker of two detections of one defect (0.6, a duplicate
    NMS left beside the 0.9), then confirmed both: the export teaches the 0.9's box alone, yet
    the page said her box gave way to "that detection", the 0.6 she drew over, whose box the
    export drops as a repeat. The detection taught in her box's place is the 0.9."""
    from db.reviews import drawn_over_detections, reviewed_parts
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.6, 0.9])  # boxes at 1, 1, 9, 9
        weaker, stronger = inspection.predictions
        weaker.x1, weaker.y1, weaker.x2, weaker.y2 = 2.0, 2.0, 10.0, 10.0
        session.flush()
        # (IoU 0.62 with the weaker, 0.39 with the stronger: drawn over the weaker alone)
        drawn = add_missed_defect(session, inspection.part_id, "scratch", (3, 3, 11, 11), "ana")
        confirm_defect(session, weaker.id, "ana")
        confirm_defect(session, stronger.id, "ana")
        part_id, drawn_id, stronger_id = inspection.part_id, drawn.id, stronger.id
    with session_scope(database_url) as session:
        (truth,) = reviewed_parts(session)
        assert truth.boxes == [("scratch", 1.0, 1.0, 9.0, 9.0)]
        assert drawn_over_detections(session, part_id) == {drawn_id: stronger_id}


def test_two_confirmed_detections_of_one_defect_are_exported_as_the_more_confident_box(
    database_url: str,
) -> None:
    """Non-maximum suppression left one scratch twice (0.6 at 2, 2, 10, 10; 0.9 over it) and
    Ana confirmed both, both being real: the export taught the one defect as two boxes. It
    teaches the more confident detection's box alone, and names the other as its repeat; a
    detection elsewhere stays a defect of its own. Outvoted, the kept one gives way to the
    other."""
    from db.reviews import reviewed_parts, same_defect_detections
    from db.session import session_scope

    with session_scope(database_url) as session:
        inspection = _part(session, 1, [0.6, 0.9, 0.7])  # boxes at 1, 1, 9, 9
        weaker, stronger, elsewhere = inspection.predictions
        weaker.x1, weaker.y1, weaker.x2, weaker.y2 = 2.0, 2.0, 10.0, 10.0
        elsewhere.x1, elsewhere.y1, elsewhere.x2, elsewhere.y2 = 50.0, 50.0, 60.0, 60.0
        session.flush()
        ids = weaker.id, stronger.id, elsewhere.id
        for detection in ids:
            confirm_defect(session, detection, "ana")
        part_id = inspection.part_id
    with session_scope(database_url) as session:
        (truth,) = reviewed_parts(session)
        assert sorted(truth.boxes) == [
            ("scratch", 1.0, 1.0, 9.0, 9.0),
            ("scratch", 50.0, 50.0, 60.0, 60.0),
        ]
        assert same_defect_detections(session, part_id) == {ids[0]: ids[1]}
        mark_false_call(session, ids[1], "bob")
        mark_false_call(session, ids[1], "cy")
    with session_scope(database_url) as session:
        (truth,) = reviewed_parts(session)
        assert sorted(truth.boxes) == [
            ("scratch", 2.0, 2.0, 10.0, 10.0),
            ("scratch", 50.0, 50.0, 60.0, 60.0),
        ]
        assert same_defect_detections(session, part_id) == {}
