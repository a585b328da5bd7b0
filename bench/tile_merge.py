"""Merging a tiled part's detections (`inspection.engine.merge_tiles`): the merge against the
version it replaced (kept below, as it was: NMS over every pair of the part's boxes), on the
same synthetic detections, alternating, with the same merged detections required.

The detections stand for a model that fires everywhere on a large frame: objects of four
classes strewn over the frame, each tile reporting those it sees (clipped at its edges, its own
confidence and a pixel of jitter), through its own NMS and capped at MAX_DETECTIONS (300) a
tile. Frames of N x N tiles of 640 px at 20% overlap.

    python bench/tile_merge.py --tiles-per-side 2 4 8 16 --out bench/results/tile_merge_cpu.json
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from common import hardware, write_timings

from inspection import nms_fallback
from inspection.engine import MAX_DETECTIONS, merge_tiles
from inspection.tiling import TileSpec, fuse_cut_boxes, tile_grid
from inspection.verdict import Detection

TILE = TileSpec(640, 0.2)
CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def merge_tiles_before(
    per_tile: list[list[Detection]], grid: Sequence[tuple[int, int, int, int]], iou: float
) -> list[Detection]:
    """inspection.engine.merge_tiles as it was: torchvision's batched NMS over all the part's
    (fused) boxes."""
    import torchvision

    detections = fuse_cut_boxes(per_tile, grid)
    if not detections:
        return []
    boxes = torch.tensor([[d.x1, d.y1, d.x2, d.y2] for d in detections], dtype=torch.float64)
    scores = torch.tensor([d.confidence for d in detections], dtype=torch.float64)
    names = sorted({d.class_name for d in detections})
    groups = torch.tensor([names.index(d.class_name) for d in detections])
    kept = torchvision.ops.batched_nms(boxes, scores, groups, iou)
    merged: list[Detection] = []
    for i in kept.tolist():
        if detections[i].counted or len(merged) < MAX_DETECTIONS:
            merged.append(detections[i])
    return merged


def synthetic_part(
    per_side: int, seed: int, iou: float
) -> tuple[list[list[Detection]], list[tuple[int, int, int, int]]]:
    """A frame of `per_side` x `per_side` tiles and each tile's detections, as postprocess
    gives them: about MAX_DETECTIONS a tile."""
    import torchvision

    side = TILE.size + (per_side - 1) * round(TILE.size * (1 - TILE.overlap))
    grid = tile_grid(side, side, TILE)
    rng = np.random.default_rng(seed)
    n = int(MAX_DETECTIONS * 1.3 * side * side / (TILE.size * TILE.size))
    centre = rng.uniform(0, side, (n, 2))
    size = rng.uniform(12, 60, (n, 2))
    objects = np.concatenate([centre - size / 2, centre + size / 2], axis=1).clip(0, side)
    classes = rng.integers(0, len(CLASSES), n)
    per_tile: list[list[Detection]] = []
    for x0, y0, x1, y1 in grid:
        seen = np.flatnonzero(
            (objects[:, 0] < x1 - 2)
            & (objects[:, 2] > x0 + 2)
            & (objects[:, 1] < y1 - 2)
            & (objects[:, 3] > y0 + 2)
        )
        boxes = objects[seen] + rng.uniform(-1, 1, (len(seen), 4))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(x0, x1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(y0, y1)
        scores = rng.uniform(0.05, 0.95, len(seen))
        kept = torchvision.ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes[seen]), iou
        ).numpy()[:MAX_DETECTIONS]
        per_tile.append(
            [
                Detection(
                    CLASSES[classes[seen[k]]],
                    float(scores[k]),
                    *boxes[k].tolist(),
                    counted=bool(scores[k] >= 0.25),
                )
                for k in kept.tolist()
            ]
        )
    return per_tile, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles-per-side", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each, alternating")
    parser.add_argument("--largest-repeats", type=int, default=1, help="for the largest frame")
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tile_merge_cpu.json"))
    args = parser.parse_args()
    timings: dict[str, list[float]] = {}
    frames = []
    for per_side in args.tiles_per_side:
        per_tile, grid = synthetic_part(per_side, seed=per_side, iou=args.iou)
        found = sum(len(t) for t in per_tile)
        side = grid[-1][2]
        repeats = args.largest_repeats if per_side == max(args.tiles_per_side) else args.repeats
        results = {}
        for _ in range(repeats):
            for name, merge in (("before", merge_tiles_before), ("after", merge_tiles)):
                started = time.perf_counter()
                results[name] = merge(per_tile, grid, args.iou)
                timings.setdefault(f"{name}_{per_side}x{per_side}", []).append(
                    time.perf_counter() - started
                )
        if results["before"] != results["after"]:
            raise SystemExit(f"{per_side}x{per_side} tiles: the merges differ")
        merged = results["after"]
        frames.append(
            {
                "tiles": len(grid),
                "frame": f"{side}x{side}",
                "megapixels": round(side * side / 1e6, 1),
                "detections": found,
                "merged": len(merged),
                "counted_merged": sum(d.counted for d in merged),
                "same_result": True,
            }
        )
        print(frames[-1], flush=True)
    write_timings(
        args.out,
        "merge_tiles of synthetic tile detections, before (NMS over every pair of the fused "
        "boxes; the fusion step as it is now) and after (only boxes that can be duplicates "
        "compared), seconds a part",
        timings,
        frames=frames,
        tile=TILE.to_json(),
        iou=args.iou,
        torchvision_nms="fallback (pure PyTorch)" if nms_fallback.in_use() else "compiled",
        machine=hardware(),
        load_average_after=os.getloadavg(),  # (other work on the cores slows both alike)
    )


if __name__ == "__main__":
    main()
