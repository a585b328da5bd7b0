"""The inspection engine: decode, letterbox, infer, NMS, verdict, for batches of parts.

One `Inspector` per process holds the loaded model. Decoding and letterboxing of the next batch
run in worker threads while the current batch is inferred (Pillow and OpenCV release the GIL).
An accelerator out-of-memory error splits the batch in two and retries.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from inspection.backends.base import Backend, OutOfMemory
from inspection.errors import UserError
from inspection.images import ImageDecodeError, Letterboxed, decode_image, letterbox
from inspection.settings import resolve_device
from inspection.verdict import Detection, Thresholds, part_fails

BackendChoice = Literal["auto", "pytorch", "onnx"]
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class PartInput:
    name: str
    data: bytes

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


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

    @property
    def failed_classes(self) -> list[str]:
        return sorted({d.class_name for d in self.detections if d.counted})


@dataclass
class _Prepared:
    part: PartInput
    content_hash: str
    started: float
    image: Letterboxed | None
    error: str | None


def open_backend(
    weights: Path, backend: BackendChoice = "auto", device: str | None = None
) -> Backend:
    """PyTorch for a .pt file, ONNX Runtime for a .onnx file (or the .onnx beside the weights)."""
    device = resolve_device(device)
    weights = Path(weights)
    if backend == "auto":
        backend = "onnx" if weights.suffix == ".onnx" else "pytorch"
    if backend == "onnx":
        from inspection.backends.onnx_backend import OnnxBackend

        onnx_path = weights if weights.suffix == ".onnx" else weights.with_suffix(".onnx")
        if not onnx_path.is_file():
            raise UserError(f"no ONNX file for {weights.name}: run `defects export` on it first")
        return OnnxBackend(onnx_path, device)
    if weights.suffix != ".pt":
        raise UserError(f"the PyTorch backend needs a .pt file, not {weights.name}")
    from inspection.backends.torch_backend import TorchBackend

    return TorchBackend(weights, device)


def postprocess(
    raw: np.ndarray,
    shapes: list[tuple[int, int]],
    image_size: int,
    class_names: list[str],
    thresholds: Thresholds,
) -> list[list[Detection]]:
    """NMS (ultralytics') and boxes back to each original image's pixels."""
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    kept = non_max_suppression(
        torch.from_numpy(raw),
        conf_thres=thresholds.lowest,
        iou_thres=thresholds.iou,
        max_det=MAX_DETECTIONS,
    )
    results: list[list[Detection]] = []
    for boxes, shape in zip(kept, shapes, strict=True):
        if len(boxes):
            boxes[:, :4] = scale_boxes((image_size, image_size), boxes[:, :4], shape)
        detections = []
        for x1, y1, x2, y2, conf, cls in boxes.tolist():
            name = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
            detections.append(
                Detection(
                    name, float(conf), x1, y1, x2, y2, counted=conf >= thresholds.for_class(name)
                )
            )
        results.append(detections)
    return results


class Inspector:
    """Loads a detector once and inspects parts in batches."""

    def __init__(
        self,
        backend: Backend,
        thresholds: Thresholds | None = None,
        batch_size: int | None = None,
        prepare_workers: int = 2,
    ) -> None:
        self.backend = backend
        self.class_names = backend.class_names
        self.thresholds = thresholds or Thresholds.from_dict(None, self.class_names)
        self.batch_size = max(1, min(batch_size or backend.max_batch, backend.max_batch))
        self._pool = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix="prepare")

    @classmethod
    def from_weights(
        cls,
        weights: Path,
        thresholds: dict | None = None,
        backend: BackendChoice = "auto",
        device: str | None = None,
        batch_size: int | None = None,
    ) -> Inspector:
        opened = open_backend(weights, backend, device)
        return cls(opened, Thresholds.from_dict(thresholds, opened.class_names), batch_size)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, part: PartInput) -> _Prepared:
        started = time.perf_counter()
        content_hash = part.content_hash
        try:
            image = letterbox(decode_image(part.data), self.backend.image_size)
            return _Prepared(part, content_hash, started, image, None)
        except ImageDecodeError as exc:
            return _Prepared(part, content_hash, started, None, str(exc))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.backend.infer(batch)
        except OutOfMemory:
            if len(batch) == 1:
                raise
            middle = len(batch) // 2
            self.batch_size = max(1, middle)  # remember: later batches start smaller
            return np.concatenate([self._infer(batch[:middle]), self._infer(batch[middle:])])

    def _finish(self, prepared: list[_Prepared]) -> list[PartResult]:
        good = [p for p in prepared if p.image is not None]
        detections: dict[int, list[Detection]] = {}
        if good:
            batch = np.stack([p.image.tensor for p in good])  # type: ignore[union-attr]
            raw = self._infer(batch)
            shapes = [p.image.original_shape for p in good]  # type: ignore[union-attr]
            per_image = postprocess(
                raw, shapes, self.backend.image_size, self.class_names, self.thresholds
            )
            detections = {id(p): d for p, d in zip(good, per_image, strict=True)}
        done = time.perf_counter()
        results = []
        for p in prepared:
            latency = (done - p.started) * 1000
            if p.image is None:
                results.append(
                    PartResult(
                        p.part.name,
                        p.content_hash,
                        len(p.part.data),
                        "error",
                        latency_ms=latency,
                        error=p.error,
                    )
                )
                continue
            found = detections[id(p)]
            height, width = p.image.original_shape
            results.append(
                PartResult(
                    p.part.name,
                    p.content_hash,
                    len(p.part.data),
                    "fail" if part_fails(found) else "pass",
                    found,
                    width,
                    height,
                    latency,
                )
            )
        return results

    def inspect(self, parts: Iterable[PartInput]) -> Iterator[PartResult]:
        """Results in input order; the next batch is decoded while this one is inferred."""
        iterator = iter(parts)

        def submit_next() -> list[Future[_Prepared]]:
            futures = []
            for part in iterator:
                futures.append(self._pool.submit(self._prepare, part))
                if len(futures) >= self.batch_size:
                    break
            return futures

        pending = submit_next()
        while pending:
            following = submit_next()
            yield from self._finish([f.result() for f in pending])
            pending = following

    def inspect_one(self, name: str, data: bytes) -> PartResult:
        return next(self.inspect([PartInput(name, data)]))
