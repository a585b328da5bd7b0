"""Whether a chunk of several batches lets decoding overlap inference, for a GPU's large batch.

Where one batch fills a chunk (a GPU's batch of 64 against 64 parts per transaction), the
engine takes the chunk on its latency path: decode, infer, work out, in turn. With
DEFECTS_CHUNK_BATCHES=4 a chunk holds four batches and the next is decoded while one is
inferred. No GPU here: the network is replaced by its recorded answer after a pause of
--forward-ms per batch (a GPU's forward pass, which leaves the CPU free: the pause releases the
interpreter lock as a CUDA synchronisation does). One process, the demo model's code around
its network, batch 64, chunk of 1 and 4 batches, alternating, REPEATS times:

    python bench/chunk_overlap.py --parts 2000 --forward-ms 5

Writes bench/results/chunk_overlap_cpu.json. A stand-in for a GPU, not a GPU figure: the
GPU's own comparison is `CHUNKS="1 4 1 4" bash bench/gpu_batch_cli.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import inference  # noqa: E402 - sets up the bench's own data folder before the product loads

from inspection.batch import BatchInspection, chunk_parts, iter_source  # noqa: E402
from inspection.engine import Inspector  # noqa: E402


def with_forward_pause(inspector: Inspector, images: list[Path], forward_ms: float) -> None:
    """The recorded answer after a pause per batch, for a GPU's forward pass."""
    inference.replay_network(inspector, images)
    replay = inspector.backend.infer

    def paused(batch: np.ndarray) -> np.ndarray:
        time.sleep(forward_ms / 1000)
        return replay(batch)

    inspector.backend.infer = paused  # type: ignore[method-assign]
    inspector.backend.infer_side_by_side = paused  # type: ignore[method-assign]


def one_run(
    weights: Path,
    classes: list[str],
    imgsz: int,
    folder: Path,
    images: list[Path],
    batch: int,
    chunk_batches: int,
    forward_ms: float,
    tag: str,
) -> dict:
    url = inference.register_bench_version(weights, tag, classes, imgsz)
    inspector = Inspector.from_weights(
        weights, {"default": inference.OPERATING_CONF, "iou": 0.45}, "pytorch", "cpu"
    )
    inspector.batch_size = batch  # (a CPU backend's own cap is 4: a GPU's batch, by hand)
    with_forward_pause(inspector, images, forward_ms)
    inspector.warm_up()  # as a batch run's own engine is, before its first part
    job = BatchInspection(
        url, inference.WORK / f"store-{tag}", "bench", "bench", model=tag, inspector=inspector
    )
    job.chunk_parts = chunk_parts(batch, chunk_batches)
    began = time.perf_counter()
    summary = job.run(iter_source(str(folder)))
    seconds = time.perf_counter() - began
    inspector.close()
    return {
        "parts": summary.inspected,
        "chunk_parts": job.chunk_parts,
        "parts_per_s": round(summary.inspected / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    inference.add_demo_arguments(parser, parts=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--forward-ms", type=float, default=5.0)
    parser.add_argument("--chunk-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "chunk_overlap_cpu.json"
    )
    args = parser.parse_args()

    images, folder, card = inference.prepare_demo_parts(args)
    runs: dict[int, list[dict]] = {n: [] for n in args.chunk_batches}
    for repeat in range(args.repeats):
        for n in args.chunk_batches:
            run = one_run(
                args.weights,
                card["classes"],
                card["imgsz"],
                folder,
                images,
                args.batch,
                n,
                args.forward_ms,
                f"chunk{n}-r{repeat}",
            )
            print(f"chunk of {n} batch(es): {run}", flush=True)
            runs[n].append(run)
    result = {
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()}), "
        f"the network's answer replayed after {args.forward_ms} ms a batch (not a GPU)",
        "parts": args.parts,
        "batch": args.batch,
        "what": "one process end to end (read, hash, decode, letterbox, NMS, verdict, image "
        "store, database), parts/s by batches per chunk (transaction), alternating",
        "median_parts_per_s": {
            str(n): statistics.median(r["parts_per_s"] for r in found) for n, found in runs.items()
        },
        "runs": {str(n): found for n, found in runs.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_parts_per_s"]))


if __name__ == "__main__":
    main()
