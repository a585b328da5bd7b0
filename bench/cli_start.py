"""How long a `defects` command that needs no model takes, this checkout against another one
(an earlier commit, checked out with `git worktree add`), alternating, each in a fresh process
on the same fresh database.

    git worktree add /tmp/before <commit>
    python bench/cli_start.py --before /tmp/before --repeats 7

Writes bench/results/cli_start_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import commit_of, time_processes, write_timings

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "import sys; from training.cli import main; sys.argv[0] = 'defects'; main()"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--command", nargs="+", default=["status"])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cli_start_cpu.json"
    )
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "DEFECTS_DATA_DIR": data}
        for tree in trees.values():  # the database migrated once by each, before timing
            subprocess.run(
                [sys.executable, "-c", COMMAND, "db", "upgrade"],
                cwd=tree,
                env=env,
                check=True,
                capture_output=True,
            )
        seconds = time_processes(
            {
                name: (
                    [sys.executable, "-c", COMMAND, *args.command],
                    tree,
                    {**env, "PYTHONPATH": str(tree)},
                )
                for name, tree in trees.items()
            },
            args.repeats,
        )
    write_timings(
        args.out,
        f"wall seconds of `defects {' '.join(args.command)}` in a fresh process, alternating,"
        " medians",
        seconds,
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()
