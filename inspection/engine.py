"""The inspection engine: decode, letterbox, infer, NMS, verdict, for batches of parts.

One `Inspector` per process holds the loaded model. Decoding and letterboxing of the next batch
run in worker threads while the current batch is inferred (Pillow and OpenCV release the GIL),
or, beside a GPU, in worker processes: there the network is so fast that the Python around it
is the limit, and processes take the decoding's share of it off the interpreter lock.
An accelerator out-of-memory error splits the batch in two and retries. A part larger than a
tile of the model's grid (`inspection.tiling`) is judged tile by tile, at its own resolution,
and its tiles' detections merged back into its pixels.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import (
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from inspection.backends.base import Backend, OutOfMemory
from inspection.errors import UserError
from inspection.images import (
    LETTERBOX_FILL,
    DecodedImage,
    Letterboxed,
    Prepared,
    StoreRequest,
    Tiled,
    prepare_parts,
    store_image,
    sync_store_folders,
)
from inspection.settings import get_settings, resolve_device, usable_cores
from inspection.tiling import (
    CHECKPOINT_KEY,
    TileSpec,
    TileSpecError,
    fused_with_origins,
    judged_in,
)
from inspection.verdict import Detection, Thresholds, part_fails, verify

BackendChoice = Literal["auto", "pytorch", "onnx", "onnx-int8"]
# The ONNX metadata key of the SHA-256 of the weights an export was made from.
EXPORTED_FROM_KEY = "defects.weights_sha256"
# The grid parts are judged in: the model's own ("model"), none ("off": each part whole), or
# another (a model trained on small crops judging large images at their own resolution).
TileChoice = TileSpec | Literal["model", "off"]
# The boxes a part (or a tile) keeps at most (`within_bound`): MAX_DETECTIONS under their
# class's threshold; MAX_COUNTED over it, the most confident, and beside them each class's
# MIN_COUNTED_PER_CLASS most confident, so that a part fails for every class it fails for: a
# model that fires all over a large frame found tens of thousands, each a row to write and to
# read on every page that shows the part.
MAX_DETECTIONS = 300
MAX_COUNTED = 1000
MIN_COUNTED_PER_CLASS = 50


def parse_tile(text: str) -> TileChoice:
    """`--tile`'s value at a station: `TileSpec.parse`'s SIZE[:OVERLAP], `off`, or `model`."""
    value = text.strip().lower()
    if value in ("off", "model"):
        return value  # type: ignore[return-value]
    try:
        return TileSpec.parse(value)
    except TileSpecError as exc:
        detail = str(exc) + (", or off" if str(exc).startswith("give") else "")
        raise UserError(f"--tile {text}: {detail}") from exc


@dataclass(frozen=True)
class PartInput:
    name: str
    data: bytes
    known_hash: str | None = field(default=None, repr=False, compare=False)  # hashed already

    @functools.cached_property
    def content_hash(self) -> str:  # asked for by the batch, the store and the result: once
        return self.known_hash or hashlib.sha256(self.data).hexdigest()


@dataclass
class PartResult:
    name: str
    content_hash: str
    size_bytes: int
    verdict: Literal["pass", "fail", "error"]
    detections: list[Detection] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    defect_probability: float | None = None  # from the part classifier, where one is used
    stored_path: Path | None = None  # where the bytes were kept, when inspect() was asked to
    # The pixel limit an image too large was refused at (`ImageDecodeError.refused_over`).
    refused_over: int | None = None
    # Counted boxes not kept, past the most a part keeps (`within_bound`): 0 none; None an error.
    boxes_left_out: int | None = None

    @property
    def failed_classes(self) -> list[str]:
        return sorted({d.class_name for d in self.detections if d.counted})


@dataclass
class _Prepared:
    part: PartInput
    started: float
    image: Letterboxed | Tiled | None
    error: str | None
    pixels: DecodedImage | None = None  # kept only when a classifier needs the crops
    stored_path: Path | None = None
    refused_over: int | None = None  # (`PartResult.refused_over`)


def open_backend(
    weights: Path,
    backend: BackendChoice = "auto",
    device: str | None = None,
    cpu_streams: int | None = None,
) -> Backend:
    """PyTorch for a .pt file, ONNX Runtime for a .onnx file (or the .onnx beside the weights)."""
    device = resolve_device(device)
    weights = Path(weights)
    if backend == "auto":
        # On a CPU, ONNX Runtime beside the weights is the faster engine (bench/results).
        on_cpu_with_onnx = device == "cpu" and weights.with_suffix(".onnx").is_file()
        backend = "onnx" if weights.suffix == ".onnx" or on_cpu_with_onnx else "pytorch"
    if backend in ("onnx", "onnx-int8"):
        from inspection.backends.onnx_backend import OnnxBackend

        onnx_path = weights if weights.suffix == ".onnx" else weights.with_suffix(".onnx")
        if backend == "onnx-int8" and not onnx_path.name.endswith(".int8.onnx"):
            onnx_path = onnx_path.with_suffix(".int8.onnx")
        if not onnx_path.is_file():
            # (The hint names the weights: `defects export` alone is missing its argument.)
            flag = " --int8 --data NAME" if backend == "onnx-int8" else ""
            raise UserError(
                f"no {onnx_path.name} beside {weights}: run `defects export {weights}{flag}` first"
            )
        opened = OnnxBackend(onnx_path, device, cpu_streams)
        if weights.suffix == ".pt":
            check_export_source(opened, cached_sha256(weights), str(weights))
            # (An export known to be of these weights; another model's is refused above.)
            if EXPORTED_FROM_KEY in opened.metadata:
                check_export_size(opened, weights)
        check_export_grid(opened, weights)
        return opened
    if weights.suffix != ".pt":
        raise UserError(f"the PyTorch backend needs a .pt file, not {weights.name}")
    from inspection.backends.torch_backend import TorchBackend

    return TorchBackend(weights, device)


def sha256_of(path: Path) -> str:
    """A file's SHA-256, read in blocks: model versions are known by their weights' digest."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, identity: tuple[int, ...]) -> str:
    return sha256_of(Path(path))


