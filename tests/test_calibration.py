"""Calibration on hand-made scores whose right thresholds are known."""

from __future__ import annotations

import pytest

from inspection.errors import UserError
from training.calibrate import (
    MAX_MISS_RATE_TARGET,
    PART,
    PartScores,
    ScoredDetection,
    ScoredPart,
    apply_thresholds,
    calibrate,
    calibrate_with_verification,
    calibration_notes,
    parse_verify_threshold,
    shared_is_safer,
    upper_bound,
)


def _parts() -> list[PartScores]:
    return [
        # Defective parts: scratches at 0.9, 0.8, 0.7; one spot at 0.5.
        PartScores(True, {"scratch": 0.9}),
        PartScores(True, {"scratch": 0.8}),
        PartScores(True, {"scratch": 0.7, "spot": 0.2}),
        PartScores(True, {"spot": 0.5}),
        # Good parts: scratch scores 0.6 and 0.3, a spot at 0.4.
        PartScores(False, {"scratch": 0.6}),
        PartScores(False, {"scratch": 0.3}),
        PartScores(False, {"spot": 0.4}),
        PartScores(False, {}),
    ]


def test_zero_misses_with_no_false_call_when_the_scores_separate() -> None:
    result = calibrate(
        _parts(), ["scratch", "spot"], max_miss_rate=0.0, class_thresholds="per-class"
    )
    # Each threshold in the middle of its gap: scratch between the 0.7 defect and the 0.6 good
    # part, spot between the 0.5 defect and the 0.4 good part.
    assert result.thresholds == pytest.approx({"scratch": 0.65, "spot": 0.45})
    assert (result.n_missed, result.n_false_calls) == (0, 0)


def test_a_threshold_sits_in_the_gap_so_a_slightly_fainter_new_defect_is_caught() -> None:
    parts = [
        PartScores(True, {"scratch": 0.8}),
        PartScores(True, {"scratch": 0.6}),
        PartScores(False, {"scratch": 0.2}),
        PartScores(False, {"scratch": 0.9}),  # flagged whatever the threshold: the target wins
    ]
    result = calibrate(parts, ["scratch"], max_miss_rate=0.0)
    assert result.thresholds["scratch"] == pytest.approx(0.4)
    assert (result.n_missed, result.n_false_calls) == (0, 1)
    new_parts = [PartScores(True, {"scratch": 0.55}), PartScores(False, {"scratch": 0.3})]
    assert apply_thresholds(new_parts, result.thresholds).n_missed == 0
    assert apply_thresholds(new_parts, result.thresholds).n_false_calls == 0
    on_faintest = calibrate(parts, ["scratch"], max_miss_rate=0.0, centre=False)
    assert on_faintest.thresholds["scratch"] == pytest.approx(0.6)
    assert apply_thresholds(new_parts, on_faintest.thresholds).n_missed == 1


def test_a_looser_target_trades_a_miss_for_nothing_when_nothing_is_gained() -> None:
    # Allowing one miss in four: no false call to save, so the most permissive thresholds that
    # still keep three of four caught are chosen (the spot is let go).
    result = calibrate(_parts(), ["scratch", "spot"], 0.25, class_thresholds="per-class")
    assert result.n_missed <= 1 and result.n_false_calls == 0
    assert result.thresholds["scratch"] == pytest.approx(0.65)  # between 0.7 and the good 0.6


def test_an_unavoidable_false_call_is_taken_to_meet_the_target() -> None:
    parts = [
        PartScores(True, {"scratch": 0.55}),
        PartScores(True, {"scratch": 0.95}),
        PartScores(False, {"scratch": 0.6}),
        PartScores(False, {"scratch": 0.1}),
    ]
    result = calibrate(parts, ["scratch"], max_miss_rate=0.0)
    assert result.thresholds == pytest.approx({"scratch": (0.55 + 0.1) / 2})
    assert (result.n_missed, result.n_false_calls) == (0, 1)
    assert result.false_call_rate == pytest.approx(0.5)


def test_part_classifier_dimension_catches_what_the_detector_misses() -> None:
    parts = [
        PartScores(True, {"scratch": 0.9, PART: 0.2}),
        PartScores(True, {PART: 0.8}),  # no box at all
        PartScores(False, {"scratch": 0.4, PART: 0.1}),
        PartScores(False, {PART: 0.3}),
    ]
    result = calibrate(parts, ["scratch", PART], max_miss_rate=0.0)
    assert result.n_missed == 0 and result.n_false_calls == 0
    assert result.thresholds[PART] == pytest.approx(0.55)  # between 0.8 and the good 0.3
    assert result.thresholds["scratch"] > 0.4


