"""The verdict's post-processing (NMS, boxes back to pixels) on a batch of detector outputs:
`inspection.engine.postprocess` against the version it replaced (kept below, as it was),
and with `--against REV` against the one of an earlier commit too, on the same outputs,
alternating, with the same detections required.

On a GPU station this runs on the CPU for every part, beside decoding, and a profile of
`defects batch --workers 8` on an H100 (bench/results/profile_gpu.md) gave it about a fifth of
each worker's samples. The outputs are the shipped demo model's on the NEU-DET test images.

    python bench/postprocess.py --neu ../shared/datasets/neu-det --out bench/results/postprocess_cpu.json

    OMP_NUM_THREADS=1 python bench/postprocess.py --neu ../shared/datasets/neu-det \
        --against c3a7a05 --crowded 4 --repeats 10 --out bench/results/postprocess_bound_cpu.json

`--crowded N` also times each version on outputs where every anchor is over the threshold (a
model that fires all over: each image's bound at work), where the versions keep different
boxes and only the time is compared. `--floor F` times them on the demo model's outputs again
with every class's threshold at F (calibration's score floor is 0.001): crowded outputs of a
real model, its boxes overlapping. With `--against REV` where the product's NMS fallback
stands in for torchvision's kernel, REV's postprocess runs with REV's fallback.

    OMP_NUM_THREADS=1 python bench/postprocess.py --neu ../shared/datasets/neu-det \
        --against 657522f --crowded 4 --floor 0.001 --repeats 10 \
        --out bench/results/postprocess_crowded_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from common import write_timings

from inspection.engine import MAX_DETECTIONS, Inspector, postprocess
from inspection.images import prepare_parts
from inspection.verdict import Detection, Thresholds

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "models" / "neu-det-demo" / "weights.pt"


def module_at(rev: str, name: str) -> ModuleType:
    """The product's module `name` (a path under the checkout) as it is at commit `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{Path(name).stem}_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def postprocess_at(rev: str) -> Callable[..., object]:
    """`postprocess` as it is in inspection/engine.py at commit `rev` (importing the rest of
    the product as it is now), and where the product's NMS fallback stands in for torchvision's
    kernel, with the fallback of `rev` too: torchvision.ops.nms is pointed at it for the call."""
    import torchvision  # (its first import is what puts the fallback in place, if needed)

    function = module_at(rev, "inspection/engine.py").postprocess
    if not _fallback_nms():
        return function  # type: ignore[no-any-return]
    nms_then = module_at(rev, "inspection/nms_fallback.py").nms_reference

    def with_its_nms(*args: object) -> object:
        nms_now = torchvision.ops.nms
        torchvision.ops.nms = nms_then
        try:
            return function(*args)
        finally:
            torchvision.ops.nms = nms_now

    return with_its_nms


