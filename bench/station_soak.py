"""A station left running: `defects batch HOT --watch` fed by a camera for a long while, its
process watched for what grows with the parts it judges (memory, file descriptors, threads,
database connections, SQLite's write-ahead log, temporary files, CPU time per part).

A camera thread drops unique 200x200 grey PNG frames into the hot folder at a steady rate (every
BLANK_EVERY-th a blank frame, every CORRUPT_EVERY-th a corrupt file, every HIDDEN_EVERY-th written
under a hidden name and renamed, as a slow camera should); the frames stay in the folder, so the
watch's every look covers all the files judged so far. The station runs in its own process (its
own data folder, the demo model, under `nice`), stopped at the end with SIGTERM as a service
manager stops it. Every SAMPLE seconds the station's processes are read from /proc; every
LIVE_EVERY samples the dashboard's Live page is rendered through Streamlit's AppTest and timed.

    python bench/station_soak.py --minutes 30 --rate 3 --out bench/results/station_soak_cpu.json
    python bench/station_soak.py --minutes 8 --rate 3 --workers 2 --label workers-2 \
        --out bench/results/station_soak_cpu.json   (adds its runs to the same file)
    python bench/station_soak.py --minutes 8 --rate 5 --move-judged --label moved \
        --out bench/results/station_soak_moved_cpu.json

With --move-judged the station moves each frame out of the hot folder once it is recorded
(`defects batch HOT --watch --move-judged DIR`), as a station should; each sample then also
counts the files left in the hot folder and those moved.

Each run gets a fresh work folder under bench/.work/station_soak/ (removed at the end unless
--keep). The slopes are least-squares lines through the samples after the first WARM_UP
samples, per 1000 parts recorded; the second-half slopes through the later half of the samples
only. A cache of bounded size (SQLite's page cache, a connection's prepared statements) fills
over the first thousands of parts, and a line drawn through its filling reads as growth that
never ends: what a station keeps per part for good is the second half's slope.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "station_soak"


def frame_png(index: int, kind: str) -> bytes:
    """One camera frame of `kind` ("part", "blank" or "corrupt"), unique to `index` unless
    blank (a blank frame's grey level cycles through a few values)."""
    import numpy as np
    from PIL import Image

    if kind == "corrupt":
        if index % 3:  # bytes that are no image (a third: a PNG cut short)
            return b"not a frame " + np.random.default_rng(index).bytes(400)
        whole = frame_png(index, "part")
        return whole[: len(whole) // 2]  # a PNG cut short
    if kind == "blank":
        pixels = np.full((200, 200), 20 + index % 7 * 30, dtype=np.uint8)
    else:
        rng = np.random.default_rng(index)
        pixels = rng.normal(128, 12, (200, 200)).clip(0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(0, 3))):  # a few dark scratches, some parts
            x, y = rng.integers(10, 170, 2)
            pixels[y : y + int(rng.integers(2, 6)), x : x + int(rng.integers(10, 30))] = 40
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


class Camera(threading.Thread):
    """Drops frames into `folder` at `rate` a second until stopped; counts what it wrote."""

    def __init__(
        self, folder: Path, rate: float, blank_every: int, corrupt_every: int, hidden_every: int
    ) -> None:
        super().__init__(name="camera", daemon=True)
        self.folder, self.rate = folder, rate
        self.blank_every, self.corrupt_every = blank_every, corrupt_every
        self.hidden_every = hidden_every
        self.stop = threading.Event()
        self.written = {"part": 0, "blank": 0, "corrupt": 0, "hidden then renamed": 0}
        self.index = 0

    def kind(self, index: int) -> str:
        if index % self.corrupt_every == self.corrupt_every - 2:
            return "corrupt"
        if index % self.blank_every == self.blank_every - 1:
            return "blank"
        return "part"

    def run(self) -> None:
        began = time.monotonic()
        while not self.stop.is_set():
            index = self.index
            kind = self.kind(index)
            data = frame_png(index, kind)
            name = f"frame-{index:07d}.png"
            if index % self.hidden_every == 0:
                hidden = self.folder / f".{name}"
                with open(hidden, "wb") as f:  # written in two halves, a pause between
                    f.write(data[: len(data) // 2])
                    f.flush()
                    time.sleep(0.3)
                    f.write(data[len(data) // 2 :])
                os.rename(hidden, self.folder / name)
                self.written["hidden then renamed"] += 1
            else:
                (self.folder / name).write_bytes(data)
            self.written[kind] += 1
            self.index += 1
            self.stop.wait(max(0.0, began + self.index / self.rate - time.monotonic()))


def tree_of(pid: int) -> list[int]:
    """`pid` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def process_figures(pid: int, database: Path) -> dict[str, Any] | None:
    """RSS, descriptors (and those on the database), threads and CPU seconds of one process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "pid": pid,
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(targets),
        "database_fds": sum(t.startswith(str(database)) for t in targets),
        "threads": int(fields["Threads"]),
        "cpu_s": round((int(stat[11]) + int(stat[12])) / ticks, 2),
    }


def recorded(database: Path) -> dict[str, int]:
    """Inspections recorded so far, by verdict (read-only, a connection of its own)."""
    if not database.exists():
        return {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        return dict(connection.execute("SELECT verdict, COUNT(*) FROM inspections GROUP BY 1"))


def live_page_seconds() -> float:
    """The Live page rendered through AppTest, as a browser's first visit: seconds."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=300).run()
    began = time.perf_counter()
    at.switch_page("views/live.py").run()
    seconds = time.perf_counter() - began
    if at.exception or not at.dataframe:
        raise SystemExit(f"the Live page failed: {at.exception or 'no station table'}")
    return round(seconds, 3)


def slope_per_1000(samples: list[dict[str, Any]], key: str, skip: int) -> float | None:
    """Least-squares slope of `key` against parts recorded, per 1000 parts."""
    points = [(s["parts_recorded"], s[key]) for s in samples[skip:]]
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread:
        return None
    return round(1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread, 4)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from common import commit_of

    work = WORK / args.label
    shutil.rmtree(work, ignore_errors=True)
    hot, data, tmp = work / "hot", work / "data", work / "tmp"
    judged = work / "judged"  # (--move-judged: made by the station)
    for folder in (hot, data, tmp):
        folder.mkdir(parents=True)
    database = data / "defects.db"
    env = {
        **os.environ,
        "DEFECTS_DATA_DIR": str(data),
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp),  # the station's temporary files, counted
    }
    env.pop("DEFECTS_DATABASE_URL", None)
    cli = [sys.executable, "-m", "training.cli"]
    subprocess.run([*cli, "models", "install-demo"], env=env, cwd=ROOT, check=True)
    command = [*cli, "batch", str(hot), "--line", "Soak line", "--station", "Station 1"]
    command += ["--watch", "--workers", str(args.workers)] if args.workers > 1 else ["--watch"]
    if args.move_judged:
        command += ["--move-judged", str(judged)]
    log = (work / "station.log").open("w")
    station = subprocess.Popen(
        ["nice", "-n", str(args.nice), *command],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    camera = Camera(hot, args.rate, args.blank_every, args.corrupt_every, args.hidden_every)
    # The dashboard in this process reads the station's database.
    os.environ["DEFECTS_DATA_DIR"] = str(data)
    samples: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        while "watching" not in (work / "station.log").read_text():  # the model loaded
            time.sleep(0.5)
            if station.poll() is not None:
                raise SystemExit(f"the station exited: {(work / 'station.log').read_text()}")
        time.sleep(args.start_wait)  # (the workers ready)
        if args.live_every:
            live_page_seconds()  # (the dashboard's imports, once: not in the first figure)
        camera.start()
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < args.minutes * 60:
            if station.poll() is not None:
                raise SystemExit(f"the station exited: {(work / 'station.log').read_text()}")
            # (`nice` execs into the station: its pid is the station's.)
            processes = [
                figures
                for pid in tree_of(station.pid)
                if (figures := process_figures(pid, database)) is not None
            ]
            counts = recorded(database)
            wal = database.with_name(database.name + "-wal")
            sample = {
                "t_s": round(elapsed, 1),
                "frames_written": camera.index,
                "parts_recorded": sum(counts.values()),
                "verdicts": counts,
                "rss_mb": round(sum(p["rss_mb"] for p in processes), 1),
                "fds": sum(p["fds"] for p in processes),
                "database_fds": sum(p["database_fds"] for p in processes),
                "threads": sum(p["threads"] for p in processes),
                "cpu_s": round(sum(p["cpu_s"] for p in processes), 2),
                "wal_kb": round(wal.stat().st_size / 1024, 1) if wal.exists() else 0.0,
                "database_kb": round(database.stat().st_size / 1024, 1),
                "temp_files": sum(len(files) for _, _, files in os.walk(tmp)),
                "files_in_hot_folder": sum(len(files) for _, _, files in os.walk(hot)),
                "files_moved": sum(len(files) for _, _, files in os.walk(judged)),
                "processes": processes,
            }
            if args.live_every and len(samples) % args.live_every == 0:
                sample["live_page_s"] = live_page_seconds()
            samples.append(sample)
            print(
                json.dumps({k: v for k, v in sample.items() if k not in ("processes", "verdicts")}),
                flush=True,
            )
            time.sleep(max(0.0, args.sample_seconds - (time.monotonic() - began - elapsed)))
    finally:
        camera.stop.set()
        camera.join()
        settle_until = time.monotonic() + 20  # the last frames judged
        while time.monotonic() < settle_until and station.poll() is None:
            if sum(recorded(database).values()) >= camera.index:
                break
            time.sleep(1)
        final = recorded(database)
        station.send_signal(signal.SIGTERM)  # as a service manager stops it
        try:
            exit_code = station.wait(timeout=120)
        except subprocess.TimeoutExpired:
            station.kill()
            exit_code = station.wait()
        log.close()
    lines = (work / "station.log").read_text().splitlines()
    for i, sample in enumerate(samples[1:], 1):  # CPU seconds per part between samples
        parts = sample["parts_recorded"] - samples[i - 1]["parts_recorded"]
        cpu = sample["cpu_s"] - samples[i - 1]["cpu_s"]
        sample["cpu_ms_per_part"] = round(1000 * cpu / parts, 2) if parts else None
    keys = (
        "rss_mb",
        "fds",
        "database_fds",
        "threads",
        "wal_kb",
        "temp_files",
        "files_in_hot_folder",
    )
    per_part = [s for s in samples[1 + args.warm_up :] if s.get("cpu_ms_per_part") is not None]
    result = {
        "label": args.label,
        "commit": commit_of(ROOT),
        "workers": args.workers,
        "minutes": args.minutes,
        "rate_frames_per_s": args.rate,
        "nice": args.nice,
        "move_judged": args.move_judged,
        "frames_written": dict(camera.written, total=camera.index),
        "inspections_recorded_at_end": dict(final, total=sum(final.values())),
        "station_exit_code": exit_code,
        "station_log_tail": lines[-12:],
        "first_sample": {k: samples[0][k] for k in ("t_s", "parts_recorded", *keys)},
        "last_sample": {k: samples[-1][k] for k in ("t_s", "parts_recorded", *keys)},
        "slope_per_1000_parts": {k: slope_per_1000(samples, k, args.warm_up) for k in keys},
        "second_half_slope_per_1000_parts": {
            k: slope_per_1000(samples, k, max(args.warm_up, len(samples) // 2)) for k in keys
        },
        "cpu_ms_per_part_slope_per_1000_parts": slope_per_1000(
            [{**s, "cpu": s["cpu_ms_per_part"]} for s in per_part], "cpu", 0
        )
        if per_part
        else None,
        "live_page_s": [
            (s["parts_recorded"], s["live_page_s"]) for s in samples if "live_page_s" in s
        ],
        "samples": samples,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def look_cost(files: int, looks: int) -> dict[str, Any]:
    """One look of the watch at a flat camera folder of `files` judged frames, written to
    since the last look (so listed again): its listing and every file's size and time, as
    `hot_folder_batches` does; seconds, medians of `looks`, and the watch's memory per file."""
    import statistics
    import tempfile
    import tracemalloc

    from inspection.batch import FolderListing, file_key

    with tempfile.TemporaryDirectory(dir=WORK.parent if WORK.parent.exists() else None) as tmp:
        folder = Path(tmp)
        for index in range(files):
            (folder / f"frame-{index:07d}.png").write_bytes(b"a judged frame")
        listing = FolderListing(folder)
        seconds = []
        for look in range(looks + 1):
            (folder / f".incoming-{look}").write_bytes(b"")  # the camera at work
            began = time.perf_counter()
            present = {file_key(path) for _, path in listing.files()}
            if look:  # (the first look reads the folder for the first time)
                seconds.append(time.perf_counter() - began)
        tracemalloc.start()
        held = FolderListing(folder)
        handled = {file_key(path) for _, path in held.files()}
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(present) == len(handled) == files
    median = statistics.median(seconds)
    return {
        "files": files,
        "look_s": [round(x, 4) for x in seconds],
        "median_look_s": round(median, 4),
        "us_per_file": round(1e6 * median / files, 2),
        "bytes_held_per_file": round(memory / files),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=3.0, help="frames a second")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--live-every", type=int, default=5, help="samples; 0: never")
    parser.add_argument("--warm-up", type=int, default=2, help="samples left out of the slopes")
    parser.add_argument("--blank-every", type=int, default=25)
    parser.add_argument("--corrupt-every", type=int, default=40)
    parser.add_argument("--hidden-every", type=int, default=10)
    parser.add_argument("--nice", type=int, default=15)
    parser.add_argument("--start-wait", type=float, default=3.0)
    parser.add_argument("--label", default="one-process")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--move-judged",
        action="store_true",
        help="the station moves each frame out of the hot folder once recorded",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "station_soak_cpu.json"
    )
    parser.add_argument(
        "--look-cost",
        type=int,
        nargs="+",
        metavar="FILES",
        help="instead of a soak: one look of the watch at a flat folder of FILES judged frames",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from common import commit_of, hardware

    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs", [])
    looks = previous.get("hot_folder_look", [])
    if args.look_cost:
        WORK.mkdir(parents=True, exist_ok=True)
        looks = [look_cost(files, looks=5) for files in args.look_cost]
        print(json.dumps(looks))
    else:
        run = soak(args)
        runs = [*(r for r in runs if r.get("label") != args.label), run]
        print(json.dumps({k: run[k] for k in ("first_sample", "last_sample")}))
        print(json.dumps(run["slope_per_1000_parts"]))
        print(json.dumps(run["second_half_slope_per_1000_parts"]))
    result = {
        "what": "a `defects batch --watch` station fed frames at a steady rate for a long while:"
        " what its processes hold as parts accumulate (RSS, descriptors, threads, database"
        " connections, the SQLite log, temporary files, CPU per part), sampled from /proc, and"
        " the Live page's render time under AppTest",
        "hardware": hardware(),
        "cores": len(os.sched_getaffinity(0)),
        "commit": commit_of(ROOT),
        "runs": runs,
        "hot_folder_look": looks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