def test_a_part_without_any_score_cannot_be_caught_and_is_reported() -> None:
    parts = [PartScores(True, {}), PartScores(True, {"scratch": 0.5}), PartScores(False, {})]
    result = calibrate(parts, ["scratch"], max_miss_rate=0.0)
    assert result.n_missed == 1 and result.details["uncatchable_defective_parts"] == 1
    assert result.report()["miss_rate"] == 0.5


def test_upper_bound_of_zero_misses_is_not_zero() -> None:
    bound = upper_bound(0, 180)
    assert bound == pytest.approx(1 - 0.05 ** (1 / 180), rel=1e-6)  # about 1.65%
    assert 0.016 < bound < 0.017
    assert upper_bound(0, 0) is None and upper_bound(5, 5) == 1.0
    assert upper_bound(1, 100) == pytest.approx(0.0466, abs=1e-4)  # the published value


def test_upper_bounds_are_one_sided_clopper_pearson() -> None:
    """The bound the output calls one-sided: p with P(X <= k | n, p) = 0.05. By hand, for 1 of
    2: 1 - p^2 = 0.05, p = sqrt(0.95) = 0.974679; for 0 of 180: 1 - 0.05^(1/180) = 0.016505
    (the two-sided 95% interval's upper end would be 1 - 0.025^(1/180) = 0.020285); for 3 of
    180, 0.042510 (the beta distribution's 0.95 quantile, Beta(4, 177))."""
    assert upper_bound(1, 2) == pytest.approx(0.95**0.5, abs=1e-9)
    assert upper_bound(0, 180) == pytest.approx(0.016505, abs=1e-6)
    assert upper_bound(3, 180) == pytest.approx(0.042510, abs=1e-6)


def test_a_class_the_split_never_scores_gets_the_shared_threshold() -> None:
    result = calibrate(
        [PartScores(True, {"scratch": 0.5}), PartScores(False, {})],
        ["scratch", "spot"],
        0.0,
        class_thresholds="per-class",
    )
    # No good part below the defect at 0.5: 1% under it, so that a strict comparison (the
    # engine's and ultralytics') still catches it.
    assert result.thresholds == pytest.approx({"scratch": 0.495, "spot": 0.495})
    assert result.classes_left_off == []
    assert result.details["classes_on_shared_threshold"] == ["spot"]


def test_a_class_that_only_comes_with_caught_defects_keeps_a_threshold() -> None:
    # Every spot sits on a part whose scratch is caught: per-class search needs no spot
    # threshold, and off would pass a part with only a spot. It gets the shared one instead.
    parts = [
        PartScores(True, {"scratch": 0.9, "spot": 0.3}),
        PartScores(True, {"scratch": 0.8, "spot": 0.35}),
        PartScores(False, {"spot": 0.4}),
        PartScores(False, {"scratch": 0.2}),
    ]
    per_class = calibrate(parts, ["scratch", "spot"], 0.0, class_thresholds="per-class")
    shared = calibrate(parts, ["scratch", "spot"], 0.0, class_thresholds="shared")
    # Shared: the weakest defect of any class is 0.8, centred down towards the good 0.4: 0.6.
    assert shared.thresholds == pytest.approx({"scratch": 0.6, "spot": 0.6})
    # Per class, scratch centres between 0.8 and the good 0.2 (0.5); spot takes the shared 0.6.
    assert per_class.thresholds == pytest.approx({"scratch": 0.5, "spot": 0.6})
    assert per_class.classes_left_off == []
    assert per_class.details["classes_on_shared_threshold"] == ["spot"]
    assert (per_class.n_missed, per_class.n_false_calls) == (0, 0)
    assert apply_thresholds([PartScores(True, {"spot": 0.7})], per_class.thresholds).n_missed == 0
    notes = calibration_notes(per_class)
    assert [level for level, _ in notes] == ["warning", "info"]
    assert "no split can show a miss rate of 0" in notes[0][1]
    assert "spot: the shared threshold" in notes[1][1]


def test_a_class_is_left_off_only_when_no_threshold_can_be_set_and_that_is_said() -> None:
    # The detector found nothing on the defective part: no threshold catches it.
    parts = [PartScores(True, {}), PartScores(False, {"spot": 0.4})]
    result = calibrate(parts, ["scratch", "spot"], 0.0, class_thresholds="per-class")
    assert result.classes_left_off == ["scratch", "spot"]
    [(not_met, missed), (level, text)] = calibration_notes(result)
    assert not_met == "warning" and "1 of 1 defective parts are missed" in missed
    assert level == "warning" and "scratch, spot: off" in text


