"""How long `defects import deeppcb` takes over the whole of DeepPCB, each file synced to disk.

    python bench/import_deeppcb.py [--rounds 3] [--deeppcb ../shared/datasets/deeppcb]

Each round imports the dataset into a fresh data folder of this bench's own (the command a user
types, in a process of its own), and its wall seconds are written to
bench/results/import_deeppcb_cpu.json with the dataset's counts as the command printed them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "import_deeppcb"
sys.path.insert(0, str(ROOT / "bench"))

from common import hardware  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deeppcb", type=Path, default=ROOT.parent / "shared" / "datasets" / "deeppcb"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "import_deeppcb_cpu.json"
    )
    args = parser.parse_args()
    if not args.deeppcb.is_dir():
        parser.error(f"no DeepPCB at {args.deeppcb} (see its README for the layout)")
    seconds: list[float] = []
    printed = ""
    for round_ in range(args.rounds):
        shutil.rmtree(WORK, ignore_errors=True)
        env = {**os.environ, "DEFECTS_DATA_DIR": str(WORK), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "training.cli", "import", "deeppcb"]
        command += [str(args.deeppcb), "--name", "deeppcb"]
        subprocess.run([sys.executable, "-m", "training.cli", "db", "upgrade"], env=env, check=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        seconds.append(round(time.perf_counter() - started, 2))
        printed = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        print(f"round {round_ + 1}: {seconds[-1]} s", flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    args.out.write_text(
        json.dumps(
            {
                "what": "defects import deeppcb over the whole dataset, each round in a fresh "
                "data folder, the command's wall seconds (its interpreter's start included)",
                "hardware": hardware(),
                "wall_s": seconds,
                "first_line_printed": printed,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
