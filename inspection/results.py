"""Each part's verdict as a line of JSON once it is recorded (`defects batch --results FILE`):
what a line's reject gate, PLC bridge or MES reads, one part at a time, without querying the
database. The database stays the record; this is the feed.

One object per line, appended and flushed as each chunk of parts is committed to the database,
never before: a line always stands for a verdict the database holds (written before, a crash or
a database gone between the two left a line for a verdict never kept, and the part, judged
again, a second line). A reader following the file (`tail -F`, a named pipe) sees it at once.

Every file a run reads gets one line, except a part an earlier run recorded that was in the
source as the run began (a batch or a watch started again: its line was written by the run that
judged it). A file whose part was recorded before it (a copy, a frame a watch takes whose bytes
an earlier one had, a part another station recorded a moment before, a file `--move-judged`
moves after a stop) gets the verdict on record, with `"repeat": true`: the line controller
waiting on that file hears of it.

`judged_at` is this station's clock when the line is written: the clock its line controller
shares, by which it matches a line to the part in front of the camera. The database stamps its
record by its own clock (`database_utcnow`), which may differ.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from inspection.engine import PartResult
from inspection.errors import UserError


class _Found(Protocol):
    """A detection as the engine gives it or as the database keeps it (a Prediction)."""

    class_name: str
    confidence: float
    x1: float | None
    y1: float | None
    x2: float | None
    y2: float | None
    counted: bool


def counted_defects(found: Iterable[_Found]) -> list[dict[str, Any]]:
    """The detections that fail a part, as `defects inspect --json` and the results feed
    write them alike."""
    return [
        {
            "class": d.class_name,
            "confidence": round(d.confidence, 4),
            "box": [round(v, 1) for v in (d.x1, d.y1, d.x2, d.y2) if v is not None],
        }
        for d in found
        if d.counted
    ]


def result_line(
    result: PartResult, line: str, station: str, run_id: int, repeat: bool = False
) -> dict[str, Any]:
    """A part's verdict as the feed writes it: the fields of `defects inspect --json`, with
    where and when it was judged, and whether it repeats a verdict recorded before."""
    failed = result.failed_classes
    return {
        "part": result.name,
        "sha256": result.content_hash,
        "verdict": result.verdict,
        "failed_classes": failed,
        # (A fail with no detection counted: the part classifier alone failed it.)
        "failed_by_part_classifier": result.verdict == "fail" and not failed,
        "defect_probability": result.defect_probability,
        "defects": counted_defects(result.detections),
        "latency_ms": None if result.latency_ms is None else round(result.latency_ms, 1),
        "error": result.error,
        "line": line,
        "station": station,
        "run": run_id,
        "repeat": repeat,
        "judged_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        # (Last: a tiled part a model fired all over keeps its most confident counted boxes;
        # how many more there were, null for a part judged whole.)
        "boxes_left_out": result.boxes_left_out,
    }


class ResultsFeed:
    """The JSON Lines file a batch appends each verdict to."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise UserError(f"--results {path} is a folder: give the file's name")
        try:
            # Line-buffered: each verdict reaches the file (or pipe) as it is written.
            self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise UserError(f"--results {path}: cannot open it: {exc.strerror or exc}") from exc
        self.path = path

    def write(
        self, result: PartResult, line: str, station: str, run_id: int, repeat: bool = False
    ) -> None:
        text = json.dumps(result_line(result, line, station, run_id, repeat), ensure_ascii=False)
        try:
            self._file.write(text + "\n")
        except BrokenPipeError as exc:
            # (A named pipe whose reader stopped: "free space there" sent its operator to a
            # disk that was not full.)
            raise UserError(
                f"cannot write the results feed {self.path}: its reader closed the pipe; the "
                "verdicts so far are recorded in the database, and those the reader had not "
                "read are not sent again: start the reader and run the same command again to "
                "resume"
            ) from exc
        except OSError as exc:
            raise UserError(
                f"cannot write the results feed {self.path}: {exc.strerror or exc}; the verdicts "
                "so far are recorded in the database: free space there and run the same command "
                "again to resume"
            ) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):  # (a full disk at the last flush was said by write)
            self._file.close()
