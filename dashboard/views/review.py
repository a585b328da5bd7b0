"""Review: the least certain parts first; confirm defects, mark false calls, add missed ones."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from sqlalchemy import select

from dashboard.auth import current_access
from dashboard.charts import SHOWN_SIDE, ShownBox, review_figure, selected_box
from dashboard.drawing import DrawnBox, class_colour, close_up, label_markdown, unshown_image
from dashboard.state import database_ready, detector_info, flash, local_time, zone_label
from dashboard.text import plain
from db.models import Inspection, ModelVersion, Part, ReviewKind, Verdict
from db.reviews import (
    ReviewRecorded,
    add_missed_defect,
    confirm_defect,
    counted_defective,
    decide_the_rest,
    decided_words,
    disputed,
    drawn_over_detections,
    good_marks,
    last_review,
    mark_false_call,
    mark_good,
    missed_defects,
    part_item,
    review_queue,
    reviewer_classes,
    said_of,
    same_defect_detections,
    settle_dispute,
    undo_last_review,
    verdicts_reviewed,
    withdraw_decision,
)
from db.session import session_scope
from inspection.engine import TileChoice
from inspection.errors import UserError
from inspection.images import ImageDecodeError, decode_image, located_image
from inspection.settings import get_settings
from inspection.tiling import TileSpec, TileSpecError
from inspection.verdict import left_out_note
from training.backtest import export_reviews, unused_dataset_name

LISTED = 50  # parts offered in the picker
REVIEW_SCAN = 2000  # the most recent verdicts the queue looks among


def good_part_standing(
    part_id: int, good_by: list[str], was_defective: bool | None, defective: bool | None
) -> str:
    """What a review (or its undo) did to a part marked good (by `good_by`), from what the
    rates and the export count it as after it (`counted_defective`) against before: a
    confirmation on such a part made it count defective, and the page moved on to the next
    part without a word."""
    by = f"Part {part_id}, marked good by {plain(', '.join(good_by))},"
    if defective is None:
        return f" {by} is not counted until its review is finished."
    if defective:
        change = "still counts" if was_defective else "now counts"
        return f" {by} {change} defective in the rates and the export: a defect on it stands."
    return f" {by} {'now counts' if was_defective else 'still counts'} good."


state = database_ready()
st.title("Review parts")
access = current_access(state.url)
if access.logged_in:
    # The account is the reviewer: a typed name made the audit trail only as good as what
    # people typed.
    reviewer = access.name or ""
    st.caption(f"Reviewing as {plain(reviewer)}: every review records who made it.")
else:
    reviewer = st.text_input("Your name", key="reviewer", help="Every review records who made it.")

last = st.session_state.get("review_last_part")  # the part this session reviewed last
if last is not None and reviewer.strip():
    # Offered only while there is a review of the part to undo: once the only one was undone,
    # the button stayed, and a click on it only said there was nothing to undo.
    with session_scope(state.url) as session:
        undoable = last_review(session, last, reviewer) is not None
else:
    undoable = False
if undoable and st.button(f"Undo my last review of part {last}", key=f"undo_{last}"):
    try:
        with session_scope(state.url) as session:
            was_defective = counted_defective(session, last)
            undone = undo_last_review(session, last, reviewer)
            kind = undone[0].kind.value.replace("_", " ")
            # An undo on a part marked good can turn what it counts as (a confirmation taken
            # back makes it good again), which "Undone" alone did not say: said as a decision
            # or a withdrawal there says it, from the truth the rates use.
            still_good_by = list(dict.fromkeys(r.reviewer for r in good_marks(session, last)))
            defective = counted_defective(session, last)
            if still_good_by:
                standing = good_part_standing(last, still_good_by, was_defective, defective)
            elif undone[0].kind == ReviewKind.GOOD_PART and defective != was_defective:
                standing = f" Part {last} is no longer marked good: " + (
                    "it is not counted until its review is finished."
                    if defective is None
                    else "it counts defective in the rates and the export."
                    if defective
                    else "it counts good."
                )
            else:
                standing = ""
            flash(
                (
                    f"Undone: {kind} on part {last}."
                    if len(undone) == 1
                    else f"Undone: {len(undone)} {kind}s on part {last}."
                )
                + standing
            )
        # Back to the part undone: the page had moved on to the next part at the review, and
        # the reviewer, who undid a mistake to decide it again, was left on another one.
        st.session_state["review_part"] = last
    except LookupError as exc:
        flash(str(exc), "warning")
        st.session_state.pop("review_last_part", None)
    st.rerun()

acted = st.session_state.pop("review_acted", False)  # this run follows a review made here
with session_scope(state.url) as session:
    # Every part waiting (among the recent ones the queue looks at), so that the caption counts
    # them all: it said "50 part(s) waiting" of the 50 listed when hundreds were.
    waiting = review_queue(session, limit=REVIEW_SCAN, scan=REVIEW_SCAN)
    queue = waiting[:LISTED]
    # Parts whose image is not on this machine (pruned, another station's disk) go last: their
    # decisions are off, and one of them first was the part the page opened on.
    recorded: dict[int, str] = {
        part_id: path
        for part_id, path in session.execute(
            select(Part.id, Part.stored_path).where(Part.id.in_([q.part_id for q in queue]))
        )
    }
    unseen_parts = {
        q.part_id for q in queue if not located_image(recorded.get(q.part_id, "")).is_file()
    }
    queue.sort(key=lambda q: q.part_id in unseen_parts)  # (stable: least certain first still)
    # The part this session reviewed last, once done, stays on offer: a missed defect is
    # often added after its detections are decided, and the part left at the last decision.
    done = (
        part_item(session, last)
        if last is not None and all(q.part_id != last for q in queue)
        else None
    )
    # Parts this session was shown that another reviewer finished meanwhile, kept within reach:
    # they had left every list but that reviewer's, so a defect they missed, seen here, could
    # not be added, and the export taught it as background.
    shown = st.session_state.get("review_part")
    elsewhere_ids: list[int] = st.session_state.get("review_elsewhere", [])
    gone_elsewhere = (
        shown is not None
        and shown != last
        and shown not in elsewhere_ids
        and all(q.part_id != shown for q in queue)
    )
    if gone_elsewhere:
        elsewhere_ids = st.session_state["review_elsewhere"] = [*elsewhere_ids, shown]
    elsewhere = [
        item
        for part_id in elsewhere_ids
        if all(q.part_id != part_id for q in queue) and (done is None or done.part_id != part_id)
        for item in [part_item(session, part_id)]
        if item is not None
    ]
if not queue and done is None and not elsewhere:
    st.info("Nothing to review: inspected parts appear here, the least certain first.")
else:
    count = f"{len(waiting)}+" if len(waiting) >= REVIEW_SCAN else str(len(waiting))
    listed = f"; the {len(queue)} least certain are listed" if len(waiting) > len(queue) else ""
    st.caption(
        f"{count} part(s) waiting, least certain first{listed}. A part stays until each of its "
        "detections is confirmed or marked a false call, or it is marked good; a detection "
        "two reviewers disagree on waits for a third reviewer's word."
    )
    by_part = {q.part_id: q for q in queue}
    if done is not None:
        by_part[done.part_id] = done
    by_part.update((e.part_id, e) for e in elsewhere)
    # The selection is the part itself, not its place in the list: when a part is done and
    # leaves the queue, the next least certain one is shown (a place would now name another
    # part, and the next click would review it unseen).
    if (
        shown not in by_part
        or (gone_elsewhere and (queue or done is not None))
        or (acted and done is not None and shown == done.part_id and queue)
    ):
        st.session_state["review_part"] = (
            queue[0].part_id
            if queue
            else done.part_id
            if done is not None
            else elsewhere[0].part_id
        )
        if shown is not None and shown != last:
            # Not done here: another reviewer finished it, or it was judged again.
            st.info(
                f"Part {shown} is no longer waiting (reviewed elsewhere, or judged again): "
                f"showing part {st.session_state['review_part']}. A click meant for it was not "
                f'recorded; to add a defect missed on it, pick "part {shown} (reviewed '
                'elsewhere)" in the list.'
                if shown in by_part
                else f"Part {shown} is no longer waiting (reviewed elsewhere, or judged again): "
                f"showing part {st.session_state['review_part']}."
            )
        elif shown is not None and done is not None and shown == done.part_id:
            st.info(
                f"Part {shown} is done. To add a defect missed on it, pick "
                f'"part {shown} (just reviewed)" in the list.'
            )

    def label(part_id: int) -> str:
        if done is not None and part_id == done.part_id:
            return f"part {part_id} (just reviewed)"
        if part_id in elsewhere_ids and all(q.part_id != part_id for q in queue):
            return f"part {part_id} (reviewed elsewhere)"
        gone = ", image not here" if part_id in unseen_parts else ""
        return f"part {part_id} (margin {by_part[part_id].margin:.2f}{gone})"

    choice = st.selectbox("Part", list(by_part), format_func=label, key="review_part")
    item = by_part[choice]
    with session_scope(state.url) as session:
        inspection = session.get(Inspection, item.inspection_id)
        assert inspection is not None
        part = inspection.part
        words = decided_words(session, item.inspection_id)
        decided = {prediction_id: said_of(said) for prediction_id, said in words.items()}
        predictions = [
            (p.id, p.class_name, p.confidence, p.counted, (p.x1, p.y1, p.x2, p.y2))
            for p in inspection.predictions
        ]
        missed = missed_defects(session, part.id)
        added_boxes = [
            (r.class_name or "defect", r.reviewer, (r.x1, r.y1, r.x2, r.y2)) for r in missed
        ]
        given_way = drawn_over_detections(session, part.id)
        repeats = same_defect_detections(session, part.id)

        def taught_instead(prediction_id: int) -> str:
            """The detection the export teaches in a drawn box's place, as the page numbers
            it: drawn over a duplicate of a more confident detection, that one's box is taught
            (the line named the one drawn over). It may be of another verdict, not shown."""
            shown_at = [j for j, p in enumerate(predictions) if p[0] == prediction_id]
            if shown_at:
                return f"detection {shown_at[0] + 1}'s box"
            return "the box of a detection confirmed on this part"

        added_said = [
            f"- missed {plain(r.class_name or 'defect')}, added by {plain(r.reviewer)}"
            + (
                ": over a detection confirmed since, which stands, so the export teaches "
                f"{taught_instead(given_way[r.id])} in its place"
                if r.id in given_way
                else ""
            )
            for r in missed
        ]
        marked_good = [
            f"{r.reviewer} ({local_time(r.created_at):%Y-%m-%d %H:%M})"
            for r in good_marks(session, part.id)
        ]
        good_by = list(dict.fromkeys(r.reviewer for r in good_marks(session, part.id)))
        counted_as = counted_defective(session, part.id) if marked_good else None
        left_out = left_out_note(inspection.boxes_left_out)
        detector = (
            session.get(ModelVersion, inspection.model_version_id)
            if inspection.model_version_id is not None
            else None
        )
        judged_by = list(detector.classes) if detector else []  # its detector's classes
        verdict, stored_path, size = (
            inspection.verdict.value,
            str(located_image(part.stored_path)),
            (part.width, part.height),
        )
        name = part.original_name
        # The verdict its decisions were made on, where it was judged again since (see
        # `review_queue`): said, so the reviewer knows why the verdict differs from History's.
        latest = session.scalars(
            select(Inspection)
            .where(
                Inspection.part_id == part.id,
                Inspection.is_current(),
                Inspection.verdict != Verdict.ERROR,
            )
            .order_by(Inspection.inspected_at.desc(), Inspection.id.desc())
        ).first()
        judged_again = (
            f" Judged again since ({latest.verdict.value.upper()}): shown with the verdict its "
            "detections were decided on, so that what was decided stays and only the rest is "
            "asked."
            if latest is not None
            and latest.id != item.inspection_id
            # (Not a part judged by two model versions, both verdicts current, shown with the
            # older while nothing was decided: that was said to be the verdict decided on.)
            and verdicts_reviewed(session, [part.id]).get(part.id) == item.inspection_id
            else ""
        )
    info = detector_info(state.url)
    classes = info.classes if info else sorted({p[1] for p in predictions})
    with session_scope(state.url) as session:
        # New defect types reviewers added already: offered beside the detector's own, so the
        # next reviewer picks "crack" rather than typing it again (or "crak").
        added_classes = reviewer_classes(session, classes) if info else []
    # (Each class in its colour, as the Inspect page draws it; the detector's classes first.
    # With none in production, those of the detector that judged the part: by the part's own
    # classes sorted, a class's colour changed from one part to the next.)
    coloured = classes + added_classes if info else judged_by

    def part_standing(defective: bool | None) -> str:
        """`good_part_standing` of the part shown, against what the page said before."""
        return good_part_standing(item.part_id, good_by, counted_as, defective)

    def reviewed(message: str) -> None:
        """After a review of the part shown: said on the next run, which may show another."""
        st.session_state["review_last_part"] = item.part_id
        st.session_state["review_acted"] = True
        if message:
            flash(message)
        st.rerun()

    def decide_buttons(i: int, prediction_id: int, settle: str) -> None:
        """Confirm defect and False call of detection `i`; `settle`: a dispute's, where the
        reviewer's word breaks the tie."""
        a, b = st.columns(2)
        for column, word, key, decide, kind, noun in (
            (
                a,
                "Confirm defect",
                "confirm",
                confirm_defect,
                ReviewKind.CONFIRMED_DEFECT,
                "confirmation",
            ),
            (b, "False call", "false", mark_false_call, ReviewKind.FALSE_CALL, "false call"),
        ):
            label = f"{settle}{word.lower()}" if settle else word
            key = f"{'settle_' if settle else ''}{key}_{prediction_id}"
            if column.button(label, key=key, disabled=blocked, help=why):
                try:
                    with session_scope(state.url) as session:
                        if settle:  # (refused where another's word settled it meanwhile)
                            settle_dispute(session, prediction_id, kind, reviewer)
                        else:
                            decide(session, prediction_id, reviewer)
                        standing = (
                            part_standing(counted_defective(session, item.part_id))
                            if good_by
                            else ""
                        )
                    if settle:
                        # ("settled by your confirm defect" read as the button, not a word.)
                        said = f"Detection {i + 1} of part {item.part_id} settled by your {noun}."
                    else:
                        said = f"Your {noun} of detection {i + 1} of part {item.part_id} recorded."
                    reviewed(f"{said}{standing}" if settle or standing else "")
                except ReviewRecorded as exc:
                    # (Another tab of this reviewer's decided it in the same moment, or another
                    # reviewer settled the dispute.)
                    flash(f"Detection {i + 1} of part {item.part_id}: {exc}.", "warning")
                    st.rerun()

    # Every action's key names the part (or the detection) it was shown for: a click still on
    # its way when the page moved to another part (done elsewhere meanwhile) is then dropped,
    # instead of landing on a part nobody looked at.
    added = st.session_state.get(f"review_added_{item.part_id}", 0)
    left, right = st.columns([3, 2])
    drawn = None
    unseen = ""  # why the part's image cannot be shown; its decisions then wait
    pixels = None
    with left:
        st.markdown(
            f"**{plain(name)}**: {verdict.upper()}.{judged_again} Drag a box on the image around "
            "a missed defect."
        )
        try:
            pixels = decode_image(Path(stored_path).read_bytes()).pixels
            boxes = [
                ShownBox(
                    f"{i + 1}: {c} {conf:.3f}", *box, counted, colour=class_colour(c, coloured)
                )
                for i, (_, c, conf, counted, box) in enumerate(predictions)
                if None not in box
            ] + [
                ShownBox(
                    f"missed: {c}",
                    *box,
                    counted=True,
                    missed=True,
                    colour=class_colour(c, coloured),
                )
                for c, _, box in added_boxes
                if None not in box
            ]
            event = st.plotly_chart(
                review_figure(pixels, boxes),
                on_select="rerun",
                selection_mode="box",
                # (A new key once a box is added: the added box is no longer selected.)
                key=f"draw_{item.part_id}_{added}",
                config={"displaylogo": False},
            )
            drawn = selected_box(event.selection if event else None, size)
        except (OSError, ImageDecodeError) as exc:
            unseen = unshown_image(stored_path, exc)
            st.warning(plain(f"{unseen} Its decisions are off; pick another part."))
    with right:
        if not reviewer.strip():
            st.warning("Enter your name to review.")
        # Nobody approves what they cannot see: without its image the part's decisions are
        # off (another part can still be picked), and each button says why.
        blocked = not reviewer.strip() or bool(unseen)
        why = "Decided only by looking at the part, and its image is not shown." if unseen else None
        if marked_good:
            # Said before the detections' buttons: a reviewer about to confirm a defect on a
            # part marked good was not told, and the rates then counted it defective.
            by = f"Marked good by {', '.join(marked_good)}, {zone_label()}"
            if counted_as:
                st.warning(
                    plain(
                        f"{by}; a defect confirmed or added on it stands, so the rates and the "
                        "export count the part defective."
                    )
                )
            else:
                st.info(
                    plain(
                        f"{by}: counted good. Confirming a defect or adding a missed one makes "
                        "it count defective."
                    )
                )
        for i, (prediction_id, class_name, confidence, counted, _) in enumerate(predictions):
            st.markdown(
                # (Three decimals: at a threshold of 0.111, a counted 0.112 and a 0.109 below
                # it both read "0.11".)
                f"{i + 1}. "
                + label_markdown(
                    f"{class_name} {confidence:.3f}", class_colour(class_name, coloured)
                )
                + ("" if counted else " (below threshold)")
                + (f": **{plain(decided[prediction_id])}**" if prediction_id in decided else ""),
                unsafe_allow_html=True,  # (for label_markdown's span alone)
            )
            if prediction_id in repeats:
                # Confirmed, as the more confident detection over it is: one defect, which the
                # export teaches by that detection's box alone (`same_defect_detections`).
                shown_at = [j for j, p in enumerate(predictions) if p[0] == repeats[prediction_id]]
                # (The one kept may be of another verdict of the part, not shown here.)
                kept, its = (
                    (f"detection {shown_at[0] + 1}", f"detection {shown_at[0] + 1}'s")
                    if shown_at
                    else ("a more confident detection confirmed on this part", "its")
                )
                st.caption(
                    f"The same defect as {kept}, more confident, confirmed too: the export "
                    f"teaches {its} box in this one's place."
                )
            box = predictions[i][4]
            if pixels is not None and max(pixels.shape[:2]) > SHOWN_SIDE and None not in box:
                # The part is shown shrunk: the detection at the part's own resolution.
                st.image(
                    close_up(
                        pixels,
                        DrawnBox(f"{i + 1}", *box, class_colour(class_name, coloured), counted),
                    ),
                    caption=f"{i + 1} at full resolution",
                    width=240,
                )
            if prediction_id in decided:
                mine = [kind for kind, who in words[prediction_id] if who == reviewer.strip()]
                clicked = [
                    word
                    for word, key in (("confirmed defect", "confirm"), ("false call", "false"))
                    for settle in ("", "settle_")  # (a dispute another settled meanwhile)
                    if st.session_state.get(f"{settle}{key}_{prediction_id}")
                ]
                if clicked and not mine:
                    # Decided by another meanwhile: the click is dropped (its button is gone),
                    # which the line alone did not say.
                    others = ", ".join(dict.fromkeys(who for _, who in words[prediction_id]))
                    st.warning(
                        plain(
                            f"Your {clicked[0]} on detection {i + 1} was not recorded: "
                            f"{others} decided it meanwhile ({decided[prediction_id]})."
                        )
                    )
                if len({kind for kind, _ in words[prediction_id]}) > 1 and mine:
                    # Reviewers disagree (pages drawn before each other's click): one of them
                    # gives way, and the other's word stands alone.
                    said = mine[-1].replace("_", " ")
                    if st.button(
                        f"Withdraw my {said}", key=f"withdraw_{prediction_id}", disabled=blocked
                    ):
                        with session_scope(state.url) as session:
                            withdraw_decision(session, prediction_id, reviewer)
                            standing = (
                                part_standing(counted_defective(session, item.part_id))
                                if good_by
                                else ""
                            )
                        reviewed(
                            f"Your {said} on detection {i + 1} of part {item.part_id} "
                            f"withdrawn.{standing}"
                        )
                if disputed(words[prediction_id]) and not mine:
                    # Two reviewers disagree: a third word (a lead's) settles it either way.
                    decide_buttons(i, prediction_id, "Settle: ")
                continue
            decide_buttons(i, prediction_id, "")
        if left_out:  # (a tiled part keeps its most confident counted boxes)
            st.caption(left_out)
        for said in added_said:
            st.markdown(said)
        undecided = [p for p in predictions if p[0] not in decided]
        if (
            decided
            and undecided
            and st.button(
                f"The other {len(undecided)} are false calls",
                key=f"decide_rest_{item.inspection_id}",
                disabled=blocked,
                help=why,
            )
        ):
            try:
                with session_scope(state.url) as session:
                    decide_the_rest(session, item.inspection_id, reviewer)
                reviewed(f"Part {item.part_id} reviewed.")
            except ReviewRecorded as exc:
                flash(f"Part {item.part_id}: nothing recorded, {exc}.", "warning")
                st.rerun()
        if st.button("Mark part good", key=f"mark_good_{item.part_id}", disabled=blocked, help=why):
            try:
                with session_scope(state.url) as session:
                    mark_good(session, item.part_id, reviewer)
                reviewed(f"Part {item.part_id} marked good.")
            except ValueError as exc:
                st.error(plain(exc))
        with st.form(f"missed_{item.part_id}_{added}"):
            st.markdown(
                "Add a missed defect: drag a box on the image, or type its corners (pixels)"
            )
            if not classes:
                st.warning("No production model: its classes are unknown, so none can be added.")
            missed_class = st.selectbox(
                "Class",
                classes + added_classes,
                key=f"missed_class_{item.part_id}_{added}",
                format_func=lambda c: f"{c} (new class)" if c in added_classes else c,
            )
            typed_class = st.text_input(
                "Or a new class",
                key=f"new_class_{item.part_id}_{added}",
                help="A defect type the production detector does not know: exported as a class "
                "added to its own, to fine-tune it on (Models page).",
            )
            c1, c2, c3, c4 = st.columns(4)
            # Empty until a box is drawn or typed: a whole-image default, added by a press
            # of the button, taught the model that the whole part is one defect.
            start = drawn or (None, None, None, None)
            suffix = f"{item.part_id}_{added}_{drawn}"  # a new drawn box refills the fields
            corners = [
                column.number_input(label, min_value=0.0, value=value, key=f"{label}_{suffix}")
                for column, label, value in zip(
                    (c1, c2, c3, c4), ("x1", "y1", "x2", "y2"), start, strict=True
                )
            ]
            if st.form_submit_button(
                "Add missed defect", disabled=blocked or not classes, help=why
            ):
                try:
                    if None in corners:
                        raise ValueError("drag a box on the image, or type all four corners")
                    chosen = typed_class if typed_class.strip() else str(missed_class)
                    with session_scope(state.url) as session:
                        review = add_missed_defect(
                            session,
                            item.part_id,
                            chosen,
                            tuple(float(c) for c in corners),  # type: ignore[arg-type]
                            reviewer,
                            classes=classes,
                            new_class=bool(typed_class.strip()) or missed_class in added_classes,
                        )
                        stored = str(review.class_name)
                        # (A defect added to a part marked good makes it count defective, which
                        # "added" alone did not say, as a confirmation there says it.)
                        standing = (
                            part_standing(counted_defective(session, item.part_id))
                            if good_by
                            else ""
                        )
                    st.session_state[f"review_added_{item.part_id}"] = added + 1
                    new = (
                        " (a new class: not one the production detector knows)"
                        if stored not in classes
                        else ""
                    )
                    reviewed(f"Missed {plain(stored)}{new} added to part {item.part_id}.{standing}")
                except (ValueError, LookupError) as exc:
                    st.error(plain(exc))
    st.caption(
        "Boxes: each class in its own colour, as on the Inspect page; solid counts toward the "
        "verdict, dashed is below its threshold, dotted is a missed defect a reviewer added."
    )