def file_identity(path: Path) -> tuple[int, ...]:
    """A file as it is, for caches of what is read from it: its device, inode, size and both
    times. Weights copied over the old ones with their time kept (`rsync -a`, `cp -p`), of the
    same size, are a new inode and a new change time, where size and modification time alone
    served what was read from the old file."""
    info = path.stat()
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def cached_sha256(path: Path) -> str:
    """A file's SHA-256, read once per file as it is (`file_identity`): a station's workers
    and the dashboard find and open the same weights again and again."""
    return _cached_sha256(str(path), file_identity(path))


def check_export_source(backend: Backend, weights_sha256: str, weights_name: str) -> None:
    """An ONNX export must be of the weights it judges for. `defects export` records their
    SHA-256 in the metadata; an export made before a fine-tune was written over the weights,
    or another model's `.onnx` copied beside them, of the same classes, judged every part
    with the other model and stored its verdicts under this one, without a word. (An export
    made before the digest was recorded carries none: nothing to compare.)"""
    recorded = getattr(backend, "metadata", {}).get(EXPORTED_FROM_KEY)
    if backend.model_path.suffix != ".onnx" or not recorded or recorded == weights_sha256:
        return
    raise UserError(
        f"{backend.model_path} was exported from other weights than {weights_name} (an export "
        f"older than the weights, or another model's): export it again (`defects export "
        f"{weights_name}`) or pass --backend pytorch"
    )


def check_export_size(backend: Backend, weights: Path) -> None:
    """The .onnx a station runs in the place of its weights must take parts at the size they
    were trained and calibrated at, as the PyTorch backend does: an export at another
    `--imgsz` (`NAME.96.onnx`) copied over `NAME.onnx` judged every part at that size, its
    verdicts moved from the weights' at their thresholds, without a word. (Checked for an
    export known to be of these weights: another model's is said as that.)"""
    try:
        trained = int(_checkpoint_facts(weights)[1])
    except Exception:  # noqa: BLE001 - weights that cannot be read here: nothing to compare
        return
    if backend.image_size == trained:
        return
    raise UserError(
        f"{backend.model_path} takes parts at {backend.image_size} px, but {weights} was "
        f"trained and calibrated at {trained} px: an export at another --imgsz in the place "
        f"of the stations' file; export it again (`defects export {weights}`), pass that "
        "export itself as --model, or pass --backend pytorch"
    )


@functools.lru_cache(maxsize=16)
def _cached_checkpoint_facts(path: str, identity: tuple[int, ...]) -> tuple[object, object]:
    """The grid (as recorded, unparsed) and training size a checkpoint carries: one load of
    the file for both checks of an export beside it (`check_export_grid`, `check_export_size`)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        return None, 640
    return checkpoint.get(CHECKPOINT_KEY), (checkpoint.get("train_args") or {}).get("imgsz", 640)


def _checkpoint_facts(weights: Path) -> tuple[object, object]:
    """`_cached_checkpoint_facts`, read once per file as it is (`file_identity`): a station's
    workers and the dashboard open the same weights again and again."""
    return _cached_checkpoint_facts(str(weights), file_identity(weights))


def _checkpoint_tile(weights: Path) -> TileSpec | None:
    """The grid a checkpoint carries (None: untiled), as `tile_of_checkpoint` reads it."""
    return TileSpec.from_json(_checkpoint_facts(weights)[0])


def checkpoint_tile(weights: Path) -> TileSpec | None:
    """The grid a PyTorch checkpoint carries (None: untiled), or one line naming the file."""
    from inspection.backends.base import read_tile

    return read_tile(weights, lambda: _checkpoint_tile(weights))


def check_export_grid(backend: Backend, weights: Path) -> None:
    """An ONNX export must judge by the grid of the PyTorch weights it stands for. One written
    before the grid went into the metadata (or exported from other weights) carries none, and
    a CPU station, which runs the export beside the weights, judged every large part whole,
    shrunk to the model's size, where the weights cut it into tiles: defects of a few pixels
    passed unseen, and nothing said so. Refused in one line, as a stale export's classes are."""
    if backend.model_path.suffix != ".onnx" or weights.suffix != ".pt":
        return
    try:
        expected = _checkpoint_tile(weights)
    except Exception:  # noqa: BLE001 - weights that cannot be read here: nothing to compare
        return
    if expected == backend.tile:
        return
    raise UserError(
        f"{backend.model_path.name} judges {judged_in(backend.tile)}, but the weights it was "
        f"exported from, {weights}, judge {judged_in(expected)}: an export written before the "
        f"grid went into its metadata, or of other weights; export it again (`defects export "
        f"{weights}`) or pass --backend pytorch"
    )


logger = logging.getLogger(__name__)


