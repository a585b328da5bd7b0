"""Per-class thresholds calibrated to a target part miss rate, with the fewest false calls.

QA engineers set escape-rate targets, not confidence scores. Given each part's best score per
defect class (and the part classifier's defect probability), this picks the thresholds that keep
the miss rate on a labeled split at or under the target while failing the fewest good parts,
and reports the expected rates with an upper confidence bound: 0 misses in 180 parts is not a
0% miss rate.

Per-class thresholds fail fewer good parts, but each is learned from that class's parts alone: a
threshold set at the weakest of n_c caught parts lets through about 1/(n_c + 1) of that class's
new defects, so per-class thresholds from a small split miss several times the target on new
parts (the shipped NEU-DET demo: 0 of 180 missed on val, 9 of 180 on test). One threshold shared
by every class is learned from all n parts (about 1/(n + 1)). `auto` therefore shares one
threshold unless the split holds at least classes / target defective parts.

The search is greedy: from "flag nothing", repeatedly lower the one threshold that catches the
most still-missed defective parts per good part it newly fails, until the target holds; then
raise each threshold as far as the target allows, and finally lower it to the middle of the gap
down to the next good part (the split's verdicts stay the same; new parts a little fainter than
the split's faintest defect are still caught). Written here because no library offers a
multi-threshold, part-level escape-rate calibration.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from db.queries import PartCounts
from inspection.errors import UserError

PART = "__part__"  # the dimension of the part classifier's defect probability
ANY_CLASS = "__any_class__"  # the best detection of any class, for one shared threshold
NEVER = math.inf
CLASS_THRESHOLD_MODES = ("auto", "per-class", "shared")

# The largest miss-rate target a calibration takes, on the command line and the Settings page
# alike (they allowed 0.99 and 0.5): thresholds tuned to miss more than half of the defective
# parts would not be inspection.
MAX_MISS_RATE_TARGET = 0.5


def check_miss_rate_target(max_miss_rate: float) -> None:
    """The one rule for a miss-rate target, checked before the split is scored (minutes)."""
    if not 0 <= max_miss_rate <= MAX_MISS_RATE_TARGET:  # (also refuses nan)
        raise UserError(
            f"the target miss rate must be from 0 to {MAX_MISS_RATE_TARGET}, "
            f"not {max_miss_rate:g} (0.005: at most 1 part in 200 missed)"
        )


@dataclass(frozen=True)
class PartScores:
    defective: bool
    scores: dict[str, float]  # best confidence per defect class (and PART), absent = none
    # Best confidence per class among detections that match no labeled defect: on a good part
    # they would be false calls. They break ties where the split has few or no good parts.
    background: dict[str, float] = field(default_factory=dict)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]
    peak = max(terms)
    return math.exp(peak) * sum(math.exp(t - peak) for t in terms)


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate seen as failures / trials.

    The p at which seeing `failures` or fewer becomes as unlikely as 1 - confidence, found by
    bisection on the binomial CDF (the product does not otherwise need SciPy).
    """
    if trials == 0:
        return None
    if failures >= trials:
        return 1.0
    low, high = failures / trials, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if _binomial_cdf(failures, trials, middle) > 1 - confidence:
            low = middle
        else:
            high = middle
    return high


def rate_report(counts: PartCounts) -> dict[str, Any]:
    """Miss and false-call rates with their counts and 95% upper bounds, as stored and reported."""
    return {
        "miss_rate": counts.miss_rate,
        "miss_rate_upper_95": upper_bound(counts.n_missed, counts.n_defective),
        "n_missed": counts.n_missed,
        "n_defective": counts.n_defective,
        "false_call_rate": counts.false_call_rate,
        "false_call_rate_upper_95": upper_bound(counts.n_false_calls, counts.n_good),
        "n_false_calls": counts.n_false_calls,
        "n_good": counts.n_good,
    }


@dataclass(frozen=True)
class Calibration(PartCounts):
    thresholds: dict[str, float] = field(default_factory=dict)  # inf: never fails a part
    max_miss_rate: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"max_miss_rate": self.max_miss_rate, **rate_report(self), **self.details}

    @property
    def classes_left_off(self) -> list[str]:
        """Defect classes whose detections never fail a part at this operating point: a new
        part whose only defects are of such a class would pass, which QA must be told. Per-class
        calibration gives a class it would switch off the shared threshold instead, so this
        happens only where nothing on the split scores at all."""
        return [d for d, t in self.thresholds.items() if d != PART and not math.isfinite(t)]


