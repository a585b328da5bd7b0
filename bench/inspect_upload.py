"""The Inspect page given a zip of many parts: seconds and peak memory of the page's run that
judges them, this checkout against another one (an earlier commit, `git worktree add`),
alternating, each in a fresh process with a fresh database and the demo model.

    git worktree add /tmp/before <commit>
    python bench/inspect_upload.py --before /tmp/before --parts 5000

The zip holds PARTS unique copies of the NEU-DET images (each with its index appended, so
that every part is judged). The page runs through Streamlit's AppTest, which holds the upload
as the server does. Writes bench/results/inspect_upload_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from common import commit_of, measure_in_trees, write_timings

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "inspect_upload"

UPLOAD = """
import json, resource, sys, time
from pathlib import Path
from streamlit.testing.v1 import AppTest
archive = Path(sys.argv[1])
app = str(Path.cwd() / "dashboard" / "app.py")  # (a relative one is the caller's)
at = AppTest.from_file(app, default_timeout=3600).run()
before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
upload = (archive.name, archive.read_bytes(), "application/zip")
began = time.perf_counter()
at.file_uploader(key="inspect_files").set_value(upload).run()
seconds = time.perf_counter() - began
assert not at.exception, at.exception
parts = {m.label: m.value for m in at.metric}["Parts"]
print(json.dumps({"s": seconds, "parts": int(parts), "before_mb": before_mb,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_zip(images: list[Path], count: int, target: Path) -> None:
    """`count` unique parts (an image's bytes and its index), stored uncompressed as JPEGs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            source = images[i % len(images)]
            archive.writestr(f"lot/{i:05d}_{source.name}", source.read_bytes() + i.to_bytes(4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--parts", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "inspect_upload_cpu.json"
    )
    args = parser.parse_args()
    archive = WORK / f"lot-{args.parts}.zip"
    if not archive.exists():
        make_zip(sorted((args.neu / "images").glob("*.jpg")), args.parts, archive)
    trees = {"before": args.before.resolve(), "after": ROOT}
    runs = {name: 0 for name in trees}

    def fresh_data(name: str) -> list[str]:
        """A new data folder for each run, the demo model installed: every part is judged."""
        runs[name] += 1
        data = WORK / f"data-{name}-{runs[name]}"
        shutil.rmtree(data, ignore_errors=True)
        os.environ["DEFECTS_DATA_DIR"] = str(data)  # (measure_in_trees passes it on)
        subprocess.run(
            [sys.executable, "-m", "training.cli", "models", "install-demo"],
            cwd=trees[name],
            env={**os.environ, "PYTHONPATH": str(trees[name])},
            check=True,
            capture_output=True,
        )
        return [str(archive)]

    measured = measure_in_trees(trees, UPLOAD, fresh_data, args.repeats)
    seconds = {name: [round(m["s"], 2) for m in runs] for name, runs in measured.items()}
    peak_mb = {name: [round(m["peak_mb"]) for m in runs] for name, runs in measured.items()}
    grown_mb = {
        name: [round(m["peak_mb"] - m["before_mb"]) for m in runs]
        for name, runs in measured.items()
    }
    assert all(m["parts"] == args.parts for runs in measured.values() for m in runs)
    write_timings(
        args.out,
        f"seconds of the Inspect page's run that judges a zip upload of {args.parts} parts "
        f"({archive.stat().st_size / 1e6:.0f} MB), each in a fresh process and database, "
        "alternating; peak_mb: the process's peak resident memory; grown_mb: the peak less "
        "the peak before the upload (the app started, no model loaded)",
        seconds,
        peak_mb=peak_mb,
        grown_mb=grown_mb,
        zip_mb=round(archive.stat().st_size / 1e6, 1),
        commits={name: commit_of(tree) for name, tree in trees.items()},
    )


if __name__ == "__main__":
    main()