def test_without_good_parts_false_detections_keep_thresholds_sensible() -> None:
    # Every part defective (as in NEU-DET). "crazing" fires weakly everywhere as a false
    # detection; each part's real defect scores high in its own class. Lowering crazing to 0.05
    # would also catch every part, but only the per-class thresholds keep false detections out.
    parts = [
        PartScores(True, {"crazing": 0.05, "scratch": 0.9}, {"crazing": 0.05}),
        PartScores(True, {"crazing": 0.06, "scratch": 0.8}, {"crazing": 0.06}),
        PartScores(True, {"crazing": 0.7}, {}),
        PartScores(True, {"crazing": 0.05, "spot": 0.6}, {"crazing": 0.05}),
    ]
    result = calibrate(parts, ["crazing", "scratch", "spot"], 0.0, class_thresholds="per-class")
    assert result.n_missed == 0
    assert result.thresholds == pytest.approx({"crazing": 0.693, "scratch": 0.792, "spot": 0.594})


def test_one_shared_threshold_is_the_weakest_defect_of_any_class() -> None:
    # Best score of any class per part: defective 0.9, 0.8, 0.7, 0.5; good 0.6, 0.3, 0.4, none.
    # Catching the 0.5 part with one threshold also fails the good part at 0.6; the threshold
    # goes down to the middle of the gap to the next good part (0.4).
    result = calibrate(_parts(), ["scratch", "spot"], 0.0, class_thresholds="shared")
    assert result.thresholds == pytest.approx({"scratch": 0.45, "spot": 0.45})
    assert (result.n_missed, result.n_false_calls) == (0, 1)
    assert result.details["class_thresholds"] == "shared"


def test_auto_shares_one_threshold_until_the_split_is_large_enough() -> None:
    # Four defective parts and two classes: per-class only once 4 * target >= 2.
    assert calibrate(_parts(), ["scratch", "spot"], 0.0).details["class_thresholds"] == "shared"
    looser = calibrate(_parts(), ["scratch", "spot"], 0.5)
    assert looser.details["class_thresholds"] == "per-class"
    assert shared_is_safer(1199, 6, 0.005) and not shared_is_safer(1200, 6, 0.005)
    assert not shared_is_safer(10, 1, 0.0)  # one class: nothing to share


def test_per_class_thresholds_from_a_small_split_let_more_new_defects_through() -> None:
    # Six classes, 30 calibration parts each, every defect's score drawn from the same law on
    # both splits: each per-class threshold sits at the weakest of 30 (about 1 in 31 new defects
    # below it), the shared one at the weakest of 180 (about 1 in 181).
    import random

    rng = random.Random(7)
    classes = [f"class{i}" for i in range(6)]

    def split(n_per_class: int) -> list[PartScores]:
        return [
            PartScores(True, {name: rng.random()}) for name in classes for _ in range(n_per_class)
        ]

    calibration_split, new_parts = split(30), split(2000)
    per_class = calibrate(calibration_split, classes, 0.0, class_thresholds="per-class")
    shared = calibrate(calibration_split, classes, 0.0, class_thresholds="shared")
    assert per_class.n_missed == shared.n_missed == 0
    missed_per_class = apply_thresholds(new_parts, per_class.thresholds).n_missed
    missed_shared = apply_thresholds(new_parts, shared.thresholds).n_missed
    assert missed_shared / 12000 < 0.01 < missed_per_class / 12000


def _scored(defective: bool, *detections: tuple[str, float, float | None]) -> ScoredPart:
    return ScoredPart(
        defective,
        tuple(ScoredDetection(c, conf, crop, defective) for c, conf, crop in detections),
    )


def test_verification_keeps_only_the_confirmed_detections_of_a_part() -> None:
    part = _scored(False, ("scratch", 0.6, 0.1), ("scratch", 0.4, 0.9), ("spot", 0.8, None))
    assert part.scores().scores == {"scratch": 0.6, "spot": 0.8}
    # At 0.5 the 0.6 scratch is rejected; the spot's crop was never scored, so it cannot count.
    assert part.scores(0.5).scores == {"scratch": 0.4}
    assert part.scores(0.5).background == {"scratch": 0.4}  # a good part: every detection is false