def calibration_notes(result: Calibration) -> list[tuple[str, str]]:
    """What QA must be told about an operating point beyond its rates, as (level, text):
    a split too small to show the target, a split with no good parts and classes left off
    (warnings), classes given the shared threshold (info)."""
    notes: list[tuple[str, str]] = []
    too_small = too_small_warning(result)
    if too_small:
        notes.append(("warning", too_small))
    if result.n_good == 0:
        notes.append(
            (
                "warning",
                "The split has no good parts: the false calls these thresholds will make are "
                "unknown. Calibrate on a split with good parts to weigh them.",
            )
        )
    part_threshold = result.thresholds.get(PART)
    if result.classes_left_off and part_threshold is not None and math.isfinite(part_threshold):
        # (Said as a pass, it contradicted the table: the part classifier fails such parts.)
        notes.append(
            (
                "info",
                f"{', '.join(result.classes_left_off)}: off for the detector; the part "
                f"classifier alone fails a part with only these defects (above {part_threshold:.3f}).",
            )
        )
    elif result.classes_left_off:
        notes.append(("warning", left_off_warning(result.classes_left_off)))
    if result.details.get("part_classifier_off"):
        notes.append(
            (
                "info",
                "The part classifier is left off: the split has no good parts to weigh its "
                "false calls against, and the detector meets the target alone. Calibrate on a "
                "split with good parts to use it.",
            )
        )
    fallback = result.details.get("classes_on_shared_threshold") or []
    if fallback:
        notes.append(("info", shared_fallback_note(fallback)))
    return notes


def too_small_warning(result: Calibration) -> str | None:
    """A split cannot show a miss rate below what its size allows: with none of 100 defective
    parts missed, the rate may still be 3% (its 95% upper bound). Calibrating for 0.5% on it
    promises what the split cannot show, which QA must know before relying on the target."""
    bound = upper_bound(result.n_missed, result.n_defective)
    if bound is None:
        return "The split has no defective parts: it cannot show any miss rate."
    if result.miss_rate is not None and result.miss_rate > result.max_miss_rate:
        return (
            f"The target is not met even on this split: {result.n_missed} of "
            f"{result.n_defective} defective parts are missed at any threshold (the model "
            "finds none of their defects)."
        )
    if bound <= result.max_miss_rate:
        return None
    if result.max_miss_rate <= 0:
        needed = "no split can show a miss rate of 0"
    else:
        # (With none missed the bound is 1 - 0.05 ** (1 / n): the n that brings it down.)
        parts = math.ceil(math.log(0.05) / math.log(1 - result.max_miss_rate))
        needed = f"at least {parts} defective parts with none missed are needed to show it"
    return (
        f"{result.n_defective} defective parts cannot show a miss rate of at most "
        f"{result.max_miss_rate:g}: with {result.n_missed} missed, the rate on new parts may be "
        f"up to {bound:.1%} (95% upper bound); {needed}."
    )


def left_off_warning(classes: list[str]) -> str:
    return (
        f"{', '.join(classes)}: off (the split set no threshold for them), so a part whose "
        "only defects are of these classes would pass: calibrate on a split where they occur."
    )


def shared_fallback_note(classes: list[str]) -> str:
    return (
        f"{', '.join(classes)}: the shared threshold. Every defective part of the split was "
        "caught without these classes, so the split cannot set their own thresholds; without "
        "one, a part whose only defects are of these classes would pass."
    )


def shared_is_safer(n_defective: int, n_classes: int, max_miss_rate: float) -> bool:
    """Whether the split is too small for per-class thresholds to hold the target on new parts."""
    return n_classes > 1 and n_defective * max_miss_rate < n_classes


