"""Make torch, torchvision and ultralytics usable on every machine we ship to, before they load.

Two facts of the field drive this module:
- PyPI's torchvision wheel is built against CUDA torch; beside a CPU-only torch its compiled ops
  do not load and `import torchvision` dies with "operator torchvision::nms does not exist".
  Only NMS is needed by the product, so a pure-torch `torchvision::nms` (and its quantized twin,
  which torchvision's import also references) is registered then, and only then.
- ultralytics reaches for the network (settings sync, fonts, weights, pip). Factory stations are
  offline, so it gets a config dir of our own, every integration off and a local font.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import torch

# Largest block of boxes the NMS fallback resolves at once (bounds its IoU matrix).
_NMS_BLOCK = 512
_NMS_FIRST_BLOCK = 128
_fallback_library: torch.library.Library | None = None


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics (stable sort by falling score).

    Written by hand because it is the fallback for torchvision's own kernel. Boxes are taken in
    blocks of growing size: a block first loses the boxes that already-kept boxes suppress, and
    the survivors are resolved as the fixed point of
    `keep[j] = not any(keep[i] and iou[i, j] > t for i < j)`, one matrix pass per link of the
    longest suppression chain instead of one Python step per box. Detector output is clustered,
    so after the first small block most candidates fall to the first step.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    if sorted_boxes.dtype != torch.float64:  # (float64 is kept: batched NMS shifts boxes far)
        sorted_boxes = sorted_boxes.float()
    kept_boxes = sorted_boxes.new_zeros((0, 4))
    kept_indices: list[torch.Tensor] = []
    start, size = 0, _NMS_FIRST_BLOCK
    while start < sorted_boxes.shape[0]:
        block = sorted_boxes[start : start + size]
        block_order = order[start : start + size]
        start, size = start + size, min(size * 2, _NMS_BLOCK)
        if kept_boxes.shape[0]:
            survivors = ~(_box_iou(kept_boxes, block) > iou_threshold).any(dim=0)
            block, block_order = block[survivors], block_order[survivors]
        if block.shape[0] == 0:
            continue
        index = torch.arange(block.shape[0], device=block.device)
        # Only earlier (higher-scoring) boxes suppress later ones. An index mask, because
        # torch.triu on booleans takes a slow path (milliseconds for a 128 x 128 block).
        overlaps = (_box_iou(block, block) > iou_threshold) & (index[:, None] < index[None, :])
        keep = torch.ones(block.shape[0], dtype=torch.bool, device=block.device)
        while True:
            new_keep = ~(overlaps & keep[:, None]).any(dim=0)
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
        kept_boxes = torch.cat([kept_boxes, block[keep]])
        kept_indices.append(block_order[keep])
    return torch.cat(kept_indices)


def _torchvision_ops_load() -> bool:
    """Try to load torchvision's compiled ops without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # torchvision absent: nothing to repair
    package_dir = Path(spec.origin).parent
    for library in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(library))
            break
        except (OSError, ImportError, RuntimeError):
            return False
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the probe
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision_ops() -> bool:
    """Register the pure-torch NMS when torchvision's compiled ops cannot load.

    Returns True when the fallback is in use. Must run before torchvision is imported.
    """
    global _fallback_library
    if _fallback_library is not None:
        return True
    if _torchvision_ops_load():
        return False
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", nms_reference, "CompositeExplicitAutograd")
    library.impl(
        "qnms",
        lambda dets, scores, iou: nms_reference(dets.dequantize(), scores.dequantize(), iou),
        "CompositeExplicitAutograd",
    )
    _fallback_library = library
    # torchvision.ops.nms asserts that the compiled ops loaded before it dispatches; the op now
    # exists, so let that one assertion pass (roi_align and the others stay unavailable).
    import torchvision.ops.boxes as tv_boxes

    tv_boxes._assert_has_ops = lambda: None
    return True


# Every integration ultralytics could phone home through, all off.
_OFFLINE_SETTINGS = {
    "sync": False,
    "api_key": "",
    "openai_api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def configure_ultralytics(config_dir: Path, runs_dir: Path) -> None:
    """Point ultralytics at our config dir, offline, with no auto-install, before it is imported."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir.resolve())
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    settings_file = config_dir / "Ultralytics" / "settings.json"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, object] = {}
    if settings_file.exists():
        try:
            current = json.loads(settings_file.read_text())
        except (OSError, json.JSONDecodeError):
            current = {}
    wanted = {
        "settings_version": current.get("settings_version", "0.0.8"),
        "datasets_dir": str(runs_dir.resolve().parent / "datasets"),
        "weights_dir": str(runs_dir.resolve() / "weights"),
        "runs_dir": str(runs_dir.resolve()),
        "uuid": current.get("uuid", "0" * 64),
        **_OFFLINE_SETTINGS,
    }
    if current != {**current, **wanted}:
        settings_file.write_text(json.dumps({**current, **wanted}, indent=2))
    # ultralytics' plotting asks for Arial and downloads it when missing: hand it the DejaVu Sans
    # that matplotlib ships, under the names it asks for.
    matplotlib_spec = importlib.util.find_spec("matplotlib")
    if matplotlib_spec and matplotlib_spec.origin:
        dejavu = (
            Path(matplotlib_spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        )
        for sub in ("", "Ultralytics"):
            for name in _FONT_NAMES:
                target = config_dir / sub / name
                if dejavu.exists() and not target.exists():
                    shutil.copyfile(dejavu, target)


def enforce_offline_settings() -> None:
    """After import, ultralytics may have migrated its settings schema: switch integrations off again."""
    from ultralytics.utils import SETTINGS

    changes = {k: v for k, v in _OFFLINE_SETTINGS.items() if k in SETTINGS and SETTINGS[k] != v}
    if changes:
        SETTINGS.update(changes)


def prepare_runtime(config_dir: Path, runs_dir: Path) -> None:
    ensure_torchvision_ops()
    configure_ultralytics(config_dir, runs_dir)


def end_process(code: int | str | None = 0) -> NoReturn:
    """End this process now, without the interpreter's teardown: torch's and the other
    libraries' keep nothing and take a second or more (a `defects` command 2.645 s against
    3.683 s, bench/results/cli_exit_cpu.json; two workers' exit 0.0 s against 1.2 to 1.5 s,
    worker_exit_cpu.txt). Only for a process whose work is written and committed, and whose
    threads that write and processes it started are joined: what is left (a background WAL
    checkpoint, which SQLite finishes itself later; daemon threads) may stop anywhere."""
    import logging

    logging.shutdown()  # (handlers flushed, as at a normal exit)
    if isinstance(code, str):  # sys.exit("message"), as a library may end
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
