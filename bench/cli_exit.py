"""What ending a `defects` command without the interpreter's teardown saves, per command.

The same command, alternating, REPEATS times: through `main()` (which ends the process with
os._exit once the command is done) and through the typer app itself (which ends by SystemExit:
the interpreter's full teardown, torch's included). Wall time of the whole process each.

    python bench/cli_exit.py --repeats 5

Writes bench/results/cli_exit_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import time_processes

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "os_exit (main)": "from training.cli import main; main()",
    "teardown (app)": "from training.cli import app; app()",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--command", nargs="+", default=["status"])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cli_exit_cpu.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "DEFECTS_DATA_DIR": data}
        subprocess.run(
            [sys.executable, "-c", WAYS["os_exit (main)"], "db", "upgrade"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        seconds = time_processes(
            {
                way: ([sys.executable, "-c", code, *args.command], ROOT, env)
                for way, code in WAYS.items()
            },
            args.repeats,
        )
    result = {
        "hardware": f"CPU, {len(os.sched_getaffinity(0))} cores ({platform.machine()})",
        "command": "defects " + " ".join(args.command),
        "what": "wall time of the whole process, the same command ended two ways, alternating",
        "median_s": {way: statistics.median(found) for way, found in seconds.items()},
        "runs_s": seconds,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_s"]))


if __name__ == "__main__":
    main()