def calibrate(
    parts: list[PartScores],
    dimensions: list[str],
    max_miss_rate: float,
    class_thresholds: str = "auto",
    centre: bool = True,
) -> Calibration:
    """Thresholds per dimension (defect classes, and PART); `class_thresholds` is one of
    CLASS_THRESHOLD_MODES: per-class, one value shared by the defect classes, or auto. `centre`
    False leaves each threshold on the faintest defect it catches (for comparison only)."""
    check_miss_rate_target(max_miss_rate)
    if not parts:
        raise UserError("no parts to calibrate on")
    if class_thresholds not in CLASS_THRESHOLD_MODES:
        raise UserError(f"class thresholds must be one of {', '.join(CLASS_THRESHOLD_MODES)}")
    classes = [d for d in dimensions if d != PART]
    if PART in dimensions and classes and all(p.defective for p in parts):
        # No good part: the part classifier's false calls cannot be weighed at all, while the
        # detector's show as its false detections on the defective parts. Weighed against
        # nothing, the classifier won every time and judged alone, every class off (on a
        # synthetic split it then failed the good test parts). It is used only for what
        # the detector cannot meet alone.
        alone = calibrate(parts, classes, max_miss_rate, class_thresholds, centre)
        if alone.n_missed <= math.floor(max_miss_rate * alone.n_defective + 1e-9):
            thresholds = {**alone.thresholds, PART: NEVER}
            return replace(
                alone,
                thresholds={d: thresholds[d] for d in dimensions},
                details={**alone.details, "part_classifier_off": "no good parts"},
            )
    if class_thresholds == "auto":
        n_defective = sum(p.defective for p in parts)
        shared = shared_is_safer(n_defective, len(classes), max_miss_rate)
        class_thresholds = "shared" if shared else "per-class"
    if class_thresholds == "shared" and len(classes) > 1:
        merged = [
            PartScores(p.defective, _merge(p.scores, classes), _merge(p.background, classes))
            for p in parts
        ]
        others = [d for d in dimensions if d == PART]
        result = _calibrate(merged, [ANY_CLASS, *others], max_miss_rate, centre)
        thresholds = {d: result.thresholds[ANY_CLASS] for d in classes}
        thresholds.update({d: result.thresholds[d] for d in others})
        return replace(
            result,
            thresholds={d: thresholds[d] for d in dimensions},
            details={**result.details, "class_thresholds": "shared"},
        )
    result = _calibrate(parts, dimensions, max_miss_rate, centre)
    result = replace(result, details={**result.details, "class_thresholds": "per-class"})
    return _keep_every_class_on(parts, dimensions, max_miss_rate, centre, result)


def _keep_every_class_on(
    parts: list[PartScores],
    dimensions: list[str],
    max_miss_rate: float,
    centre: bool,
    result: Calibration,
) -> Calibration:
    """Per-class thresholds with no class switched off: a class the search left off gets the
    shared threshold instead. The search switches a class off when every defective part of the
    split was caught without it (its defects always came with others): the split then says
    nothing about that class alone, and off would pass a new part whose only defect is of it.
    The split's misses can only fall; its false calls may rise, and are counted again."""
    classes = [d for d in dimensions if d != PART]
    off = [d for d in classes if not math.isfinite(result.thresholds[d])]
    if not off or len(classes) < 2:
        return result
    shared = calibrate(parts, dimensions, max_miss_rate, "shared", centre)
    fallback = shared.thresholds[classes[0]]
    if not math.isfinite(fallback) and PART in dimensions:
        # The part classifier met the target alone, so the shared calibration left every
        # class off as well: the classes get the detector's own shared threshold instead.
        fallback = calibrate(parts, classes, max_miss_rate, "shared", centre).thresholds[classes[0]]
    if not math.isfinite(fallback):
        return result  # nothing scores on this split: reported as left off
    thresholds = {**result.thresholds, **{d: fallback for d in off}}
    counts = apply_thresholds(parts, thresholds)
    return replace(
        result,
        thresholds=thresholds,
        n_missed=counts.n_missed,
        n_false_calls=counts.n_false_calls,
        details={**result.details, "classes_on_shared_threshold": off},
    )


def _merge(scores: dict[str, float], classes: list[str]) -> dict[str, float]:
    """A part's scores with its best score of any class under ANY_CLASS instead of per class."""
    best = max((v for k, v in scores.items() if k in classes), default=None)
    kept = {k: v for k, v in scores.items() if k not in classes}
    return kept if best is None else {**kept, ANY_CLASS: best}


