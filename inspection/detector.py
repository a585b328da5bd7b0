"""The defect detector family: building from our YAML, loading checkpoints.

Architecture names are `defect-yolo-{n,s,m}` (with attention), `defect-yolo-{n,s,m}-plain`
(the twin without) and `defect-yolo-{n,s,m}-gated` (attention whose gates start as the identity). ultralytics reads a model's scale from the YAML file name only for its own
naming scheme, so each requested scale is resolved into a small YAML with explicit depth and width
multiples; the checkpoint keeps that dict, so it reloads with no extra step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from inspection.attention import register_ultralytics_modules
from inspection.errors import UserError, checkpoint_reason
from inspection.settings import get_settings

if TYPE_CHECKING:
    from ultralytics import YOLO

CFG_DIR = Path(__file__).parent / "cfg"
# Family -> (YAML, attention layer swapped in for ChannelSpatialAttention, if any): the gated
# family is the attention YAML with other gates, so the two cannot drift apart.
FAMILIES: dict[str, tuple[Path, str | None]] = {
    "defect-yolo": (CFG_DIR / "defect-yolo.yaml", None),
    "defect-yolo-plain": (CFG_DIR / "defect-yolo-plain.yaml", None),
    "defect-yolo-gated": (CFG_DIR / "defect-yolo.yaml", "GatedChannelSpatialAttention"),
}
_SUFFIXES = ("", "-plain", "-gated")
_NAME = re.compile(r"^(defect-yolo)-([nsm])(-plain|-gated)?$")

register_ultralytics_modules()


def architectures() -> list[str]:
    return [f"defect-yolo-{scale}{suffix}" for suffix in _SUFFIXES for scale in "nsm"]


def check_architecture(name: str) -> re.Match[str]:
    """`name` parsed as an architecture of the family, or refused in one line naming them."""
    match = _NAME.match(name)
    if match is None:
        raise UserError(
            f"unknown detector architecture {name!r}; choose one of {', '.join(architectures())}"
        )
    return match


def resolve_architecture(name: str, class_names: list[str], out_dir: Path | None = None) -> Path:
    """Write the single-scale YAML of `name` for these classes and return its path."""
    match = check_architecture(name)
    family = match.group(1) + (match.group(3) or "")
    scale = match.group(2)
    source, attention = FAMILIES[family]
    spec = yaml.safe_load(source.read_text())
    if attention is not None:
        for layer in [*spec["backbone"], *spec["head"]]:
            if layer[2] == "ChannelSpatialAttention":
                layer[2] = attention
    depth, width, max_channels = spec.pop("scales")[scale]
    spec.update(
        nc=len(class_names),
        depth_multiple=depth,
        width_multiple=width,
        max_channels=max_channels,
        architecture=name,
    )
    out_dir = out_dir or get_settings().runs_dir / "architectures"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{len(class_names)}c.yaml"
    text = yaml.safe_dump(spec, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def build_detector(name: str, class_names: list[str]) -> YOLO:
    """A new, untrained detector of architecture `name`."""
    from ultralytics import YOLO

    model = YOLO(str(resolve_architecture(name, class_names)), task="detect")
    model.model.names = dict(enumerate(class_names))
    return model


def load_detector(weights: Path) -> YOLO:
    """A trained detector from its checkpoint, with a clear error for a missing or broken file."""
    from ultralytics import YOLO

    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"model file not found: {weights}")
    if weights.suffix != ".pt":
        raise UserError(f"a detector checkpoint is a .pt file, not {weights.name}")
    try:
        return YOLO(str(weights), task="detect")
    except Exception as exc:  # noqa: BLE001 - torch and ultralytics raise many types for a bad file
        # (A file of text, say, raised ValueError, which went out as "invalid literal for
        # int() with base 10", naming no file.)
        raise UserError(f"cannot load the model {weights}: {checkpoint_reason(exc)}") from exc


def architecture_of(model: YOLO) -> str:
    return str(model.model.yaml.get("architecture", "unknown"))
