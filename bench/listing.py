"""How long listing a large folder takes: `inspection.batch.folder_files` against the Path.rglob
listing it replaced (kept below, as it was), on the same folder, alternating, same result.

A batch run lists its folder before the first part is dealt (5.1 s for 100000 parts on the
GPU machine, bench/results/batch_cli_gpu.txt), and a hot folder is listed at every look.

    python bench/listing.py --files 100000 --out bench/results/listing_cpu.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import write_timings

from inspection.batch import folder_files


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def folder_files_before(folder: Path) -> list[Path]:
    """The listing as it was before bench/listing.py (Path.rglob, a stat per entry)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if (p.is_file() or (p.is_symlink() and not p.exists())) and not _is_hidden(p, folder)
    )


def make_folder(root: Path, files: int, per_folder: int) -> None:
    """`files` small files in sub-folders of `per_folder` (a camera's folder a shift, say), with
    a hidden folder and a hidden file that both listings leave out."""
    for index in range(files):
        folder = root / f"shift_{index // per_folder:04d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"part_{index:07d}.png").write_bytes(b"x")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "part.png").write_bytes(b"x")
    (root / ".listing.lock").write_bytes(b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--per-folder", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/listing_cpu.json"))
    args = parser.parse_args()
    timings: dict[str, list[float]] = {"before (Path.rglob)": [], "after (os.scandir)": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "parts"
        make_folder(root, args.files, args.per_folder)
        listings = {"before (Path.rglob)": folder_files_before, "after (os.scandir)": folder_files}
        for _ in range(args.rounds):
            results = []
            for name, listing in listings.items():
                began = time.perf_counter()
                results.append(listing(root))
                timings[name].append(round(time.perf_counter() - began, 3))
            if results[0] != results[1] or len(results[0]) != args.files:
                raise SystemExit("the two listings differ")
    write_timings(
        args.out,
        "seconds to list a folder of small files (every file a part), medians of alternating"
        " rounds; the same sorted list from both",
        timings,
        files=args.files,
        files_per_sub_folder=args.per_folder,
        rounds=args.rounds,
    )


if __name__ == "__main__":
    main()
