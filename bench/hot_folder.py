"""One look of `defects batch --watch` at a hot folder that holds many files already judged (a
camera's folder late in a shift): what it costs to find that nothing is new.

Three ways, alternating, on the same folder: the listing of the session's start (Path.rglob,
from bench/listing.py), the os.scandir listing read in full at each look, and the
`FolderListing` the hot folder now keeps (sub-folders read again only when they changed).
Each look also checks every file's size and time, as the hot folder does.

    python bench/hot_folder.py --files 100000 --out bench/results/hot_folder_cpu.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import write_timings
from listing import folder_files_before, make_folder

from inspection.batch import FolderListing, file_key, folder_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--per-folder", type=int, default=10000)
    parser.add_argument("--looks", type=int, default=5, help="looks timed of each way, alternating")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hot_folder_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "parts"
        make_folder(root, args.files, args.per_folder)
        handled = {key for key in map(file_key, folder_files(root)) if key is not None}
        os.utime(root, (time.time() - 60, time.time() - 60))  # a shift's folders, quiet now
        for sub in root.iterdir():
            os.utime(sub, (time.time() - 60, time.time() - 60))
        kept = FolderListing(root)
        kept.files()  # the hot folder's first look, before the timed ones
        ways: dict[str, Callable[[], list[str]]] = {
            "Path.rglob, in full": lambda: [str(p) for p in folder_files_before(root)],
            "os.scandir, in full": lambda: [str(p) for p in folder_files(root)],
            "os.scandir, changed folders only": lambda: [path for _, path in kept.files()],
        }
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.looks):
            for name, listed in ways.items():
                began = time.perf_counter()
                paths = listed()
                new = [p for p in paths if file_key(p) not in handled]
                seconds[name].append(round(time.perf_counter() - began, 3))
                if new or len(paths) != args.files:
                    raise SystemExit(f"{name}: {len(paths)} files, {len(new)} new")
    write_timings(
        args.out,
        "seconds of one hot-folder look that finds nothing new (listing, then every file's size"
        " and time), medians of alternating looks",
        seconds,
        files=args.files,
        files_per_sub_folder=args.per_folder,
    )


if __name__ == "__main__":
    main()
