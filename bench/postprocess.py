"""The verdict's post-processing (NMS, boxes back to pixels) on a batch of detector outputs:
`inspection.engine.postprocess` against the version it replaced (kept below, as it was),
on the same outputs, alternating, with the same detections required.

On a GPU station this runs on the CPU for every part, beside decoding, and a profile of
`defects batch --workers 8` on an H100 (bench/results/profile_gpu.md) gave it about a fifth of
each worker's samples. The outputs are the shipped demo model's on the NEU-DET test images.

    python bench/postprocess.py --neu ../shared/datasets/neu-det --out bench/results/postprocess_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import write_timings

from inspection.engine import MAX_DETECTIONS, Inspector, postprocess
from inspection.images import prepare_parts
from inspection.verdict import Detection, Thresholds

DEMO = Path(__file__).parents[1] / "models" / "neu-det-demo" / "weights.pt"


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
    for raw, shapes in batches:  # the same detections, to the last bit
        for now, then in zip(
            postprocess(raw, shapes, size, names, inspector.thresholds),
            postprocess_before(raw, shapes, size, names, inspector.thresholds),
            strict=True,
        ):
            if now != then:
                raise SystemExit("the two give different detections")
    versions = {"before": postprocess_before, "after": postprocess}
    per_part_ms: dict[str, list[float]] = {name: [] for name in versions}
    parts = sum(len(shapes) for _, shapes in batches) * args.repeats
    for _ in range(args.rounds):
        for name, function in versions.items():
            began = time.perf_counter()
            for _ in range(args.repeats):
                for raw, shapes in batches:
                    function(raw, shapes, size, names, inspector.thresholds)
            per_part_ms[name].append(round((time.perf_counter() - began) * 1000 / parts, 4))
    import torchvision

    write_timings(
        args.out,
        "milliseconds of post-processing per part (NMS, boxes back to pixels, detections), "
        f"batches of {args.batch} outputs of the demo model on the NEU-DET test images, medians "
        "of alternating rounds; the same detections from both",
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
    )


def _fallback_nms() -> bool:
    from inspection import nms_fallback

    return nms_fallback.in_use()


if __name__ == "__main__":
    main()
