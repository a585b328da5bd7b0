"""`defects batch` while its PostgreSQL server is stopped and started again: the run waits
(DEFECTS_DB_OUTAGE_SECONDS) and finishes, every part written once.

A throwaway PostgreSQL cluster of its own on --port (initdb from --pg-bin; as root, run as the
postgres user), --parts copies of the NEU-DET test images, the demo model; the server is
stopped --down-after seconds into the run, for --down-for seconds.

    python bench/db_outage.py --pg-bin /usr/lib/postgresql/15/bin --parts 1500

Writes bench/results/db_outage_cpu.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFECTS = "import sys; from training.cli import main; sys.argv[0] = 'defects'; main()"


def _default_pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"))  # Debian's layout
    return Path(versions[-1]) if versions else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-bin", type=Path, default=_default_pg_bin())
    parser.add_argument("--neu", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--parts", type=int, default=1500)
    parser.add_argument("--port", type=int, default=55433)
    parser.add_argument("--down-after", type=float, default=8.0)
    parser.add_argument("--down-for", type=float, default=8.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "db_outage_cpu.json"
    )
    args = parser.parse_args()
    if args.pg_bin is None:
        raise SystemExit("no PostgreSQL found: pass --pg-bin (the folder of initdb and pg_ctl)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cluster, sockets = work / "cluster", work / "sockets"
        sockets.mkdir()
        if as_postgres:
            shutil.chown(work, "postgres")
            shutil.chown(sockets, "postgres")

        def pg(*argv: str) -> None:
            subprocess.run([*as_postgres, *argv], check=True, capture_output=True)

        def server(action: str) -> None:
            options = f"-p {args.port} -k {sockets}"
            pg(
                str(args.pg_bin / "pg_ctl"),
                "-D",
                str(cluster),
                "-o",
                options,
                "-w",
                "-m",
                "fast",
                "-l",
                str(work / "server.log"),
                action,
            )

        pg(str(args.pg_bin / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(cluster))
        server("start")
        try:
            pg(
                str(args.pg_bin / "createdb"),
                "-h",
                str(sockets),
                "-p",
                str(args.port),
                "-U",
                "postgres",
                "outage",
            )
            url = f"postgresql+psycopg://postgres@127.0.0.1:{args.port}/outage"
            env = {
                **os.environ,
                "DEFECTS_DATABASE_URL": url,
                "DEFECTS_DATA_DIR": str(work / "data"),
            }
            for command in (["db", "upgrade"], ["models", "install-demo"]):
                subprocess.run(
                    [sys.executable, "-c", DEFECTS, *command],
                    env=env,
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
            sys.path.insert(0, str(ROOT / "bench"))
            from inference import make_parts  # the benchmark's unique copies of the test images

            names = (args.neu / "splits" / "test.txt").read_text().split()
            make_parts([args.neu / "images" / name for name in names], args.parts, work / "parts")
            began = time.perf_counter()
            batch = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    DEFECTS,
                    "batch",
                    str(work / "parts"),
                    "--line",
                    "L",
                    "--station",
                    "S",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(args.down_after)
            server("stop")
            stopped_at = time.perf_counter() - began
            time.sleep(args.down_for)
            server("start")
            restarted_at = time.perf_counter() - began
            stdout, stderr = batch.communicate(timeout=900)
            seconds = time.perf_counter() - began

            from sqlalchemy import create_engine, text

            engine = create_engine(url)
            with engine.connect() as connection:
                inspections, distinct = connection.execute(
                    text("select count(*), count(distinct part_id) from inspections")
                ).one()
                parts = connection.execute(text("select count(*) from parts")).scalar_one()
            engine.dispose()
        finally:
            server("stop")

    result = {
        "what": "defects batch with its PostgreSQL server stopped mid-run and started again",
        "parts_in_folder": args.parts,
        "server_stopped_at_s": round(stopped_at, 1),
        "server_started_again_at_s": round(restarted_at, 1),
        "command_seconds": round(seconds, 1),
        "exit_code": batch.returncode,
        "tries_again_logged": stderr.count("trying again"),
        "parts_written": parts,
        "inspections_written": inspections,
        "parts_with_an_inspection": distinct,
        "summary": [
            line for line in stdout.splitlines() if line.startswith(("run ", "throughput"))
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("exit_code", "parts_written", "inspections_written")}))
    if batch.returncode != 0 or inspections != args.parts or distinct != args.parts:
        raise SystemExit(f"the run did not ride out the outage: {stderr[-2000:]}")


if __name__ == "__main__":
    main()