def test_verification_lets_a_low_threshold_catch_a_faint_defect_without_false_calls() -> None:
    parts = [
        _scored(True, ("scratch", 0.9, 0.95)),
        _scored(True, ("scratch", 0.3, 0.8)),  # faint, but its crop is clearly a defect
        _scored(False, ("scratch", 0.6, 0.1)),  # false detections the crop rejects
        _scored(False, ("scratch", 0.5, 0.2)),
        _scored(False),
    ]
    unverified = calibrate([p.scores() for p in parts], ["scratch"], 0.0)
    assert (unverified.n_missed, unverified.n_false_calls) == (0, 2)
    verify, result = calibrate_with_verification(parts, ["scratch"], 0.0)
    assert verify is not None and 0.2 < verify <= 0.8
    assert (result.n_missed, result.n_false_calls) == (0, 0)
    assert result.thresholds["scratch"] <= 0.3
    assert result.details["verify"] == verify


def test_the_crop_threshold_sits_in_its_gap_too() -> None:
    parts = [
        _scored(True, ("scratch", 0.9, 0.95)),
        _scored(True, ("scratch", 0.3, 0.8)),
        _scored(False, ("scratch", 0.6, 0.1)),
        _scored(False, ("scratch", 0.5, 0.2)),  # the most defect-like crop a good part has
    ]
    on_crops, plain = calibrate_with_verification(parts, ["scratch"], 0.0, centre=False)
    centred, result = calibrate_with_verification(parts, ["scratch"], 0.0)
    assert on_crops is not None and centred is not None
    assert centred == pytest.approx((on_crops + 0.2) / 2)
    assert (result.n_missed, result.n_false_calls) == (0, 0)
    # A new defect whose crop scores a little under every crop of the split is still confirmed.
    new_defect = _scored(True, ("scratch", 0.95, (on_crops + centred) / 2))
    assert apply_thresholds([new_defect.scores(centred)], result.thresholds).n_missed == 0
    assert apply_thresholds([new_defect.scores(on_crops)], plain.thresholds).n_missed == 1


def test_verification_stays_off_when_it_cuts_no_false_call() -> None:
    parts = [
        _scored(True, ("scratch", 0.9, 0.5)),
        _scored(False, ("scratch", 0.3, 0.9)),  # the crop would confirm this false detection
    ]
    verify, result = calibrate_with_verification(parts, ["scratch"], 0.0)
    assert verify is None
    assert (result.n_missed, result.n_false_calls) == (0, 0)
    assert result.thresholds["scratch"] == pytest.approx(0.6)  # between 0.9 and the good 0.3


def test_a_crop_threshold_is_a_probability_or_auto() -> None:
    assert parse_verify_threshold(None) is None
    assert parse_verify_threshold("auto") == "auto"
    assert parse_verify_threshold("0.9") == 0.9
    for bad in ("high", "1.5", -0.1):
        with pytest.raises(UserError, match="probability"):
            parse_verify_threshold(bad)


def test_one_rule_for_the_miss_rate_target_on_the_command_line_too() -> None:
    """`defects calibrate --max-miss-rate` took up to 0.99 while the Settings page stopped at
    0.5: one rule now, checked before any model is looked up or any part scored."""
    from typer.testing import CliRunner

    from training.cli import app

    assert calibrate(_parts(), ["scratch", "spot"], MAX_MISS_RATE_TARGET).n_defective == 4
    for bad in (MAX_MISS_RATE_TARGET + 0.01, -0.01, float("nan")):
        with pytest.raises(UserError, match="must be from 0 to"):
            calibrate(_parts(), ["scratch", "spot"], bad)
    for bad in ("0.9", "nan"):
        command = ["calibrate", "nope", "--data", "none", "--max-miss-rate", bad]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        assert str(result.exception).startswith(
            f"the target miss rate must be from 0 to {MAX_MISS_RATE_TARGET}, not {bad}"
        )


@pytest.mark.parametrize(
    ("n_defective", "target", "said"),
    [
        (1, 0.05, "the rate on new parts may be up to 95.0%"),
        (100, 0.005, "at least 598 defective parts with none missed are needed"),
        (600, 0.005, None),  # 0 of 600: upper bound 0.4992%, under the target
    ],
)
def test_a_split_too_small_for_its_target_is_said(
    n_defective: int, target: float, said: str | None
) -> None:
    """Calibrating for 0.5% on 100 defective parts promises what 100 parts cannot show."""
    parts = [PartScores(True, {"scratch": 0.9})] * n_defective + [PartScores(False, {})]
    warnings = [
        text
        for level, text in calibration_notes(calibrate(parts, ["scratch"], target))
        if level == "warning"
    ]
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and said in warnings[0]