def detections_of(output: object) -> list[list[Detection]]:
    """Each image's detections, from a version that returns them alone or beside a count."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def crowded(batch: int, size: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """Raw outputs in which every anchor of a `size` px model (three strides) is over the
    threshold: small boxes on a lattice, none overlapping, random classes and confidences."""
    anchors = sum((size // stride) ** 2 for stride in (8, 16, 32))
    rng = np.random.default_rng(seed)
    raw = np.zeros((batch, 4 + n_classes, anchors), dtype=np.float32)
    per_row = int(np.ceil(np.sqrt(anchors)))
    pitch = size / per_row
    k = np.arange(anchors)
    raw[:, 0, :] = (k % per_row + 0.5) * pitch
    raw[:, 1, :] = (k // per_row + 0.5) * pitch
    raw[:, 2:4, :] = pitch / 3
    classes = rng.integers(0, n_classes, (batch, anchors))
    scores = rng.uniform(0.3, 0.95, (batch, anchors)).astype(np.float32)
    np.put_along_axis(raw[:, 4:, :], classes[:, None, :], scores[:, None, :], axis=1)
    return raw


def postprocess_before(
    raw: np.ndarray,
    shapes: list[tuple[int, int]],
    image_size: int,
    class_names: list[str],
    thresholds: Thresholds,
) -> list[list[Detection]]:
    """inspection.engine.postprocess as it was before bench/postprocess.py: torchvision's
    batched_nms (a Python loop over groups above 1000 candidates) and ultralytics'
    scale_boxes called once per image."""
    import torchvision
    from ultralytics.utils.ops import scale_boxes

    n_classes = raw.shape[1] - 4
    best = raw[:, 4:, :].max(axis=1)
    image_index, anchor_index = np.nonzero(best > thresholds.lowest)
    results: list[list[Detection]] = [[] for _ in shapes]
    if len(image_index) == 0:
        return results
    candidates = raw[image_index, :, anchor_index]
    cx, cy, w, h = candidates[:, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    confidence = best[image_index, anchor_index]
    classes = candidates[:, 4:].argmax(axis=1)
    kept = torchvision.ops.batched_nms(
        torch.from_numpy(boxes.astype(np.float64)),
        torch.from_numpy(confidence.astype(np.float64)),
        torch.from_numpy(image_index * n_classes + classes),
        thresholds.iou,
    ).numpy()
    kept_images = image_index[kept]
    for i in np.unique(kept_images):
        order = kept[kept_images == i][:MAX_DETECTIONS]
        pixel_boxes = scale_boxes(
            (image_size, image_size), torch.from_numpy(boxes[order].astype(np.float32)), shapes[i]
        )
        for (x1, y1, x2, y2), conf, cls in zip(
            pixel_boxes.tolist(),
            confidence[order].astype(np.float32).tolist(),
            classes[order].tolist(),
            strict=True,
        ):
            name = class_names[cls] if cls < len(class_names) else str(cls)
            results[i].append(
                Detection(name, conf, x1, y1, x2, y2, counted=conf >= thresholds.for_class(name))
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=Path("../shared/datasets/neu-det"))
    parser.add_argument("--weights", type=Path, default=DEMO)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="passes over the batches a round")
    parser.add_argument("--out", type=Path, default=Path("bench/results/postprocess_cpu.json"))
    parser.add_argument("--against", help="an earlier commit whose postprocess is timed too")
    parser.add_argument(
        "--crowded", type=int, default=0, metavar="N", help="and on N outputs all over it"
    )
    parser.add_argument(
        "--floor", type=float, help="and on the same outputs, every class's threshold at this"
    )
    args = parser.parse_args()
    inspector = Inspector.from_weights(args.weights, backend="pytorch", device="cpu")
    size, names = inspector.backend.image_size, inspector.class_names
    files = (args.neu / "splits" / "test.txt").read_text().split()
    data = [(args.neu / "images" / name).read_bytes() for name in files]
    batches: list[tuple[np.ndarray, list[tuple[int, int]]]] = []
    for start in range(0, len(data) - args.batch + 1, args.batch):
        prepared = [
            image for image, *_ in prepare_parts(data[start : start + args.batch], size, False)
        ]
        pixels = np.stack([image.pixels for image in prepared])  # type: ignore[union-attr]
        raw = np.concatenate(
            [inspector.backend.infer(pixels[i : i + 4]) for i in range(0, len(pixels), 4)]
        )
        batches.append((raw, [image.original_shape for image in prepared]))  # type: ignore[union-attr]
    versions: dict[str, Callable[..., object]] = {"before": postprocess_before}
    if args.against:
        versions[args.against] = postprocess_at(args.against)
    versions["after"] = postprocess
    for raw, shapes in batches:  # the same detections, to the last bit
        now = detections_of(postprocess(raw, shapes, size, names, inspector.thresholds))
        for name, function in versions.items():
            then = detections_of(function(raw, shapes, size, names, inspector.thresholds))
            if now != then:
                raise SystemExit(f"{name} gives other detections")

    def timed(
        batches: list[tuple[np.ndarray, list[tuple[int, int]]]],
        repeats: int,
        thresholds: Thresholds = inspector.thresholds,
    ) -> dict[str, list[float]]:
        per_part_ms: dict[str, list[float]] = {name: [] for name in versions}
        parts = sum(len(shapes) for _, shapes in batches) * repeats
        for _ in range(args.rounds):
            for name, function in versions.items():
                began = time.perf_counter()
                for _ in range(repeats):
                    for raw, shapes in batches:
                        function(raw, shapes, size, names, thresholds)
                per_part_ms[name].append(round((time.perf_counter() - began) * 1000 / parts, 4))
        return per_part_ms

    per_part_ms = timed(batches, args.repeats)
    extra: dict[str, object] = {}
    if args.crowded:
        many = [
            (crowded(args.crowded, size, len(names), seed), [(size, size)] * args.crowded)
            for seed in range(2)
        ]
        many_ms = timed(many, max(1, args.repeats // 10))
        extra = {
            "crowded": {
                "what": f"the same, on two batches of {args.crowded} outputs with every anchor "
                "over the threshold (`crowded` here), a tenth of the repeats: the versions "
                "keep different boxes",
                "candidates_per_image": int(many[0][0].shape[2]),
                "timings": many_ms,
                "medians": {name: sorted(v)[len(v) // 2] for name, v in many_ms.items()},
            }
        }
    if args.floor is not None:
        low = replace(
            inspector.thresholds, per_class=dict.fromkeys(names, args.floor), default=args.floor
        )
        kept = {
            name: [detections_of(f(raw, shapes, size, names, low)) for raw, shapes in batches]
            for name, f in versions.items()
        }
        floor_ms = timed(batches, max(1, args.repeats // 10), low)
        extra["floor"] = {
            "what": f"the same outputs with every class's threshold at {args.floor} (a score "
            "floor, as calibration's), a tenth of the repeats",
            "threshold": args.floor,
            "candidates_per_batch": [
                int((raw[:, 4:, :].max(axis=1) > args.floor).sum()) for raw, _ in batches
            ],
            "same_detections_as_after": {name: kept[name] == kept["after"] for name in versions},
            "timings": floor_ms,
            "medians": {name: sorted(v)[len(v) // 2] for name, v in floor_ms.items()},
        }
    import torchvision

    write_timings(
        args.out,
        "milliseconds of post-processing per part (NMS, boxes back to pixels, detections), "
        f"batches of {args.batch} outputs of the demo model on the NEU-DET test images, medians "
        "of alternating rounds; the same detections from each",
        per_part_ms,
        batches=len(batches),
        rounds=args.rounds,
        candidates_per_batch=[
            int((raw[:, 4:, :].max(axis=1) > inspector.thresholds.lowest).sum())
            for raw, _ in batches
        ],
        nms="the product's fallback (torchvision's kernel does not load beside this torch)"
        if _fallback_nms()
        else "torchvision's compiled kernel",
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        torch_threads=torch.get_num_threads(),
        **({"against": args.against} if args.against else {}),
        **extra,
    )


def _fallback_nms() -> bool:
    from inspection import nms_fallback

    return nms_fallback.in_use()


if __name__ == "__main__":
    main()
