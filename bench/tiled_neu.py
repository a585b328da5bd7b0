"""Line-scan strips judged whole and tile by tile: what tiling gives a large image.

    python bench/tiled_neu.py [--per-strip 9] [--tile 200:0.2] [--backend onnx] [--neu DIR]

The 180 NEU-DET test images (200x200), in a fixed shuffled order, are laid side by side into
strips of `--per-strip` images (1800x200 for 9), as a line-scan camera delivers a steel strip.
The shipped demo detector (trained on the 200 px images at 256 px input) judges each strip at
its shipped thresholds three ways:
- whole: the strip letterboxed to 256 px as one image, as a station without tiling does;
- tiled: cut by the product's tile grid (`--tile`) and merged back into the strip's pixels;
- alone: each 200 px image judged on its own, the ceiling (the model's own test figures).
For each way: labeled boxes found (same class, IoU >= 0.5, one-to-one), per-class recall,
source images with no counted detection on them (each image holds a defect: a miss were it a
part), and the CPU and wall time a strip (all the process's threads). The seams between images are not a real strip's; what is
measured is what shrinking loses and what tiles keep.
Writes bench/results/tiled_neu_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import commit_of, hardware  # noqa: E402

import inspection  # noqa: E402,F401
from inspection.engine import Inspector, PartInput  # noqa: E402
from inspection.tiling import TileSpec  # noqa: E402

NEU = ROOT.parent / "shared" / "datasets" / "neu-det"  # (--neu sets another)
DEMO = ROOT / "models" / "neu-det-demo"


def boxes_of(xml: Path, classes: list[str]) -> list[tuple[int, float, float, float, float]]:
    root = ET.parse(xml).getroot()
    found = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        assert box is not None
        corners = [float(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax")]
        found.append((classes.index(obj.findtext("name") or ""), *corners))
    return found


def strips(neu: Path, per_strip: int, seed: int) -> list[list[str]]:
    names = (neu / "splits" / "test.txt").read_text().split()
    random.Random(seed).shuffle(names)
    return [names[i : i + per_strip] for i in range(0, len(names), per_strip)]


def strip_bytes(neu: Path, names: list[str]) -> tuple[bytes, list[int]]:
    """The images side by side as one PNG, and each image's left edge in it."""
    import io

    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(neu / "images" / n).convert("L")) for n in names]
    lefts = list(np.cumsum([0] + [im.shape[1] for im in images[:-1]]))
    height = max(im.shape[0] for im in images)
    strip = np.zeros((height, sum(im.shape[1] for im in images)), dtype=np.uint8)
    for left, im in zip(lefts, images, strict=True):
        strip[: im.shape[0], left : left + im.shape[1]] = im
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    return buffer.getvalue(), [int(x) for x in lefts]


def score(
    detections: list, truth: list[tuple[int, float, float, float, float]], classes: list[str]
) -> list[bool]:
    """Which labeled boxes a part's counted detections find."""
    import numpy as np

    from training.evaluate import matched_boxes

    counted = [d for d in detections if d.counted]
    if not truth:
        return []
    truth_boxes = np.array([t[1:] for t in truth])
    truth_classes = np.array([t[0] for t in truth])
    pred = np.array([[d.x1, d.y1, d.x2, d.y2] for d in counted]).reshape(-1, 4)
    pred_classes = np.array([classes.index(d.class_name) for d in counted], dtype=int)
    conf = np.array([d.confidence for d in counted])
    return matched_boxes(truth_boxes, truth_classes, pred, pred_classes, conf).tolist()


def run(args: argparse.Namespace) -> dict:
    card = json.loads((DEMO / "model.json").read_text())
    classes, thresholds = card["classes"], card["thresholds"]
    spec = TileSpec.parse(args.tile)
    weights = DEMO / "weights.pt"
    groups = strips(args.neu, args.per_strip, args.seed)
    ways = {
        "whole": Inspector.from_weights(weights, thresholds, backend=args.backend, tile="off"),
        "tiled": Inspector.from_weights(weights, thresholds, backend=args.backend, tile=spec),
    }
    ways["alone"] = ways["whole"]
    for inspector in ways.values():
        inspector.warm_up()
    figures: dict[str, dict] = {}
    for way, inspector in ways.items():
        found_per_class = [0] * len(classes)
        boxes_per_class = [0] * len(classes)
        images_missed, seconds, walls = 0, [], []
        for group in groups:
            data, lefts = strip_bytes(args.neu, group)
            truths = [
                boxes_of(args.neu / "annotations" / f"{Path(n).stem}.xml", classes) for n in group
            ]
            if way == "alone":
                parts = [PartInput(n, (args.neu / "images" / n).read_bytes()) for n in group]
                started, wall = time.process_time(), time.perf_counter()
                results = list(inspector.inspect(parts))
                seconds.append(time.process_time() - started)
                walls.append(time.perf_counter() - wall)
                per_image = [(r.detections, t) for r, t in zip(results, truths, strict=True)]
            else:
                started, wall = time.process_time(), time.perf_counter()
                result = inspector.inspect_one("strip.png", data)
                seconds.append(time.process_time() - started)
                walls.append(time.perf_counter() - wall)
                assert result.verdict != "error", result.error
                per_image = []
                for left, truth in zip(lefts, truths, strict=True):
                    shifted = [(c, x1 + left, y1, x2 + left, y2) for c, x1, y1, x2, y2 in truth]
                    # A detection belongs to the image its centre lies in.
                    mine = [d for d in result.detections if left <= (d.x1 + d.x2) / 2 < left + 200]
                    per_image.append((mine, shifted))
            for detections, truth in per_image:
                found = score(detections, truth, classes)
                for (cls, *_), hit in zip(truth, found, strict=True):
                    boxes_per_class[cls] += 1
                    found_per_class[cls] += int(hit)
                if not any(d.counted for d in detections):
                    images_missed += 1
        figures[way] = {
            "boxes_found": sum(found_per_class),
            "boxes": sum(boxes_per_class),
            "recall": round(sum(found_per_class) / sum(boxes_per_class), 4),
            "per_class_recall": {
                name: round(found / total, 4)
                for name, found, total in zip(
                    classes, found_per_class, boxes_per_class, strict=True
                )
            },
            "images_with_no_detection": images_missed,
            "cpu_seconds_per_strip_median": round(statistics.median(seconds), 4),
            "wall_seconds_per_strip_median": round(statistics.median(walls), 4),
        }
        print(way, json.dumps(figures[way]))
    for inspector in {id(i): i for i in ways.values()}.values():
        inspector.close()
    return {
        "what": "NEU-DET test images laid side by side into line-scan strips, judged by the "
        "shipped demo detector whole, tile by tile, and each image alone",
        "model": card["name"],
        "strips": len(groups),
        "images_per_strip": args.per_strip,
        "strip_size": f"{200 * args.per_strip}x200",
        "tile": spec.to_json(),
        "backend": args.backend,
        "thresholds": "shipped",
        "seed": args.seed,
        "ways": figures,
        "hardware": hardware(),
        "cores": len(os.sched_getaffinity(0)),
        "commit": commit_of(ROOT),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-strip", type=int, default=9)
    parser.add_argument("--tile", default="200:0.2", help="SIZE[:OVERLAP] of the tiles")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "pytorch"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neu", type=Path, default=NEU, help="the NEU-DET folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/tiled_neu_cpu.json")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