def test_classes_stay_on_where_the_part_classifier_alone_meets_the_target() -> None:
    """With the part classifier catching every defective part, per-class calibration left
    every class off (and said the split set no threshold for them, though they scored): a new
    part whose defect the classifier missed then passed whatever the detector found."""
    parts = [
        PartScores(True, {"scratch": 0.9, "spot": 0.7, PART: 0.9}),
        PartScores(True, {"scratch": 0.6, PART: 0.8}),
        PartScores(True, {"spot": 0.5, "scratch": 0.4, PART: 0.85}),
        # Good parts the detector flags above every defect: any class threshold costs calls.
        PartScores(False, {"scratch": 0.95, PART: 0.1}),
        PartScores(False, {"spot": 0.95, PART: 0.2}),
    ]
    result = calibrate(
        parts, ["scratch", "spot", PART], max_miss_rate=0.0, class_thresholds="per-class"
    )
    assert result.n_missed == 0
    assert result.classes_left_off == []


def test_classes_off_for_the_detector_are_not_said_to_pass_when_the_part_classifier_judges() -> (
    None
):
    """With the part classifier deciding, the notes said a part with only these defects
    "would pass", against the table beside them: the classifier fails it."""
    from training.calibrate import PART

    parts = [PartScores(True, {PART: 0.9}), PartScores(False, {"spot": 0.4, PART: 0.1})]
    result = calibrate(parts, ["scratch", "spot", PART], 0.0, class_thresholds="per-class")
    assert result.n_missed == 0 and result.classes_left_off == ["scratch", "spot"]
    said = " ".join(text for _, text in calibration_notes(result))
    assert "would pass" not in said
    assert "scratch, spot: off for the detector; the part classifier alone fails" in said


def test_an_operating_point_is_stored_only_over_the_one_it_was_read_beside(
    database_url: str,
) -> None:
    """The Settings page's save and a calibration's use: a change made between the page's
    read and its write (a calibration, another user) was overwritten."""
    from db.models import ModelKind, ModelVersion
    from db.session import session_scope
    from training.calibrate import store_operating_point, thresholds_stamp

    read = {"default": 0.25, "per_class": {"spot": 0.25}}
    with session_scope(database_url) as session:
        session.add(
            ModelVersion(
                name="m",
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                file_path="m.pt",
                sha256="0" * 64,
                thresholds=read,
            )
        )
    elsewhere = {"default": 0.5, "per_class": {"spot": 0.5}}
    assert store_operating_point(database_url, "m", elsewhere)  # another user, meanwhile
    mine = {"default": 0.3, "per_class": {"spot": 0.3}}
    assert not store_operating_point(
        database_url, "m", mine, unless_changed_from=thresholds_stamp(read)
    )
    with session_scope(database_url) as session:
        assert session.query(ModelVersion).one().thresholds == elsewhere
    assert store_operating_point(
        database_url, "m", mine, unless_changed_from=thresholds_stamp(elsewhere)
    )


def test_the_summary_says_what_was_stored_not_what_was_asked() -> None:
    """With the part classifier alone judging, `calibrate --class-thresholds shared
    --verify-threshold auto` printed "one threshold shared by every class" under a table of
    classes all off, and "verification off: it did not cut false calls" where no detection
    was left to verify or the target was not met at any crop threshold."""
    from training.calibrate import build_operating_point, choice_lines

    classes = ["scratch", "spot"]
    detection = ScoredDetection
    parts = [
        ScoredPart(True, (detection("scratch", 0.9, 0.9, True),), part_probability=0.9),
        ScoredPart(True, (detection("spot", 0.5, 0.9, True),), part_probability=0.8),
        # A good part the detector flags above the faint spot: the classifier alone is cheaper.
        ScoredPart(False, (detection("scratch", 0.95, 0.95, False),), part_probability=0.1),
    ]
    verify, result = calibrate_with_verification(parts, [*classes, PART], 0.0, "shared")
    point = build_operating_point(result, classes, 0.45, "d", "val", "cls", verify)
    assert result.classes_left_off == classes and point["classifier"]["part"] is not None
    lines = choice_lines(point, verify_auto=True)
    assert not any("shared by every class" in line for line in lines)
    assert lines == [
        "verification off: every class is off for the detector, so no detection is left to verify"
    ]

    # A defective part nothing scores: the target is met at no crop threshold.
    unmet = [*parts, ScoredPart(True, ())]
    verify, result = calibrate_with_verification(unmet, [*classes, PART], 0.0, "shared")
    point = build_operating_point(result, classes, 0.45, "d", "val", "cls", verify)
    assert verify is None and result.n_missed == 1
    assert any(
        "target is not met at any crop threshold" in line for line in choice_lines(point, True)
    )

    # Classes on, one shared threshold: said with its value, and a classifier doing nothing too.
    shared = [PartScores(True, {"scratch": 0.9, PART: 0.2}), PartScores(False, {PART: 0.9})]
    result = calibrate(shared, [*classes, PART], 0.0, "shared")
    point = build_operating_point(result, classes, 0.45, "d", "val", "cls", None)
    lines = choice_lines(point, verify_auto=True)
    value = point["per_class"]["scratch"]
    assert lines[0] == f"one threshold shared by every class ({value:.4f})"
    assert "verification off: no crop threshold cut a false call at this target" in lines
    assert "classifier cls fails no part" in lines[-1]


