"""A part's verdict: fail when any detection reaches its class's threshold (and, where
verification is on, the classifier confirms its crop), or when the part classifier's defect
probability reaches its threshold."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Thresholds:
    """Per-class confidence thresholds (the operating point) and the NMS IoU."""

    per_class: dict[str, float]
    default: float = DEFAULT_THRESHOLD
    iou: float = 0.45
    part: float | None = None  # part classifier's defect probability that fails a part
    verify: float | None = None  # a detection's crop must reach this defect probability
    classifier: str | None = None  # the classifier model version these apply to

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, class_names: list[str]) -> Thresholds:
        data = data or {}
        default = float(data.get("default", DEFAULT_THRESHOLD))
        given = {str(k): float(v) for k, v in (data.get("per_class") or {}).items()}
        per_class = {name: given.get(name, default) for name in class_names}
        classifier = data.get("classifier") or {}
        return cls(
            per_class=per_class,
            default=default,
            iou=float(data.get("iou", 0.45)),
            part=_optional_float(classifier.get("part")),
            verify=_optional_float(classifier.get("verify")),
            classifier=classifier.get("version"),
        )

    def for_class(self, name: str) -> float:
        return self.per_class.get(name, self.default)

    @property
    def lowest(self) -> float:
        """The confidence below which no detection can count (at most 1: a class may be off)."""
        return min([1.0, self.default, *self.per_class.values()])

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "per_class": dict(self.per_class),
            "default": self.default,
            "iou": self.iou,
        }
        if self.classifier is not None:
            data["classifier"] = {
                "version": self.classifier,
                "part": self.part,
                "verify": self.verify,
            }
        return data


@dataclass(frozen=True)
class Detection:
    class_name: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    counted: bool  # reached its class's threshold (and passed verification): it fails the part
    verification: float | None = None  # the classifier's defect probability for its crop


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def verify(detection: Detection, defect_probability: float, thresholds: Thresholds) -> Detection:
    """Record the crop's score; a detection the classifier does not confirm stops counting."""
    confirmed = thresholds.verify is None or defect_probability >= thresholds.verify
    return replace(
        detection, verification=defect_probability, counted=detection.counted and confirmed
    )


def part_fails(
    detections: list[Detection],
    defect_probability: float | None = None,
    thresholds: Thresholds | None = None,
) -> bool:
    if any(d.counted for d in detections):
        return True
    part = thresholds.part if thresholds is not None else None
    return part is not None and defect_probability is not None and defect_probability >= part


def part_classifier_note(
    defect_probability: float | None, operating_point: dict[str, Any] | None
) -> str | None:
    """ "part classifier 0.87" where the part classifier's defect probability reached the part
    threshold of the operating point a verdict was given at: a part it failed with no counted
    defect was listed as a failure with no reason."""
    part = Thresholds.from_dict(operating_point, []).part
    if part is None or defect_probability is None or defect_probability < part:
        return None
    return f"part classifier {defect_probability:.2f}"


def left_out_note(boxes_left_out: int | None) -> str | None:
    """ "N more boxes not kept" for a part that kept only its most confident counted
    boxes: the boxes listed looked like all the model found."""
    if not boxes_left_out:
        return None
    return f"{boxes_left_out} more boxes not kept"
