"""`defects batch` over a folder of parts, this checkout against another one (an earlier commit,
checked out with `git worktree add`), alternating, each run in a fresh process with a fresh
database and the demo model (ONNX Runtime on the CPU): did the station's hot path get slower?

    git worktree add /tmp/before <commit>
    python bench/batch_compare.py --before /tmp/before --parts 2000 --workers 1 2

The folder holds PARTS copies of the 180 NEU-DET test images, each made unique by one pixel
changed (so that every part is judged, none is "already inspected"), written once and reused.
Each round runs the ways in turn, the order reversed every other round (before, after, after,
before, ...). Times the whole command (interpreter start included) and keeps the throughput
the summary prints. Writes bench/results/batch_compare_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import commit_of, hardware, write_timings

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "batch_compare"
COMMAND = "import sys; from training.cli import main; sys.argv[0] = 'defects'; main()"
RATE = re.compile(r"throughput ([0-9.]+) parts/s")
INSPECTED = re.compile(r"([0-9]+) parts inspected")


def make_folder(neu: Path, count: int, target: Path) -> None:
    """`count` unique JPEG parts from NEU-DET's test split: part i is test image i mod 180
    with the pixel at (i // 180, 0) changed, so no two parts have the same bytes."""
    from PIL import Image

    names = (neu / "splits" / "test.txt").read_text().split()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for i in range(count):
        name = names[i % len(names)]
        with Image.open(neu / "images" / name) as image:
            image = image.convert("L")
            x, y = i // len(names), 0
            image.putpixel((x, y), (image.getpixel((x, y)) + 128) % 256)
            image.save(partial / f"{i:05d}_{name}", quality=95)
    partial.rename(target)


def run_batch(tree: Path, data: Path, folder: Path, workers: int, parts: int) -> dict:
    """One `defects batch` in `tree` with a fresh data folder (demo model installed, untimed):
    the command's wall seconds and the throughput its summary prints."""
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "DEFECTS_DATA_DIR": str(data), "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, "-c", COMMAND, "models", "install-demo"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    argv = [sys.executable, "-c", COMMAND, "batch", str(folder), "--line", "L", "--station", "S"]
    argv += ["--backend", "onnx", "--device", "cpu"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit code {done.returncode}: {done.stderr[-2000:]}")
    rate = RATE.search(done.stdout)
    inspected = INSPECTED.search(done.stdout)
    if inspected is None or int(inspected.group(1)) != parts:  # every part judged, none skipped
        raise SystemExit(f"{tree}: not {parts} parts inspected: {done.stdout[-2000:]}")
    shutil.rmtree(data, ignore_errors=True)
    return {"s": round(seconds, 2), "parts_per_s": float(rate.group(1)) if rate else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--parts", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument(
        "--work", type=Path, default=WORK, help="where the parts and the data folders go"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "batch_compare_cpu.json"
    )
    args = parser.parse_args()
    folder = args.work / f"parts-{args.parts}"
    if not folder.exists():
        make_folder(args.neu, args.parts, folder)
    trees = {"before": args.before.resolve(), "after": ROOT}
    seconds: dict[str, list[float]] = {}
    rates: dict[str, list[float | None]] = {}
    for workers in args.workers:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for name in order:
                way = f"{name}, workers {workers}"
                got = run_batch(
                    trees[name], args.work / f"data-{name}", folder, workers, args.parts
                )
                print(way, got, flush=True)
                seconds.setdefault(way, []).append(got["s"])
                rates.setdefault(way, []).append(got["parts_per_s"])
    spread = {way: [min(v), max(v)] for way, v in seconds.items()}
    write_timings(
        args.out,
        f"wall seconds of `defects batch FOLDER --line L --station S --backend onnx --device cpu`"
        f" (and --workers N) over {args.parts} unique parts (NEU-DET test images, one pixel "
        "changed each), each run in a fresh process with a fresh database and the demo model, "
        "rounds alternating before/after in turn; parts_per_s: the throughput the summary "
        "printed",
        seconds,
        parts_per_s=rates,
        spread_s=spread,
        hardware=hardware(),
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()