def _calibrate(
    parts: list[PartScores], dimensions: list[str], max_miss_rate: float, centre: bool
) -> Calibration:
    matrix = np.array([[p.scores.get(d, -NEVER) for d in dimensions] for p in parts], dtype=float)
    background = np.array(
        [
            [(p.scores if not p.defective else p.background).get(d, -NEVER) for d in dimensions]
            for p in parts
        ],
        dtype=float,
    )
    defective = np.array([p.defective for p in parts])
    tie_weight = 1.0 / (len(parts) + 1)  # false detections count less than one real false call
    n_defective = int(defective.sum())
    allowed = math.floor(max_miss_rate * n_defective + 1e-9)
    thresholds = np.full(len(dimensions), NEVER)

    def flagged(limits: np.ndarray) -> np.ndarray:
        return (matrix >= limits).any(axis=1)

    def falsely_flagged(limits: np.ndarray) -> np.ndarray:
        return (background >= limits).any(axis=1)

    current = flagged(thresholds)
    while int((defective & ~current).sum()) > allowed:
        best: tuple[float, int, int, float] | None = None  # (ratio, gain, dimension, threshold)
        missed = defective & ~current
        for d in range(len(dimensions)):
            reachable = matrix[missed, d]
            reachable = reachable[np.isfinite(reachable)]
            if len(reachable) == 0:
                continue
            candidate = thresholds.copy()
            candidate[d] = reachable.max()
            now = flagged(candidate)
            gain = int((missed & now).sum())
            new_false = falsely_flagged(candidate) & ~falsely_flagged(thresholds)
            cost = int((~defective & now & ~current).sum()) + tie_weight * int(new_false.sum())
            ratio = gain / (cost + 1e-6)
            if best is None or (ratio, gain) > (best[0], best[1]):
                best = (ratio, gain, d, float(candidate[d]))
        if best is None:
            break  # some defective parts have no score at all: they cannot be caught
        thresholds[best[2]] = best[3]
        current = flagged(thresholds)

    # Raise each threshold as far as the target allows: fewer false calls, same misses budget.
    improved = True
    while improved:
        improved = False
        for d in range(len(dimensions)):
            higher = np.unique(
                matrix[:, d][np.isfinite(matrix[:, d]) & (matrix[:, d] > thresholds[d])]
            )
            for value in [*higher.tolist(), NEVER]:
                trial = thresholds.copy()
                trial[d] = value
                now = flagged(trial)
                if int((defective & ~now).sum()) > allowed:
                    break
                before = (int((~defective & current).sum()), int(falsely_flagged(thresholds).sum()))
                after = (int((~defective & now).sum()), int(falsely_flagged(trial).sum()))
                if after <= before:
                    thresholds, current, improved = trial, now, improved or value != thresholds[d]
    if centre:
        thresholds = _centre_in_gaps(matrix, defective, thresholds)
        current = flagged(thresholds)
    misses = int((defective & ~current).sum())
    return Calibration(
        thresholds={d: float(t) for d, t in zip(dimensions, thresholds, strict=True)},
        n_defective=n_defective,
        n_missed=misses,
        n_good=int((~defective).sum()),
        n_false_calls=int((~defective & current).sum()),
        max_miss_rate=max_miss_rate,
        details={
            "uncatchable_defective_parts": int((defective & ~np.isfinite(matrix).any(axis=1)).sum())
        },
    )


