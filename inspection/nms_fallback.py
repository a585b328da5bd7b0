"""The pure-torch `torchvision::nms` that stands in for torchvision's compiled ops where they
do not load (PyPI's torchvision is built against CUDA torch; beside a CPU-only torch its ops
fail, and `import torchvision` dies with "operator torchvision::nms does not exist").

Imported by `inspection.runtime` when torchvision is first imported, not before: it needs
torch, which a command that never touches a model does without.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

# Largest block of boxes the NMS fallback resolves at once (bounds its IoU matrix).
_NMS_BLOCK = 512
_NMS_FIRST_BLOCK = 128
# Boxes a chunk of runs that cannot overlap one another holds (a run longer stays whole).
_NMS_CHUNK = 512
# Boxes below which one call resolves them all faster than the sweep and its chunks would.
_NMS_SPLIT_FROM = 1536
# Matrix passes a block gets before its suppression chains are followed one box at a time.
_NMS_PASSES = 16
_fallback_library: torch.library.Library | None = None


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics (stable sort by falling score, a box suppressed
    by a kept one with IoU above the threshold).

    Written by hand because it is the fallback for torchvision's own kernel. Boxes that cannot
    overlap cannot suppress one another, so the boxes are first cut into runs along x (a sweep
    on x1 against the running maximum of x2: no box of a run reaches a later run) and the runs,
    packed into chunks of about `_NMS_CHUNK` boxes, are resolved chunk by chunk. A batch's
    image-and-class groups, shifted apart, are such runs: without the cut, every box of a
    crowded batch (every anchor over a low floor) was compared with every kept box before it.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    if sorted_boxes.dtype != torch.float64:  # (float64 is kept: batched NMS shifts boxes far)
        sorted_boxes = sorted_boxes.float()
    chunks = _chunks(sorted_boxes, iou_threshold)
    if chunks is None:
        return order[_resolve(sorted_boxes, iou_threshold)]
    kept = [chunk[_resolve(sorted_boxes[chunk], iou_threshold)] for chunk in chunks]
    return order[torch.sort(torch.cat(kept)).values]  # (back to falling score, ties as sorted)


def _chunks(sorted_boxes: torch.Tensor, iou_threshold: float) -> list[torch.Tensor] | None:
    """Positions (ascending, so in score order) of chunks of boxes that overlap no box of
    another chunk; None when there is one chunk, or when a cut would not be exact.

    Boxes whose x ranges meet at most at an edge share no area, so their IoU is 0 (or NaN for
    two empty boxes), never above a threshold of 0 or more. A negative threshold suppresses
    boxes that share nothing, and a NaN or infinite coordinate breaks the sweep's order: those
    are resolved whole."""
    n = sorted_boxes.shape[0]
    if n <= _NMS_SPLIT_FROM or not iou_threshold >= 0 or not torch.isfinite(sorted_boxes).all():
        return None
    by_x = torch.sort(sorted_boxes[:, 0], stable=True).indices
    x1, x2 = sorted_boxes[by_x, 0], sorted_boxes[by_x, 2]
    reach = torch.cummax(x2, dim=0).values
    # A run starts where a box begins at or past every earlier box's end.
    starts = torch.ones(n, dtype=torch.bool, device=sorted_boxes.device)
    starts[1:] = x1[1:] >= reach[:-1]
    # Each box goes with the run it is in; runs are packed by where they start, so that a chunk
    # holds the runs starting within one stretch of `_NMS_CHUNK` positions.
    position = torch.arange(n, device=sorted_boxes.device)
    run_start = torch.cummax(torch.where(starts, position, 0), dim=0).values
    chunk_of = run_start // _NMS_CHUNK
    sizes = torch.unique_consecutive(chunk_of, return_counts=True)[1]
    if sizes.shape[0] == 1:
        return None
    return [torch.sort(part).values for part in torch.split(by_x, sizes.tolist())]


def _resolve(sorted_boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS over boxes already in falling-score order: the positions kept, ascending.

    Boxes are taken in blocks of growing size: a block first loses the boxes that already-kept
    boxes suppress, and the survivors are resolved as the fixed point of
    `keep[j] = not any(keep[i] and iou[i, j] > t for i < j)`, one matrix pass per link of the
    longest suppression chain instead of one Python step per box. Detector output is clustered,
    so after the first small block most candidates fall to the first step. A block whose chains
    outlast `_NMS_PASSES` passes is finished one overlapping box at a time instead.
    """
    kept_boxes = sorted_boxes.new_zeros((0, 4))
    kept_positions: list[torch.Tensor] = []
    positions = torch.arange(sorted_boxes.shape[0], device=sorted_boxes.device)
    start, size = 0, _NMS_FIRST_BLOCK
    while start < sorted_boxes.shape[0]:
        block = sorted_boxes[start : start + size]
        block_positions = positions[start : start + size]
        start, size = start + size, min(size * 2, _NMS_BLOCK)
        if kept_boxes.shape[0]:
            survivors = ~(_box_iou(kept_boxes, block) > iou_threshold).any(dim=0)
            block, block_positions = block[survivors], block_positions[survivors]
        if block.shape[0] == 0:
            continue
        index = torch.arange(block.shape[0], device=block.device)
        # Only earlier (higher-scoring) boxes suppress later ones. An index mask, because
        # torch.triu on booleans takes a slow path (milliseconds for a 128 x 128 block).
        overlaps = (_box_iou(block, block) > iou_threshold) & (index[:, None] < index[None, :])
        keep = torch.ones(block.shape[0], dtype=torch.bool, device=block.device)
        for _ in range(_NMS_PASSES):
            new_keep = ~(overlaps & keep[:, None]).any(dim=0)
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
        else:
            keep = _greedy(overlaps)
        kept_boxes = torch.cat([kept_boxes, block[keep]])
        kept_positions.append(block_positions[keep])
    return torch.cat(kept_positions)


def _greedy(overlaps: torch.Tensor) -> torch.Tensor:
    """Greedy NMS one box at a time over an upper-triangular overlap matrix: for a block whose
    suppression chains are too long for matrix passes, each of which settles one link. Only the
    boxes that overlap a later one are visited."""
    matrix = overlaps.cpu().numpy()
    keep = np.ones(matrix.shape[0], dtype=bool)
    for i in np.flatnonzero(matrix.any(axis=1)).tolist():
        if keep[i]:
            keep &= ~matrix[i]
    return torch.from_numpy(keep).to(overlaps.device)


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


def define_ops() -> bool:
    """Register the pure-torch NMS when torchvision's compiled ops cannot load.

    Returns True when the fallback is in use (then `let_torchvision_dispatch` must run once
    torchvision is imported). Must run before torchvision is imported.
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
    return True


def let_torchvision_dispatch() -> None:
    """torchvision.ops.nms asserts that the compiled ops loaded before it dispatches; the op
    exists now, so let that one assertion pass (roi_align and the others stay unavailable).
    Run once torchvision is imported."""
    import torchvision.ops.boxes as tv_boxes

    tv_boxes._assert_has_ops = lambda: None


def in_use() -> bool:
    return _fallback_library is not None
