"""How fast one dealer feeds the workers of `defects batch --workers N`, by parts per message.

The dealer is one process for any number of workers: it reads, hashes and sends every part,
and takes every result back. Its cost per part bounds what the workers can reach together
(on an H100 with 16 cores, 8 workers skipped 40000 judged parts at about 3300 parts/s,
bench/results/batch_cli_gpu.txt). Measured here on a run whose parts are all judged already
(the workers only look them up), so the dealing is what is timed, side by side for each
message size, alternating, each REPEATS times:

    python bench/dealing.py --parts 3000 --workers 2 --deal-batches 1 16

Writes bench/results/dealing_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import inference  # noqa: E402 - sets up the bench's own data folder before the product loads

from inspection import parallel  # noqa: E402
from inspection.batch import iter_source  # noqa: E402
from inspection.settings import get_settings, usable_cores  # noqa: E402


def skip_run(
    url: str, folder: Path, workers: int, model: str, deal_batch: int, device: str
) -> dict:
    parallel.DEAL_BATCH = deal_batch  # read by the dealer (this process) only
    job = parallel.ParallelInspection(
        url, get_settings().images_dir, "bench", "bench", workers, model, device=device
    )
    dealer_cpu = time.process_time()
    summary = job.run(iter_source(str(folder)))
    dealer_cpu = time.process_time() - dealer_cpu
    assert summary.inspected == 0 and summary.skipped == summary.seen, summary
    return {
        "parts": summary.seen,
        "seconds_from_first_worker_ready": round(summary.seconds, 3),
        "parts_per_s": round(summary.seen / summary.seconds, 1),
        "dealer_cpu_ms_per_part": round(dealer_cpu / summary.seen * 1000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    inference.add_demo_arguments(parser, parts=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deal-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    _, folder, card = inference.prepare_demo_parts(args)
    url = inference.register_bench_version(args.weights, "dealing", card["classes"], card["imgsz"])
    # Judged once, so that every timed run only deals and looks up.
    first = parallel.ParallelInspection(
        url,
        get_settings().images_dir,
        "bench",
        "bench",
        args.workers,
        "dealing",
        device=args.device,
    ).run(iter_source(str(folder)))
    print(f"judged {first.inspected} parts first", flush=True)

    runs: dict[int, list[dict]] = {size: [] for size in args.deal_batches}
    for _ in range(args.repeats):
        for size in args.deal_batches:
            run = skip_run(url, folder, args.workers, "dealing", size, args.device)
            print(f"parts per message {size}: {run}", flush=True)
            runs[size].append(run)
    gpu = args.device.startswith("cuda")
    if gpu:
        import torch
    result = {
        "hardware": torch.cuda.get_device_name(0)
        if gpu
        else f"CPU, {len(usable_cores())} cores ({platform.machine()})",
        "parts": args.parts,
        "workers": args.workers,
        "what": "a run of parts all judged already: the dealer reads, hashes and deals each, "
        "the workers look them up; rate from the first worker ready to the end",
        "by_parts_per_message": {
            str(size): {
                "median_parts_per_s": statistics.median(r["parts_per_s"] for r in found),
                "median_dealer_cpu_ms_per_part": statistics.median(
                    r["dealer_cpu_ms_per_part"] for r in found
                ),
                "runs": found,
            }
            for size, found in runs.items()
        },
    }
    out = args.out or ROOT / "bench" / "results" / f"dealing_{'gpu' if gpu else 'cpu'}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