def test_with_no_good_part_the_part_classifier_judges_only_what_the_detector_cannot() -> None:
    """On a split of defective parts only, the classifier's false calls weigh nothing and the
    detector's false detections weigh a little: the classifier judged alone, every class off,
    and failed every good part it later met. It now stays off where the detector meets the
    target, and catches only what the detector cannot."""
    parts = [
        PartScores(True, {"scratch": 0.9, PART: 0.9}, background={"scratch": 0.3}),
        PartScores(True, {"scratch": 0.6, PART: 0.8}),
        PartScores(True, {"scratch": 0.5, PART: 0.85}, background={"scratch": 0.2}),
    ]
    result = calibrate(parts, ["scratch", PART], max_miss_rate=0.0)
    assert result.thresholds[PART] == float("inf")
    assert result.thresholds["scratch"] <= 0.5 and result.n_missed == 0
    assert any("part classifier is left off" in text for _, text in calibration_notes(result))
    # A defective part with no detection at all: the classifier is needed for it.
    with_unseen = [*parts, PartScores(True, {PART: 0.7})]
    needed = calibrate(with_unseen, ["scratch", PART], max_miss_rate=0.0)
    assert needed.n_missed == 0 and needed.thresholds[PART] <= 0.7


def test_with_no_good_part_crop_verification_does_not_hand_the_part_to_the_classifier() -> None:
    """With crop verification auto on a split of defective parts only, a crop threshold that
    rejected one real defect's crop left the part classifier to catch it, and the classifier,
    whose false calls weigh nothing there, judged alone, every class off: the very point the
    detector-first rule of `calibrate` keeps out. The detector, unverified, meets the target."""
    parts = [
        ScoredPart(
            True,
            (
                ScoredDetection("scratch", 0.9, 0.9, True),
                ScoredDetection("scratch", 0.4, 0.92, False),
            ),
            0.9,
        ),
        ScoredPart(True, (ScoredDetection("scratch", 0.6, 0.95, True),), 0.8),
        ScoredPart(
            True,
            (
                ScoredDetection("scratch", 0.5, 0.2, True),
                ScoredDetection("scratch", 0.7, 0.95, False),
            ),
            0.85,
        ),
    ]
    verify, result = calibrate_with_verification(parts, ["scratch", PART], 0.0)
    assert result.thresholds[PART] == float("inf")
    assert result.thresholds["scratch"] <= 0.6 and result.n_missed == 0
    assert result.details.get("part_classifier_off") == "no good parts"
    assert verify is None


def test_verification_left_off_on_a_split_without_good_parts_says_why() -> None:
    """`calibrate --verify-threshold auto` on a split of defective parts only said "no crop
    threshold cut a false call", though there was no good part to cut one on."""
    from training.calibrate import build_operating_point, choice_lines

    parts = [
        ScoredPart(True, (ScoredDetection("scratch", 0.9, 0.9, True),)),
        ScoredPart(True, (ScoredDetection("scratch", 0.6, 0.95, True),)),
    ]
    verify, result = calibrate_with_verification(parts, ["scratch", PART], 0.0)
    point = build_operating_point(result, ["scratch"], 0.45, "d", "val", "cls", verify)
    assert verify is None and result.n_good == 0
    lines = choice_lines(point, verify_auto=True)
    assert not any("cut a false call" in line for line in lines)
    assert (
        "verification off: the split has no good parts, so no crop threshold can be chosen "
        "from it; stored without crop verification (calibrate on a split with good parts to "
        "choose one)"
    ) in lines
