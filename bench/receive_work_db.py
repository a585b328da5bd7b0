"""Model versions trained on a lent GPU, in a copy of a bench's work database, made ours again.

The device unpacked the work folder elsewhere and the product stored resolved paths, so each
model version whose file lies outside the local work folder is pointed at the same place inside
it, and its registered weights are restored from its run's best weights (which they are a copy of).
Usage: python bench/receive_work_db.py WORK_FOLDER (called by gpu_session.sh receive-pcb-detector).
"""

import json
import shutil
import sqlite3
import sys
from pathlib import Path


def relink(work: Path) -> None:
    marker = f"/{work.name}/"
    db = sqlite3.connect(work / "defects.db")
    rows = db.execute("SELECT id, file_path, metrics FROM model_versions").fetchall()
    for version_id, file_path, metrics_json in rows:
        if file_path.startswith(str(work)):
            continue
        local = work / file_path.split(marker, 1)[1]
        metrics = json.loads(metrics_json)
        if "run_dir" in metrics:
            metrics["run_dir"] = str(work / metrics["run_dir"].split(marker, 1)[1])
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(metrics["run_dir"]) / "weights" / "best.pt", local)
        if not local.is_file():  # a version whose weights did not come back (no run of ours)
            print(f"model version {version_id}: {local} is missing; copy its weights there")
        db.execute(
            "UPDATE model_versions SET file_path = ?, metrics = ? WHERE id = ?",
            (str(local), json.dumps(metrics), version_id),
        )
        print("received model version", version_id, "->", local)
    db.commit()
    db.close()


if __name__ == "__main__":
    relink(Path(sys.argv[1]).resolve())