@functools.cache
def _probe_image() -> bytes:
    """A tiny PNG that a healthy worker process decodes at once."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def postprocess(
    raw: np.ndarray,
    shapes: list[tuple[int, int]],
    image_size: int,
    class_names: list[str],
    thresholds: Thresholds,
) -> tuple[list[list[Detection]], list[int]]:
    """Candidates above the lowest threshold, per-class NMS, boxes back to original pixels;
    each image's detections, and how many of its counted boxes its bound left out.

    The same rules as ultralytics' non_max_suppression (best class per anchor, conf strictly
    above the threshold, class-aware NMS) and the same arithmetic as its scale_boxes:
    reimplemented because the confidence filter in NumPy comes first here, so that NMS sees a
    few candidates instead of every anchor, and because one NMS call and one rescaling serve
    the whole batch instead of a call (and a loop) per image. Each image then keeps what
    `within_bound` keeps, not ultralytics' 300 most confident: with per-class thresholds those
    could all be boxes under their own class's threshold, pushing out a low-threshold class's
    counted boxes and passing a part that fails (an escape); with one threshold, a part's
    least confident class lost every box and went from its failed classes, unrecorded.
    On a GPU station this runs on the CPU for every part, beside decoding.
    """
    import torch  # (here, not at the top: a parallel run's dealing process never needs it)
    import torchvision

    n_classes = raw.shape[1] - 4
    best = raw[:, 4:, :].max(axis=1)  # (batch, anchors)
    image_index, anchor_index = np.nonzero(best > thresholds.lowest)
    results: list[list[Detection]] = [[] for _ in shapes]
    left_out = [0] * len(shapes)
    if len(image_index) == 0:
        return results, left_out
    candidates = raw[image_index, :, anchor_index]  # (candidates, 4 + classes)
    cx, cy, w, h = candidates[:, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    confidence = best[image_index, anchor_index]
    classes = candidates[:, 4:].argmax(axis=1)
    # Each image and class a group, kept apart by shifting its boxes past the others', as
    # torchvision's batched_nms does below a size, here always: above it, batched_nms loops
    # over the groups in Python (hundreds in a batch of 64). Shifted by the boxes' whole span,
    # so that a box past the image's edge cannot reach into the next group. In float64: at a
    # batch's worth of groups float32 would round the shifted coordinates.
    groups = image_index * n_classes + classes
    low, span = float(boxes.min()), float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes.astype(np.float64) - low + (groups * span)[:, None]
    kept = torchvision.ops.nms(
        torch.from_numpy(shifted), torch.from_numpy(confidence.astype(np.float64)), thresholds.iou
    ).numpy()  # by falling confidence
    # By image, each image's in falling confidence (a stable sort keeps NMS's order).
    kept = kept[np.argsort(image_index[kept], kind="stable")]
    kept_images = image_index[kept]
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(n_classes)]
    floors = [thresholds.for_class(name) for name in names]
    if np.bincount(kept_images).max() > min(MAX_COUNTED, MAX_DETECTIONS):  # (else all fit)
        # (Counted as below: the float32 confidence against its class's threshold.)
        counted = confidence[kept].astype(np.float32) >= np.array(floors)[classes[kept]]
        keep = within_bound(kept_images, classes[kept], counted)
        left_out = np.bincount(kept_images[counted & ~keep], minlength=len(shapes)).tolist()
        kept, kept_images = kept[keep], kept_images[keep]
    # Back to each image's pixels: ultralytics' scale_boxes (letterbox gain and padding, then
    # clipped to the image), for every kept box at once.
    images = np.unique(kept_images)
    scaling = np.zeros((len(shapes), 6), dtype=np.float32)  # pad x, y; gain x, y; width, height
    for i in images.tolist():
        height, width = shapes[i]
        gain = min(image_size / height, image_size / width)
        new_h, new_w = max(round(height * gain), 1), max(round(width * gain), 1)
        pad_x = round((image_size - new_w) / 2 - 0.1)
        pad_y = round((image_size - new_h) / 2 - 0.1)
        scaling[i] = (pad_x, pad_y, new_w / width, new_h / height, width, height)
    per_box = scaling[kept_images]
    pixel = boxes[kept].astype(np.float32)
    pixel[:, [0, 2]] = (pixel[:, [0, 2]] - per_box[:, [0]]) / per_box[:, [2]]
    pixel[:, [1, 3]] = (pixel[:, [1, 3]] - per_box[:, [1]]) / per_box[:, [3]]
    pixel[:, [0, 2]] = pixel[:, [0, 2]].clip(0, per_box[:, [4]])
    pixel[:, [1, 3]] = pixel[:, [1, 3]].clip(0, per_box[:, [5]])
    for (x1, y1, x2, y2), conf, cls, i in zip(
        pixel.tolist(),
        confidence[kept].astype(np.float32).tolist(),
        classes[kept].tolist(),
        kept_images.tolist(),
        strict=True,
    ):
        results[i].append(Detection(names[cls], conf, x1, y1, x2, y2, counted=conf >= floors[cls]))
    return results, left_out


def merge_tiles(
    per_tile: list[list[Detection]], grid: Sequence[tuple[int, int, int, int]], iou: float
) -> list[Detection]:
    """A tiled part's detections, in its pixels, as one. A defect a tile edge cut in pieces is
    first made one box again (`fuse_cut_boxes`); then an object in the band neighbouring tiles
    share, found whole in each, is kept once by class-aware NMS at the operating point's IoU,
    the most confident, in falling confidence. Every counted detection is kept here, however
    many: a cap of MAX_DETECTIONS a part, as a whole part's, dropped a long strip's least
    confident defects, a class's every counted box with them, and the class from the part's
    failed classes, its review and the Pareto (the engine bounds them after crop verification,
    `bound_counted`, each failed class kept). Below the threshold, at most MAX_DETECTIONS in all.
    Only lower-confidence duplicates go, and only pieces both counted (or both not) are
    fused, so the part fails exactly when one of its tiles does, for the same classes.

    The NMS is greedy NMS over the whole part, as torchvision's, but it compares only the pairs
    that can be duplicates: two boxes of one tile went through that tile's own NMS already, so
    a box is compared with the boxes of other tiles that reach where it lies (a band two tiles
    share), and a fused box with every box it may overlap. NMS over all of a part's boxes
    compared every pair: quadratic in the boxes, where a model that fires everywhere on a
    large frame makes tens of thousands (`bench/tile_merge.py`)."""
    detections, origins = fused_with_origins(per_tile, grid)
    if not detections:
        return []
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in detections], dtype=np.float64)
    scores = np.array([d.confidence for d in detections], dtype=np.float64)
    index = {name: k for k, name in enumerate(sorted({d.class_name for d in detections}))}
    classes = np.array([index[d.class_name] for d in detections])
    order = np.lexsort((np.arange(len(detections)), -scores))  # falling confidence, stable
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    first, second = _duplicate_pairs(boxes, classes, np.array(origins), len(grid), iou)
    # Greedy, as NMS: a box is dropped by a more confident duplicate that is itself kept.
    higher = np.where(rank[first] < rank[second], first, second)
    lower = np.where(rank[first] < rank[second], second, first)
    by_rank = np.argsort(rank[higher], kind="stable")
    higher, lower = higher[by_rank], lower[by_rank]
    suppressed = np.zeros(len(detections), dtype=bool)
    starts = np.flatnonzero(np.r_[True, higher[1:] != higher[:-1]]) if len(higher) else []
    ends = [*starts[1:], len(higher)] if len(higher) else []
    for s, e in zip(starts, ends, strict=True):
        if not suppressed[higher[s]]:
            suppressed[lower[s:e]] = True
    merged: list[Detection] = []
    for i in order[~suppressed[order]].tolist():
        if detections[i].counted or len(merged) < MAX_DETECTIONS:
            merged.append(detections[i])
    return merged


def within_bound(images: np.ndarray, classes: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Which boxes a part keeps, each given by its image, class and whether it counts, in
    falling confidence within each image: of each image, the MAX_COUNTED most confident
    counted boxes and each class's MIN_COUNTED_PER_CLASS most confident counted boxes beside
    them, so that it fails for the very classes it fails for, and the MAX_DETECTIONS most
    confident of the rest. Counted and uncounted boxes have bounds of their own: a box under
    its class's threshold never takes a counted box's place. The one rule for an image's boxes
    (`postprocess`, a batch at a time) and a tiled part's merged ones (`bound_counted`)."""
    n_classes = int(classes.max()) + 1 if len(classes) else 1
    images, classes = images.astype(np.int64), classes.astype(np.int64)
    by_kind = _rank_within(images * 2 + counted)
    by_class = _rank_within((images * n_classes + classes) * 2 + counted)
    return np.where(
        counted,
        (by_kind < MAX_COUNTED) | (by_class < MIN_COUNTED_PER_CLASS),
        by_kind < MAX_DETECTIONS,
    )


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Each element's place among those of its group, in the order given (0 the first)."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - np.searchsorted(ordered, ordered)
    return rank


