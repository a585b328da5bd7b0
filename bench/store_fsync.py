"""What syncing the image store costs: images stored a second, with and without the syncs.

A part's image is synced to disk (its bytes, then its folder's entry) before the verdict naming
it is committed, so that a power cut never leaves a verdict whose image is empty or missing.
Here the store alone, as the engine drives it (`store_image` for each file of a batch, then
`sync_store_folders` once for the batch), on IMAGES distinct small images (NEU-DET's, 200x200
JPEG, from --neu, else synthetic PNGs), into a fresh store on this machine's disk (--dir) each
round, alternating:

- `unsynced`: os.fsync a no-op, the bytes left in the page cache (the store before the syncs);
- `synced_per_batch`: each file synced, its folders once a batch of BATCH (what the engine does);
- `synced_per_image`: each file and its folder synced one by one (had the folders not been
  batched).

    python bench/store_fsync.py --images 300 --batch 32 --repeats 5 --neu DIR --dir DIR

Writes bench/results/store_fsync_cpu.json. The disk decides the figures: a station's SSD with
a power-loss-protected cache syncs far faster than a virtual machine's disk.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspection.images import store_image, sync_store_folders  # noqa: E402

MODES = ("unsynced", "synced_per_batch", "synced_per_image")


def images(count: int, neu: Path) -> list[bytes]:
    """NEU-DET's first `count` images where the dataset is there, else synthetic PNGs."""
    if (neu / "images").is_dir():
        files = sorted((neu / "images").glob("*.jpg"))[:count]
        if len(files) == count:
            return [path.read_bytes() for path in files]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    made = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, "PNG")
        made.append(buffer.getvalue())
    return made


def store_all(store: Path, datas: list[bytes], batch: int, mode: str) -> float:
    """Seconds to store every image in a fresh `store`, in batches as the engine does."""
    per_image = mode == "synced_per_image"
    started = time.perf_counter()
    for start in range(0, len(datas), batch):
        stored = [
            store_image(store, hashlib.sha256(data).hexdigest(), "part.jpg", data, per_image)
            for data in datas[start : start + batch]
        ]
        if not per_image:
            sync_store_folders(store, stored)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores are made")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "store_fsync_cpu.json"
    )
    args = parser.parse_args()
    datas = images(args.images, args.neu)
    real_fsync: Callable[[int], None] = os.fsync
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="store-fsync-") as scratch:
        for _ in range(args.repeats):
            for mode in MODES:
                store = Path(scratch) / mode
                shutil.rmtree(store, ignore_errors=True)
                os.sync()  # (each round from a clean page cache: no earlier round's writeback)
                os.fsync = (lambda fd: None) if mode == "unsynced" else real_fsync  # type: ignore[assignment]
                try:
                    seconds[mode].append(store_all(store, datas, args.batch, mode))
                finally:
                    os.fsync = real_fsync
        disk = os.statvfs(scratch)
    result = {
        "what": "images stored a second in the image store, with and without fsync",
        "images": len(datas),
        "source": "NEU-DET" if (args.neu / "images").is_dir() else "synthetic PNGs",
        "mean_image_bytes": round(statistics.mean(len(d) for d in datas)),
        "batch": args.batch,
        "repeats": args.repeats,
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()})",
        "filesystem_block_bytes": disk.f_bsize,
        "images_per_second": {
            mode: {
                "median": round(len(datas) / statistics.median(runs), 1),
                "each_round": [round(len(datas) / s, 1) for s in runs],
            }
            for mode, runs in seconds.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["images_per_second"], indent=2))


if __name__ == "__main__":
    main()