def _centre_in_gaps(
    matrix: np.ndarray, defective: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Each threshold lowered to the middle of the gap between it and the best-scoring good part
    below it that no other dimension flags: the split's false calls stay the same, and a new
    part a little fainter than the faintest defect of the split is still caught. A threshold
    left on the faintest caught defect's own score would miss it: the engine, like
    ultralytics' predict, keeps a detection only above its threshold, and a score read back
    from float32 can land a hair under it. With no good part below, the threshold still goes
    down by UNDER_FAINTEST (it stood on the defect's score and `evaluate` missed that part)."""
    centred = thresholds.copy()
    for d in range(len(thresholds)):
        if not np.isfinite(thresholds[d]):
            continue
        others = thresholds.copy()
        others[d] = NEVER
        free = ~defective & ~(matrix >= others).any(axis=1)
        column = matrix[free, d]
        below = column[np.isfinite(column) & (column < thresholds[d])]
        if len(below):
            centred[d] = (thresholds[d] + below.max()) / 2
        else:
            centred[d] = thresholds[d] - max(UNDER_FAINTEST * thresholds[d], 1e-4)
    return centred


UNDER_FAINTEST = 0.01  # of the threshold: under the faintest defect when no good part is below


# --- verification: the classifier confirms each detection's crop ---------------------------------

CLASS_OFF = 1.01  # a threshold above any confidence: that class alone never fails a part
VERIFY_FLOOR = 0.05  # detections below this confidence get no crop scored (never verified)


@dataclass(frozen=True)
class ScoredDetection:
    class_name: str
    confidence: float
    verification: float | None  # the classifier's defect probability for its crop
    matches_defect: bool  # overlaps a labeled defect of its class (IoU >= 0.5)


@dataclass(frozen=True)
class ScoredPart:
    """A part with every detection kept, so that any verification threshold can be tried on it
    without running the models again."""

    defective: bool
    detections: tuple[ScoredDetection, ...]
    part_probability: float | None = None

    def scores(self, verify: float | None = None) -> PartScores:
        """Best score per class of the detections that verification at `verify` would keep."""
        scores: dict[str, float] = {}
        background: dict[str, float] = {}
        for d in self.detections:
            if verify is not None and (d.verification is None or d.verification < verify):
                continue
            scores[d.class_name] = max(scores.get(d.class_name, 0.0), d.confidence)
            if not d.matches_defect:
                background[d.class_name] = max(background.get(d.class_name, 0.0), d.confidence)
        if self.part_probability is not None:
            scores[PART] = self.part_probability
        return PartScores(self.defective, scores, background)


def verify_candidates(parts: list[ScoredPart], count: int = 24) -> list[float]:
    """Verification thresholds worth trying: quantiles of the crops' scores on the split."""
    values = np.array(
        [d.verification for p in parts for d in p.detections if d.verification is not None]
    )
    if len(values) == 0:
        return []
    return sorted({float(v) for v in np.quantile(values, np.linspace(0.0, 0.95, count))})


def calibrate_with_verification(
    parts: list[ScoredPart],
    dimensions: list[str],
    max_miss_rate: float,
    class_thresholds: str = "auto",
    centre: bool = True,
) -> tuple[float | None, Calibration]:
    """The verification threshold, and the thresholds under it, that hold the target with the
    fewest false calls (no verification is one of the choices).

    A detection threshold and a crop threshold trade against each other: a lower detection
    threshold catches faint defects, and verification rejects the false detections it lets in.
    On a tie the lower crop threshold wins: it rejects fewer real defects on new parts; where
    the split has few good parts, fewer parts with a false detection break the tie first."""
    unverified: Calibration | None = None
    best: tuple[tuple[int, bool, int], float | None, Calibration] | None = None
    for verify in [None, *verify_candidates(parts)]:
        scores = [p.scores(verify) for p in parts]
        result = calibrate(scores, dimensions, max_miss_rate, class_thresholds, centre)
        unverified = unverified or result
        if result.n_missed > math.floor(max_miss_rate * result.n_defective + 1e-9):
            continue
        falsely_flagged = sum(
            any(s.background.get(d, -NEVER) >= t for d, t in result.thresholds.items())
            for s in scores
        )
        # Without good parts the part classifier's false calls weigh nothing, so it won every
        # tie-break once a crop threshold made the detector miss: it is used only where no
        # crop threshold lets the detector meet the target alone, as `calibrate` does.
        unweighed_classifier = result.n_good == 0 and math.isfinite(
            result.thresholds.get(PART, NEVER)
        )
        key = (result.n_false_calls, unweighed_classifier, falsely_flagged)
        if best is None or key < best[0]:
            best = (key, verify, result)
    if best is None:  # the target cannot be met at any crop threshold: report it unverified
        assert unverified is not None
        return None, unverified
    _, verify, result = best
    if centre and verify is not None:
        verify = _centre_verification(parts, verify, result.thresholds)
        # The split's false calls are the same by construction; a defect crop in the gap is
        # now kept, so its misses can only fall.
        counts = apply_thresholds([p.scores(verify) for p in parts], result.thresholds)
        result = replace(result, n_missed=counts.n_missed, n_false_calls=counts.n_false_calls)
    return verify, replace(result, details={**result.details, "verify": verify})


def _centre_verification(
    parts: list[ScoredPart], verify: float, thresholds: dict[str, float]
) -> float:
    """The crop threshold lowered to the middle of the gap between it and the most defect-like
    crop below it that would fail a good part (a counted detection on a good part not failed
    already): as for the detection thresholds, a real defect whose crop scores a little under
    the split's crops is still confirmed, and the split's false calls stay the same."""
    harmful: list[float] = []
    for part in parts:
        if part.defective:
            continue
        scores = part.scores(verify)
        if any(scores.scores.get(d, -NEVER) >= t for d, t in thresholds.items()):
            continue  # failed already: its other crops change nothing
        harmful.extend(
            d.verification
            for d in part.detections
            if d.verification is not None
            and d.verification < verify
            and d.confidence >= thresholds.get(d.class_name, NEVER)
        )
    return (verify + max(harmful)) / 2 if harmful else verify


def parse_verify_threshold(value: float | str | None) -> float | str | None:
    """A crop threshold as given on the command line or in code: None, "auto" or a probability."""
    if value is None or value == "auto":
        return value
    try:
        probability = float(value)
    except ValueError:
        raise UserError(f"the verify threshold is a probability or auto, not {value!r}") from None
    if not 0.0 <= probability <= 1.0:
        raise UserError(f"the verify threshold is a probability (0 to 1), not {probability}")
    return probability


# --- scoring a split with the real models -------------------------------------------------------

SCORE_FLOOR = 0.001  # detections below this confidence are not kept for calibration


def score_parts(
    root: Path,
    split: str,
    detector_weights: Path,
    class_names: list[str],
    classifier_weights: Path | None = None,
    iou: float = 0.45,
    device: str | None = None,
    verify_floor: float = VERIFY_FLOOR,
) -> list[ScoredPart]:
    """Each part of a split with every detection, its crop's defect probability (detections of
    at least `verify_floor`, with a classifier) and the part classifier's probability. On a
    tiled dataset a part is its source image, with the detections of all its tiles: the rates
    and their bounds then count parts, as stations fail them (any tile that fires)."""
    from inspection.classifier import crop_with_context
    from inspection.engine import Inspector, PartInput
    from inspection.images import decode_image
    from training.datasets import group_by_part, split_image_paths, tile_origins
    from training.evaluate import _iou, _labels

    origins = tile_origins(root)
    if origins is not None and classifier_weights is not None:
        # (A part classifier judges a whole image; what it says of a part's tiles, and crops
        # cut at a tile's edge, are not what it was calibrated for.)
        raise UserError(
            "a tiled dataset is calibrated with the detector alone: leave out --classifier "
            "(a part classifier judges whole images)"
        )

    thresholds: dict[str, Any] = {"default": SCORE_FLOOR, "iou": iou}
    if classifier_weights is not None:
        # Crops are scored here rather than by the engine's verification, so that only the
        # detections above the floor cost a classifier pass; the part probability is the engine's.
        thresholds["classifier"] = {"version": "calibrating", "part": None, "verify": None}
    # A tiled dataset's images are tiles already: each judged whole, as a station run with
    # --tile of the dataset's grid judges it (and as evaluate does). In the model's grid, a
    # model of smaller tiles cut every tile again, a verdict no station gives.
    inspector = Inspector.from_weights(
        detector_weights,
        thresholds,
        device=device,
        classifier_weights=classifier_weights,
        tile="off" if origins is not None else "model",
    )
    images = split_image_paths(root, split)
    parts: list[ScoredPart] = []
    try:
        for path, result in zip(
            images,
            inspector.inspect(PartInput(p.name, p.read_bytes()) for p in images),
            strict=True,
        ):
            truth, truth_classes = _labels(root, split, path, result.width or 1, result.height or 1)
            kept = [d for d in result.detections if d.counted and d.class_name in class_names]
            verifications: list[float | None] = [None] * len(kept)
            if inspector.classifier is not None:
                to_verify = [i for i, d in enumerate(kept) if d.confidence >= verify_floor]
                if to_verify:
                    pixels = decode_image(path.read_bytes()).pixels
                    crops = [
                        crop_with_context(pixels, (kept[i].x1, kept[i].y1, kept[i].x2, kept[i].y2))
                        for i in to_verify
                    ]
                    probabilities = inspector.classifier.defect_probabilities(crops).tolist()
                    for i, probability in zip(to_verify, probabilities, strict=True):
                        verifications[i] = float(probability)
            detections = []
            for d, verification in zip(kept, verifications, strict=True):
                same_class = truth[truth_classes == class_names.index(d.class_name)]
                matches = bool(
                    len(same_class)
                    and _iou(np.array([d.x1, d.y1, d.x2, d.y2]), same_class).max() >= 0.5
                )
                detections.append(
                    ScoredDetection(d.class_name, d.confidence, verification, matches)
                )
            parts.append(ScoredPart(len(truth) > 0, tuple(detections), result.defect_probability))
    finally:
        inspector.close()
    if origins is not None:
        return [
            ScoredPart(defective, tuple(d for i in indices for d in parts[i].detections))
            for _, defective, indices in group_by_part(images, origins)
        ]
    return parts


@dataclass
class StoredCalibration:
    calibration: Calibration
    dimensions: list[str]
    operating_point: dict[str, Any]
    # Its classifier was archived: storing the point brings it back (`store_operating_point`).
    classifier_archived: bool = False
    # The detector's name: MODEL may be given by its id, and "stored as the operating point of
    # 3" named no version.
    detector_name: str = ""


def calibrate_model(
    url: str,
    model: str,
    data: str,
    split: str,
    max_miss_rate: float,
    classifier: str | None = None,
    verify_threshold: float | str | None = None,
    device: str | None = None,
    class_thresholds: str = "auto",
    store: bool = True,
) -> StoredCalibration:
    """Score the split, calibrate, and store the result as the detector's operating point
    (with `store` False, only return it: the dashboard shows it before QA accepts it).

    `verify_threshold` "auto" (with a classifier) also picks the crop threshold of verification
    that meets the target with the fewest false calls, verification off included."""
    from db.models import ModelKind, ModelStage
    from db.registry import get_model_version
    from db.session import session_scope
    from training.datasets import dataset_yaml
    from training.evaluate import classes_hint
    from training.versions import weights_file

    check_miss_rate_target(max_miss_rate)
    with session_scope(url) as session:
        detector = get_model_version(session, model)
        if detector.kind != ModelKind.DETECTOR:
            raise UserError(f"{detector.name} is not a detector")
        detector_name = detector.name
        dataset, data_yaml = dataset_yaml(session, data)
        if list(dataset.classes) != list(detector.classes):
            known, labelled = list(detector.classes), list(dataset.classes)
            added = labelled[len(known) :] if labelled[: len(known)] == known else []
            raise UserError(
                f"{detector.name} knows {known}, {data!r} labels {labelled}"
                + (
                    # (An export of reviews with a new defect type: the model to calibrate on
                    # it is the one fine-tuned on it.)
                    f": {data!r} adds {added}; calibrate the version trained on it "
                    f"(`defects train detector --from {detector.name} --data {data}`)"
                    if added
                    else f": {classes_hint(known)}"
                )
            )
        root, class_names = data_yaml.parent, list(dataset.classes)
        detector_weights, iou = (
            weights_file(detector),
            float(detector.thresholds.get("iou", 0.45)),
        )
        classifier_version = get_model_version(session, classifier) if classifier else None
        if classifier_version is not None:  # (stored with the operating point: every station
            # would judge with it)
            if classifier_version.kind != ModelKind.CLASSIFIER:
                raise UserError(f"{classifier_version.name} is not a classifier")
            from inspection.classifier import GOOD

            if list(classifier_version.classes) != [GOOD, *class_names]:
                raise UserError(
                    f"{classifier_version.name} knows other classes than {data!r}: "
                    f"{list(classifier_version.classes)[1:]} against {class_names}"
                )
        classifier_weights = weights_file(classifier_version) if classifier_version else None
        classifier_name = classifier_version.name if classifier_version else None
        classifier_archived = (
            classifier_version is not None and classifier_version.stage == ModelStage.ARCHIVED
        )
    verify_threshold = parse_verify_threshold(verify_threshold)
    if verify_threshold is not None and classifier_weights is None:
        raise UserError("verification needs a classifier (--classifier)")
    if verify_threshold is None:
        floor = math.inf  # no crop is needed
    elif verify_threshold == "auto":
        floor = VERIFY_FLOOR
    else:
        floor = SCORE_FLOOR  # a given crop threshold applies to every counted detection
    scored = score_parts(
        root, split, detector_weights, class_names, classifier_weights, iou, device, floor
    )
    dimensions = class_names + ([PART] if classifier_weights else [])
    if verify_threshold == "auto":
        verify, result = calibrate_with_verification(
            scored, dimensions, max_miss_rate, class_thresholds
        )
    else:
        verify = None if verify_threshold is None else float(verify_threshold)
        result = calibrate(
            [p.scores(verify) for p in scored],
            dimensions,
            max_miss_rate,
            class_thresholds,
        )
    operating_point = build_operating_point(
        result, class_names, iou, data, split, classifier_name, verify
    )
    from inspection.engine import checkpoint_tile
    from training.datasets import dataset_tile, grid_mismatch

    mismatch = grid_mismatch(checkpoint_tile(detector_weights), dataset_tile(root), data)
    if mismatch is not None:  # (kept with the operating point, said where it is shown)
        operating_point["calibration"]["grid_warning"] = mismatch
    if result.n_defective == 0 or not any(math.isfinite(t) for t in result.thresholds.values()):
        # Stored, every class would be off and no defect would ever fail a part, at once on a
        # production model's stations.
        raise UserError(
            f"{data}/{split} has no defective part the detector finds ({result.n_defective} "
            "defective parts): every class would be off and nothing would ever fail. Calibrate "
            "on a split with defective parts; nothing was stored"
        )
    if store:
        # (Scoring takes minutes: a classifier archived meanwhile is not brought back unsaid.)
        store_operating_point(url, model, operating_point, classifier_archived=classifier_archived)
    return StoredCalibration(
        result, dimensions, operating_point, classifier_archived, detector_name
    )


def build_operating_point(
    result: Calibration,
    class_names: list[str],
    iou: float,
    data: str,
    split: str,
    classifier_name: str | None = None,
    verify: float | None = None,
) -> dict[str, Any]:
    """The operating point a calibration stores: a class left off as CLASS_OFF, the part
    classifier's threshold None where it is off."""
    operating_point: dict[str, Any] = {
        "per_class": {
            c: (result.thresholds[c] if math.isfinite(result.thresholds[c]) else CLASS_OFF)
            for c in class_names
        },
        "default": CLASS_OFF,
        "iou": iou,
        "calibration": {"data": data, "split": split, **result.report()},
    }
    if classifier_name is not None:
        part = result.thresholds[PART]
        operating_point["classifier"] = {
            "version": classifier_name,
            "part": part if math.isfinite(part) else None,
            "verify": verify,
        }
    return operating_point


def choice_lines(operating_point: dict[str, Any], verify_auto: bool = False) -> list[str]:
    """What a calibration chose, said from the operating point it stored. Said from the
    request instead, `calibrate` printed "one threshold shared by every class" over a table of
    classes all off (the part classifier alone judged) and "verification off: it did not cut
    false calls" where the target was not met at any crop threshold, or no class was on."""
    report = operating_point.get("calibration") or {}
    per_class = operating_point.get("per_class") or {}
    on = {c: float(t) for c, t in per_class.items() if float(t) < CLASS_OFF}
    lines: list[str] = []
    if report.get("class_thresholds") == "shared" and len(per_class) > 1 and on:
        lines.append(f"one threshold shared by every class ({next(iter(on.values())):.4f})")
    classifier = operating_point.get("classifier")
    if not classifier:
        return lines
    part, verify = classifier.get("part"), classifier.get("verify")
    if verify is not None and on:
        lines.append(
            f"a detection counts only when its crop's defect probability is >= {verify:.4f}"
        )
    elif verify is not None:
        lines.append(
            f"crop verification at {verify:.4f} has no detection to confirm: every class is off "
            "for the detector"
        )
    elif verify_auto:
        n_defective, n_missed = report.get("n_defective") or 0, report.get("n_missed") or 0
        allowed = math.floor(float(report.get("max_miss_rate") or 0.0) * n_defective + 1e-9)
        if n_missed > allowed:
            reason = "the target is not met at any crop threshold (thresholds without it)"
        elif not on:
            reason = "every class is off for the detector, so no detection is left to verify"
        elif not report.get("n_good"):
            # ("no crop threshold cut a false call" spoke of false calls the split could not
            # show: with no good part, there were none to cut.)
            reason = (
                "the split has no good parts, so no crop threshold can be chosen from it; "
                "stored without crop verification (calibrate on a split with good parts to "
                "choose one)"
            )
        else:
            reason = "no crop threshold cut a false call at this target"
        lines.append(f"verification off: {reason}")
    if part is None and verify is None:
        lines.append(
            f"classifier {classifier.get('version')} fails no part: its part threshold and "
            "crop verification are both off"
        )
    return lines


def thresholds_stamp(thresholds: dict[str, Any]) -> str:
    """A short name of an operating point, to tell whether it changed since it was read."""
    return hashlib.sha256(json.dumps(thresholds, sort_keys=True).encode()).hexdigest()[:12]


def store_operating_point(
    url: str,
    model: str | int,
    operating_point: dict[str, Any],
    unless_changed_from: str = "",
    classifier_archived: bool | None = None,
) -> bool:
    """The thresholds every later verdict of `model` uses (and records). With
    `unless_changed_from` (the `thresholds_stamp` of what the caller read), stored only if the
    stored ones are still those, checked in the writing transaction with the row locked where
    the database can: a calibration or another user between the read and this write is not
    undone. False where they changed (nothing stored).

    `classifier_archived`: whether the classifier the point names was archived when the point
    was computed (`StoredCalibration.classifier_archived`). One a candidate then and archived
    since is refused, in this transaction (UserError, nothing stored): stored, it was brought
    back unsaid, the retirement undone while the user was told nothing of it."""
    from sqlalchemy import select

    from db.models import ModelStage, ModelVersion
    from db.registry import get_model_version
    from db.session import session_scope

    with session_scope(url) as session:
        version_id = get_model_version(session, model).id
        version = session.scalars(
            select(ModelVersion).where(ModelVersion.id == version_id).with_for_update()
        ).one()
        if unless_changed_from and thresholds_stamp(version.thresholds) != unless_changed_from:
            return False
        # A classifier the operating point names is in use: an archived one comes back among
        # the candidates, as `models archive` refuses to archive one in use. (Left archived, it
        # judged every part of the detector's stations, and no command could bring it back.)
        named = (operating_point.get("classifier") or {}).get("version")
        classifier = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.name == named, ModelVersion.stage == ModelStage.ARCHIVED)
            .with_for_update()
        ).first()
        if classifier is not None and classifier_archived is False:
            raise UserError(
                f"{named} was archived since this calibration was computed: nothing was "
                f"stored; calibrate again, with another classifier or none (or with {named}, "
                "to bring it back among the candidates)"
            )
        version.thresholds = operating_point
        if classifier is not None:
            classifier.stage, classifier.archived_at = ModelStage.CANDIDATE, None
        return True


def apply_thresholds(
    parts: list[PartScores], thresholds: dict[str, float]
) -> tuple[int, int, int, int]:
    """(n_defective, n_missed, n_good, n_false_calls) of these thresholds on scored parts."""
    n_defective = n_missed = n_good = n_false = 0
    for part in parts:
        flagged = any(part.scores.get(d, -NEVER) >= t for d, t in thresholds.items())
        if part.defective:
            n_defective += 1
            n_missed += not flagged
        else:
            n_good += 1
            n_false += flagged
    return PartCounts(n_defective, n_missed, n_good, n_false)
