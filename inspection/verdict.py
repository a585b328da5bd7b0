"""A part's verdict from its detections: fail when any detection reaches its class's threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Thresholds:
    """Per-class confidence thresholds (the operating point) and the NMS IoU."""

    per_class: dict[str, float]
    default: float = DEFAULT_THRESHOLD
    iou: float = 0.45

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, class_names: list[str]) -> Thresholds:
        data = data or {}
        default = float(data.get("default", DEFAULT_THRESHOLD))
        given = {str(k): float(v) for k, v in (data.get("per_class") or {}).items()}
        per_class = {name: given.get(name, default) for name in class_names}
        return cls(per_class=per_class, default=default, iou=float(data.get("iou", 0.45)))

    def for_class(self, name: str) -> float:
        return self.per_class.get(name, self.default)

    @property
    def lowest(self) -> float:
        return min([self.default, *self.per_class.values()])

    def to_dict(self) -> dict[str, Any]:
        return {"per_class": dict(self.per_class), "default": self.default, "iou": self.iou}


@dataclass(frozen=True)
class Detection:
    class_name: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    counted: bool  # reached its class's threshold, so it fails the part


def part_fails(detections: list[Detection]) -> bool:
    return any(d.counted for d in detections)