def bound_counted(detections: list[Detection]) -> tuple[list[Detection], int]:
    """A tiled part's merged detections as `within_bound` keeps them (counted: after crop
    verification), in their order. With the number of counted boxes left out, which the
    part's record says: the boxes shown are then not all the model found."""
    counted = np.array([d.counted for d in detections], dtype=bool)
    if counted.sum() <= MAX_COUNTED and (~counted).sum() <= MAX_DETECTIONS:
        return detections, 0
    index = {name: k for k, name in enumerate(sorted({d.class_name for d in detections}))}
    classes = np.array([index[d.class_name] for d in detections])
    order = np.argsort([-d.confidence for d in detections], kind="stable")
    keep = np.empty(len(detections), dtype=bool)
    keep[order] = within_bound(np.zeros(len(order)), classes[order], counted[order])
    kept = [d for d, k in zip(detections, keep.tolist(), strict=True) if k]
    return kept, int((counted & ~keep).sum())


def _over_iou(
    a: np.ndarray, b: np.ndarray, same: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the pairs of boxes `a` x `b` of one class (`same`) whose IoU is over
    `iou`, by torchvision's arithmetic (its NMS compares the same way)."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = inter / (area_a[:, None] + area_b[None, :] - inter)
    return np.nonzero(same & (ratio > iou))


def _duplicate_pairs(
    boxes: np.ndarray, classes: np.ndarray, origins: np.ndarray, n_tiles: int, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) of the pairs of boxes of one class whose IoU is over `iou`,
    leaving out pairs of one tile's own boxes (its NMS compared them). Boxes are grouped by
    tile (fused boxes, origin -1, in a group of their own); two groups are compared only where
    their boxes' extents overlap, and only their boxes that reach into the other's extent: a
    pair that overlaps at all lies in both."""
    group = np.where(origins < 0, n_tiles, origins)
    members = [np.flatnonzero(group == g) for g in range(n_tiles + 1)]
    filled = [g for g in range(n_tiles + 1) if members[g].size]
    extent = {
        g: np.r_[boxes[members[g], :2].min(axis=0), boxes[members[g], 2:].max(axis=0)]
        for g in filled
    }
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []

    def reaching(g: int, into: np.ndarray) -> np.ndarray:
        found = boxes[members[g]]
        return members[g][
            (found[:, 0] < into[2])
            & (found[:, 2] > into[0])
            & (found[:, 1] < into[3])
            & (found[:, 3] > into[1])
        ]

    def compare(left: np.ndarray, right: np.ndarray, upper: bool = False) -> None:
        rows, columns = _over_iou(
            boxes[left], boxes[right], classes[left][:, None] == classes[right][None, :], iou
        )
        if upper:  # (`right` goes on from `left`'s first box: each pair once, not a box itself)
            keep = rows < columns
            rows, columns = rows[keep], columns[keep]
        firsts.append(left[rows])
        seconds.append(right[columns])

    for n, a in enumerate(filled):
        for b in filled[n + 1 :]:
            ea, eb = extent[a], extent[b]
            if not (ea[0] < eb[2] and eb[0] < ea[2] and ea[1] < eb[3] and eb[1] < ea[3]):
                continue
            left, right = reaching(a, eb), reaching(b, ea)
            if left.size and right.size:
                compare(left, right)
    fused = members[n_tiles]
    if fused.size > 1:
        # Fused boxes with each other, swept along x a block at a time: a box is compared only
        # with those that start before it ends.
        fused = fused[np.argsort(boxes[fused, 0], kind="stable")]
        starts = boxes[fused, 0]
        for s in range(0, fused.size, 512):
            block = fused[s : s + 512]
            stop = int(np.searchsorted(starts, boxes[block, 2].max(), side="left"))
            compare(block, fused[s:stop], upper=True)
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


class PartClassifier:
    """The classifier at inspection time: whole parts and detection crops in one forward pass."""

    def __init__(self, weights: Path, device: str) -> None:
        from inspection.classifier import load_classifier

        self.device = device
        self.model, self.image_size = load_classifier(weights, device)
        self.half = device.startswith("cuda")
        if self.half:
            self.model = self.model.half()

    def defect_probabilities(self, crops: list[np.ndarray]) -> np.ndarray:
        """1 - P(good) for each H x W x 3 uint8 crop."""
        import torch

        from inspection.classifier import resize_square

        if not crops:
            return np.zeros(0, dtype=np.float32)
        batch = torch.from_numpy(np.stack([resize_square(c, self.image_size) for c in crops])).to(
            self.device
        )
        with torch.inference_mode():
            logits = self.model(batch.half() if self.half else batch).float()
        return (1.0 - torch.softmax(logits, dim=1)[:, 0]).cpu().numpy()


class Inspector:
    """Loads a detector (and optionally the classifier) once and inspects parts in batches."""

    def __init__(
        self,
        backend: Backend,
        thresholds: Thresholds | None = None,
        batch_size: int | None = None,
        prepare_workers: int | None = None,
        classifier: PartClassifier | None = None,
        prepare_processes: int | None = None,
        tile: TileChoice = "model",
    ) -> None:
        self.backend = backend
        self.classifier = classifier
        # The grid a part larger than a tile is judged in (None: every part whole).
        self.tile: TileSpec | None = (
            backend.tile if tile == "model" else None if tile == "off" else tile
        )
        self.class_names = backend.class_names
        self.thresholds = thresholds or Thresholds.from_dict(None, self.class_names)
        requested = batch_size or backend.preferred_batch or backend.max_batch
        self.batch_size = max(1, min(requested, backend.max_batch))
        # With a grid: the most tiles a part was cut into so far (None: no batch seen yet), by
        # which `parts_per_batch` fills a batch of tiles, not of parts.
        self._tiles_per_part: int | None = None
        # Decoding and resizing release the GIL, so threads scale with the cores a GPU station
        # has to spare; two at least, so that a small CPU still overlaps them with inference.
        cores = len(usable_cores())
        workers = prepare_workers or max(2, min(8, cores // 2))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
        self._thread_workers = workers
        self._streams = max(1, backend.streams)
        self._infer_pool = (
            ThreadPoolExecutor(max_workers=self._streams, thread_name_prefix="infer")
            if self._streams > 1
            else None
        )
        if prepare_processes is None:
            prepare_processes = get_settings().prepare_processes
        self.prepare_processes = prepare_processes
        self._processes: ProcessPoolExecutor | None = None

    @classmethod
    def from_weights(
        cls,
        weights: Path,
        thresholds: dict | None = None,
        backend: BackendChoice = "auto",
        device: str | None = None,
        batch_size: int | None = None,
        classifier_weights: Path | None = None,
        prepare_processes: int | None = None,
        cpu_streams: int | None = None,
        tile: TileChoice = "model",
    ) -> Inspector:
        opened = open_backend(weights, backend, device, cpu_streams)
        classifier = (
            PartClassifier(classifier_weights, resolve_device(device))
            if classifier_weights
            else None
        )
        return cls(
            opened,
            Thresholds.from_dict(thresholds, opened.class_names),
            batch_size,
            classifier=classifier,
            prepare_processes=prepare_processes,
            tile=tile,
        )

    def tiling_note(self) -> str | None:
        """What a run that tiles says once at its start, as it says its backend."""
        if self.tile is None:
            return None
        return f"judging in {self.tile.size} px tiles, {self.tile.overlap:.0%} overlap"

    def close(self, wait: bool = False) -> None:
        """Let the threads and decoding processes go; `wait`: until they have (a process about
        to end without its interpreter's teardown must not leave its decoders behind)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self._infer_pool is not None:
            self._infer_pool.shutdown(wait=wait, cancel_futures=True)
        self.close_processes(wait)

    def warm_up(self) -> None:
        """Blank batches through the network before the first part, at the batch size a run
        forms and at one part (a hot folder's file, a dashboard upload). On a GPU the first
        pass of a shape picks its kernels and records its CUDA graph: seconds when several
        processes share the GPU, and the first parts' latency would carry them. (Eight workers on
        an H100, 100000 parts: p99 0.27 s with one batch a transaction, 6.0 s with four, whose
        first chunk holds twice as many parts started before the first pass ended,
        bench/results/batch_chunks_gpu_100k.txt; measured before this warm-up.) The
        post-processing runs once too (torchvision is imported there), and decoding processes,
        where asked for, start here."""
        size = self.backend.image_size
        for count in sorted({self.batch_size, 1}, reverse=True):
            blank = np.full((count, 3, size, size), LETTERBOX_FILL, dtype=np.uint8)
            raw = self._infer(blank)
            if self._infer_pool is not None:
                self._infer(blank, side_by_side=True)
            postprocess(raw, [(size, size)] * count, size, self.class_names, self.thresholds)
        if self.classifier is not None:
            self.classifier.defect_probabilities([np.zeros((size, size, 3), dtype=np.uint8)])
        self._executor()

    def _executor(self) -> tuple[Executor, int]:
        """Where a batch is prepared, and in chunks of how many parts."""
        if not self.prepare_processes:
            return self._pool, 1
        if self._processes is None:
            # A fork server forks workers from a fresh process that has imported the decoding
            # code (not torch: decoding needs none) and holds no CUDA context and runs no
            # threads, so nothing is copied mid-lock.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            if "forkserver" in methods:
                context.set_forkserver_preload(["inspection.images"])
            pool = ProcessPoolExecutor(self.prepare_processes, mp_context=context)
            try:  # workers re-import the main script: an unguarded one breaks them at start
                pool.submit(prepare_parts, [_probe_image()], 32, False).result(timeout=120)
            except Exception as exc:  # noqa: BLE001 - whatever breaks them, threads still work
                pool.shutdown(wait=False, cancel_futures=True)
                logger.warning(
                    "decoding in worker processes failed (%r); decoding in threads instead. "
                    'A script that inspects should keep its top level under `if __name__ == "__main__":`.',
                    exc,
                )
                self.prepare_processes = 0
                return self._pool, 1
            self._processes = pool
        return self._processes, self._chunk_size()

    def _chunk_size(self) -> int:
        """Parts per task: one for threads; a batch shared out among the worker processes."""
        if not self.prepare_processes:
            return 1
        return max(1, -(-self.batch_size // self.prepare_processes))

    def _submit(
        self, parts: list[PartInput], store_into: Path | None = None
    ) -> list[tuple[list[PartInput], Future[list[Prepared]]]]:
        executor, chunk = self._executor()
        keep = self.classifier is not None
        size = self.backend.image_size
        chunks = [parts[i : i + chunk] for i in range(0, len(parts), chunk)]

        def stores(chunk_parts: list[PartInput]) -> list[StoreRequest] | None:
            if store_into is None:
                return None
            return [StoreRequest(store_into, p.content_hash, p.name) for p in chunk_parts]

        def submit_all(executor: Executor) -> list[tuple[list[PartInput], Future[list[Prepared]]]]:
            return [
                (
                    c,
                    executor.submit(
                        prepare_parts, [p.data for p in c], size, keep, stores(c), self.tile
                    ),
                )
                for c in chunks
            ]

        try:
            return submit_all(executor)
        except BrokenProcessPool:  # a worker died since the last batch: a fresh pool, once
            self.close_processes()
            return submit_all(self._executor()[0])

    def _gather(
        self,
        submitted: list[tuple[list[PartInput], Future[list[Prepared]]]],
        started: float,
        store_into: Path | None,
    ) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        for parts, future in submitted:
            try:
                results = future.result()
            except (BrokenProcessPool, CancelledError):
                # A worker died (a decoder crash on some file), or its pool was replaced after
                # one did: each part of the chunk again, alone, so that only the file that kills
                # a worker becomes an error.
                self.close_processes()
                results = self._prepare_alone(parts, store_into)
            prepared.extend(
                _Prepared(part, started, image, error, pixels, stored, refused_over)
                for part, (image, error, pixels, stored, refused_over) in zip(
                    parts, results, strict=True
                )
            )
        if store_into is not None:
            # The stored files' names to disk once for the batch (their bytes are already),
            # before any verdict naming them is handed on to be committed.
            sync_store_folders(
                store_into, [p.stored_path for p in prepared if p.stored_path is not None]
            )
        return prepared

    def _prepare_alone(self, parts: list[PartInput], store_into: Path | None) -> list[Prepared]:
        results: list[Prepared] = []
        for part in parts:
            [(_, future)] = self._submit([part], store_into)
            try:
                results.extend(future.result())
            except (BrokenProcessPool, CancelledError):
                self.close_processes()
                # Stored here, in this process: the part is kept with its error, not lost.
                stored = (
                    store_image(store_into, part.content_hash, part.name, part.data)
                    if store_into is not None
                    else None
                )
                results.append((None, "the image decoder crashed on this file", None, stored, None))
        return results

    def parts_per_batch(self) -> int:
        """Parts decoded and judged together. Untiled, a batch's worth. With a grid, as many as
        fill one batch of tiles, at least one, and one until a first part shows how many tiles
        the line's parts make: a tiled part is held decoded whole until its batch is judged, and
        64 parts of 20 MP each, a batch ahead, held gigabytes, and their thousands of tiles
        kept the first part's verdict waiting for the last one's."""
        if self.tile is None:
            return self.batch_size
        if self._tiles_per_part is None:
            return 1
        return max(1, self.batch_size // self._tiles_per_part)

    def _prefetch_depth(self) -> int:
        """Batches prepared ahead of the one being inferred: one, or as many as keep the workers
        busy when a batch is smaller than the number of workers (batch 1 on a GPU station)."""
        workers = self.prepare_processes or self._thread_workers
        chunks_per_batch = -(-self.parts_per_batch() // self._chunk_size())
        return max(1, min(8, workers // chunks_per_batch))

    def close_processes(self, wait: bool = False) -> None:
        if self._processes is not None:
            self._processes.shutdown(wait=wait, cancel_futures=True)
            self._processes = None

    def _infer(self, batch: np.ndarray, side_by_side: bool = False) -> np.ndarray:
        try:
            if side_by_side:
                return self.backend.infer_side_by_side(batch)
            return self.backend.infer(batch)
        except OutOfMemory:
            if len(batch) == 1:
                raise
            middle = len(batch) // 2
            self.batch_size = max(1, middle)  # remember: later batches start smaller
            return np.concatenate(
                [
                    self._infer(batch[:middle], side_by_side),
                    self._infer(batch[middle:], side_by_side),
                ]
            )

    def _finish(self, prepared: list[_Prepared], side_by_side: bool = False) -> list[PartResult]:
        good = [p for p in prepared if p.image is not None]
        if self.tile is not None and good:
            # The most any part has made so far: a small part first (or a batch of them) on a
            # line that mixes sizes made the next batch a whole batch of large parts.
            self._tiles_per_part = max(
                self._tiles_per_part or 1,
                *(len(p.image.grid) if isinstance(p.image, Tiled) else 1 for p in good),
            )
        detections: dict[int, list[Detection]] = {}
        # Each part's counted boxes its images' bounds left out (a tiled part's: its tiles').
        left_out: dict[int, int] = {}
        if any(isinstance(p.image, Tiled) for p in good):
            detections, left_out = self._detect_in_tiles(good, side_by_side)
        elif good:
            batch = np.stack([p.image.pixels for p in good])  # type: ignore[union-attr]
            raw = self._infer(batch, side_by_side)
            shapes = [p.image.original_shape for p in good]  # type: ignore[union-attr]
            per_image, per_image_left_out = postprocess(
                raw, shapes, self.backend.image_size, self.class_names, self.thresholds
            )
            detections = {id(p): d for p, d in zip(good, per_image, strict=True)}
            left_out = {id(p): n for p, n in zip(good, per_image_left_out, strict=True)}
        probabilities: dict[int, float] = {}
        if self.classifier is not None and good:
            probabilities = self._classify(good, detections)
        done = time.perf_counter()
        results = []
        for p in prepared:
            latency = (done - p.started) * 1000
            if p.image is None:
                results.append(
                    PartResult(
                        p.part.name,
                        p.part.content_hash,
                        len(p.part.data),
                        "error",
                        latency_ms=latency,
                        error=p.error,
                        stored_path=p.stored_path,
                        refused_over=p.refused_over,
                    )
                )
                continue
            found, not_kept = detections[id(p)], left_out[id(p)]
            if isinstance(p.image, Tiled):  # (after crop verification: its counted boxes)
                found, merged_not_kept = bound_counted(found)
                not_kept += merged_not_kept
            height, width = p.image.original_shape
            results.append(
                PartResult(
                    p.part.name,
                    p.part.content_hash,
                    len(p.part.data),
                    "fail"
                    if part_fails(found, probabilities.get(id(p)), self.thresholds)
                    else "pass",
                    found,
                    width,
                    height,
                    latency,
                    defect_probability=probabilities.get(id(p)),
                    stored_path=p.stored_path,
                    boxes_left_out=not_kept,
                )
            )
        return results

    def _detect_in_tiles(
        self, good: list[_Prepared], side_by_side: bool
    ) -> tuple[dict[int, list[Detection]], dict[int, int]]:
        """Detections of parts some of which are tiled: every tile (and every whole part) of
        them inferred in batches of the engine's size, each tile's detections moved into its
        part's pixels and merged per part. With each part's counted boxes that its images'
        bounds left out (a tiled part's: the sum over its tiles)."""
        # (part, tile index or None for a whole part), in order; a tile letterboxed only as
        # its batch is formed, so that a part of many tiles is never held letterboxed whole.
        inputs = [
            (p, i)
            for p in good
            for i in (range(len(p.image.grid)) if isinstance(p.image, Tiled) else [None])
        ]
        size = self.backend.image_size
        found: dict[int, list[Detection]] = {id(p): [] for p in good}
        left_out: dict[int, int] = {id(p): 0 for p in good}
        # A tiled part's detections tile by tile, as `merge_tiles` takes them.
        in_tiles: dict[int, list[list[Detection]]] = {
            id(p): [[] for _ in p.image.grid] for p in good if isinstance(p.image, Tiled)
        }

        def detect(
            chunk: list[tuple[_Prepared, int | None]], side: bool
        ) -> tuple[list[list[Detection]], list[int]]:
            boxed = [
                p.image.letterboxed_tile(i, size) if i is not None else p.image  # type: ignore[union-attr]
                for p, i in chunk
            ]
            raw = self._infer(np.stack([b.pixels for b in boxed]), side)
            return postprocess(
                raw, [b.original_shape for b in boxed], size, self.class_names, self.thresholds
            )

        def take(
            chunk: list[tuple[_Prepared, int | None]],
            detected: tuple[list[list[Detection]], list[int]],
        ) -> None:
            for (p, i), in_input, not_kept in zip(chunk, *detected, strict=True):
                left_out[id(p)] += not_kept
                if i is None:
                    found[id(p)] = in_input
                    continue
                x0, y0, _, _ = p.image.grid[i]  # type: ignore[union-attr]
                in_tiles[id(p)][i] = [
                    replace(d, x1=d.x1 + x0, y1=d.y1 + y0, x2=d.x2 + x0, y2=d.y2 + y0)
                    for d in in_input
                ]

        if (
            self._infer_pool is not None
            and not side_by_side
            and len(inputs) >= self._streams * self.batch_size
        ):
            # A part judged on its own (`inspect`'s latency path: a frame that arrives alone in a
            # watched folder, an upload) whose tiles make a batch for every stream: its batches run side by side
            # on the streams, as queued parts' batches do, where one at a time on the session
            # of every core left a CPU station's cores mostly idle for a part of many tiles
            # (a small network splits poorly across threads at a batch of one).
            chunks = [
                inputs[s : s + self.batch_size] for s in range(0, len(inputs), self.batch_size)
            ]
            futures = [self._infer_pool.submit(detect, c, True) for c in chunks]
            try:
                for chunk, future in zip(chunks, futures, strict=True):
                    take(chunk, future.result())
            finally:
                for future in futures:
                    future.cancel()
        else:
            start = 0
            while start < len(inputs):
                chunk = inputs[start : start + self.batch_size]  # (smaller after an OOM split)
                start += len(chunk)
                take(chunk, detect(chunk, side_by_side))
        for p in good:
            if isinstance(p.image, Tiled):
                found[id(p)] = merge_tiles(in_tiles[id(p)], p.image.grid, self.thresholds.iou)
        return found, left_out

    def _classify(
        self, good: list[_Prepared], detections: dict[int, list[Detection]]
    ) -> dict[int, float]:
        """Whole-part defect probabilities; counted detections get their crop verified."""
        from inspection.classifier import crop_with_context

        assert self.classifier is not None
        crops: list[np.ndarray] = []
        owners: list[tuple[int, int | None]] = []  # (part, detection index or None for the part)
        for p in good:
            pixels = p.pixels.pixels  # type: ignore[union-attr]
            crops.append(pixels)
            owners.append((id(p), None))
            for i, detection in enumerate(detections[id(p)]):
                if detection.counted and self.thresholds.verify is not None:
                    box = (detection.x1, detection.y1, detection.x2, detection.y2)
                    crops.append(crop_with_context(pixels, box))
                    owners.append((id(p), i))
        scores = self.classifier.defect_probabilities(crops)
        probabilities: dict[int, float] = {}
        for (owner, index), score in zip(owners, scores.tolist(), strict=True):
            if index is None:
                probabilities[owner] = score
            else:
                detections[owner][index] = verify(detections[owner][index], score, self.thresholds)
        return probabilities

    def inspect(
        self, parts: Iterable[PartInput], store_into: Path | None = None
    ) -> Iterator[PartResult]:
        """Results in input order; the next batch is decoded while this one is inferred.

        With `store_into`, each part's bytes are also kept in that content-addressed image store
        as they are prepared (`PartResult.stored_path`)."""
        iterator = iter(parts)
        # Parts that fit in one batch (a part inspected on its own) take the latency path.
        first = list(itertools.islice(iterator, self.batch_size + 1))
        lone = len(first) <= self.batch_size
        iterator = itertools.chain(first, iterator)
        pending: deque[tuple[list[tuple[list[PartInput], Future[list[Prepared]]]], float]] = deque()

        def fill() -> None:
            # Small batches keep several in flight, so that every worker has a part to decode.
            while len(pending) < self._prefetch_depth():
                started = time.perf_counter()
                batch = list(itertools.islice(iterator, self.parts_per_batch()))
                if not batch:
                    return
                pending.append((self._submit(batch, store_into), started))

        fill()
        if self._infer_pool is None or lone:
            while pending:
                current = pending.popleft()
                fill()
                yield from self._finish(self._gather(*current, store_into))
            return
        # Several batches inferred at once (ONNX Runtime on a CPU, one per core; PyTorch on a
        # GPU, one on the GPU while another's results are worked out): decoded here, in
        # order, and finished by the inference threads; results still come in input order.
        finishing: deque[Future[list[PartResult]]] = deque()
        try:
            while pending or finishing:
                while pending and len(finishing) < self._streams:
                    current = pending.popleft()
                    fill()
                    prepared = self._gather(*current, store_into)
                    finishing.append(self._infer_pool.submit(self._finish, prepared, True))
                yield from finishing.popleft().result()
        finally:
            for future in finishing:  # a consumer that stops early leaves nothing running
                future.cancel()

    def inspect_one(self, name: str, data: bytes) -> PartResult:
        return next(self.inspect([PartInput(name, data)]))