st.divider()
st.subheader("Reviewed parts as training data")
if not access.engineer:
    # Building datasets and training are an engineer's work (the Models page is theirs): a
    # reviewer is not offered the export, and this page's own code stops before it, so no
    # stale form or changed role runs it.
    st.caption(
        "Engineers export the reviewed parts as a training dataset: "
        + (f"{plain(access.name)} is a reviewer." if access.logged_in else "log in.")
    )
    st.stop()
with session_scope(state.url) as session:
    free_name = unused_dataset_name(session)


def page_grid(text: str) -> TileChoice:
    """The Tiles box: empty for the production model's grid, `off`, or SIZE[:OVERLAP]."""
    value = text.strip().lower()
    if value in ("", "off"):
        return "off" if value else "model"
    try:
        return TileSpec.parse(value)
    except TileSpecError as exc:
        raise UserError(f"Tiles {text.strip()}: {exc}") from exc


with st.form("export"):
    dataset_name = st.text_input("New dataset name", value=free_name)
    tiles = st.text_input(
        "Tiles (SIZE[:OVERLAP], or off)",
        value="",
        # (The export said to export again with --tile where stations judged in another grid
        # than the production model's, which this page had no way to give.)
        help="Cut the parts into tiles of SIZE pixels, as `--tile` does: empty for the "
        "production model's own grid, `off` to keep every part whole.",
    )
    if st.form_submit_button("Export reviewed parts"):
        info = detector_info(state.url)
        if info is None:
            st.error("No production model: the export needs its class list.")
        else:
            try:
                grid = page_grid(tiles)
                with session_scope(state.url) as session:
                    report = export_reviews(
                        session, dataset_name, info.classes, get_settings().datasets_dir, grid
                    )
                new_classes = report.classes[len(info.classes) :]
                st.success(
                    f"Exported {report.n_images} part{'' if report.n_images == 1 else 's'} as "
                    f"dataset {plain(report.name)}"
                    + (f", {report.cut_into}" if report.cut_into else "")
                    + ": retrain on the Models page."
                    + (
                        f" New classes, after the production detector's: "
                        f"{plain(', '.join(new_classes))}."
                        if new_classes
                        else ""
                    )
                )
                for issue in report.issues[:20]:
                    # (The caveats of new classes first: each says how many parts lack them.)
                    if issue.caveat:
                        st.warning(plain(issue))
                    else:
                        st.caption(plain(issue))
            except UserError as exc:
                st.error(plain(exc))
