"""What tiled inspection costs a station: frames, tiles and megapixels a second by frame size.

    python bench/tiled_throughput.py [--sizes 1600x200 4000x1000 8000x2000] [--frames 6]

Frames of each size are made of NEU-DET test images (200 x 200) laid in a grid, as a line-scan
camera or a large area camera delivers a steel strip, and judged by the shipped demo detector
in its tiles (`--tile`, 200 px at 20% overlap by default: the images' own resolution) through
the engine as `defects batch` feeds it (frames queued, the model loaded and warmed up first).
Whole-frame judging is timed beside it for scale. Decoding is included, storing and the
database are not. Writes bench/results/tiled_throughput_cpu.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import commit_of, hardware  # noqa: E402

import inspection  # noqa: E402,F401
from inspection.engine import Inspector, PartInput  # noqa: E402
from inspection.tiling import TileSpec, tile_grid  # noqa: E402

DEMO = ROOT / "models" / "neu-det-demo"


def frame(neu: Path, width: int, height: int, seed: int) -> bytes:
    """A PNG of NEU-DET test images in a grid, cut to width x height."""
    import numpy as np
    from PIL import Image

    names = (neu / "splits" / "test.txt").read_text().split()
    pick = random.Random(seed)
    rows, columns = -(-height // 200), -(-width // 200)
    grid = np.vstack(
        [
            np.hstack(
                [
                    np.asarray(Image.open(neu / "images" / pick.choice(names)).convert("L"))
                    for _ in range(columns)
                ]
            )
            for _ in range(rows)
        ]
    )[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid)).save(buffer, format="PNG")
    return buffer.getvalue()


def timed(inspector: Inspector, parts: list[PartInput]) -> float:
    started = time.perf_counter()
    results = list(inspector.inspect(parts))
    assert all(r.verdict != "error" for r in results), [r.error for r in results]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1600x200", "4000x1000", "8000x2000"])
    parser.add_argument("--frames", type=int, default=6, help="frames of each size")
    parser.add_argument("--tile", default="200:0.2")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "pytorch"))
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tiled_throughput_cpu.json"
    )
    args = parser.parse_args()
    spec = TileSpec.parse(args.tile)
    card = json.loads((DEMO / "model.json").read_text())
    weights = DEMO / "weights.pt"
    ways = {
        "tiled": Inspector.from_weights(weights, card["thresholds"], args.backend, tile=spec),
        "whole": Inspector.from_weights(weights, card["thresholds"], args.backend, tile="off"),
    }
    for inspector in ways.values():
        inspector.warm_up()
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        parts = [
            PartInput(f"{size}-{i}.png", frame(args.neu, width, height, seed=i))
            for i in range(args.frames)
        ]
        tiles = len(tile_grid(width, height, spec))
        row = {"frame": size, "megapixels": width * height / 1e6, "tiles_a_frame": tiles}
        for way, inspector in ways.items():
            timed(inspector, parts[:1])  # (this size's first pass)
            seconds = timed(inspector, parts)
            row[way] = {
                "seconds_a_frame": round(seconds / len(parts), 4),
                "frames_a_second": round(len(parts) / seconds, 3),
                "megapixels_a_second": round(len(parts) * row["megapixels"] / seconds, 2),
            }
            if way == "tiled":
                row[way]["tiles_a_second"] = round(len(parts) * tiles / seconds, 1)
        print(json.dumps(row))
        rows.append(row)
    for inspector in ways.values():
        inspector.close()
    result = {
        "what": "frames of NEU-DET test images judged by the shipped demo detector in tiles and "
        "whole, queued as a batch feeds them; decoding included, storing and the database not",
        "model": card["name"],
        "tile": spec.to_json(),
        "backend": args.backend,
        "frames_each": args.frames,
        "rows": rows,
        "hardware": hardware(),
        "cores": len(os.sched_getaffinity(0)),
        "commit": commit_of(ROOT),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
