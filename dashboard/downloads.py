"""Files the pages offer for download, built when the button is pressed, not at every render."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd

from db.queries import INSPECTION_COLUMNS, Filters, inspection_count, inspection_rows
from db.session import session_scope
from inspection.batch import spreadsheet_text
from inspection.results import shown_latency
from inspection.tiling import station_grid


def _csv_cell(value: object) -> object:
    """A value as the CSV holds it: a stored (naive UTC) time as this server's local time with
    its offset, ISO 8601 (the zone the History page counts days in, stated in each cell); a
    text a spreadsheet would run as a formula behind a single quote, as OWASP advises (part
    names are the uploaded files', line, station, model and class names are people's words)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).astimezone().isoformat()
    if isinstance(value, str):
        return spreadsheet_text(value)
    return value


# Rows of one download. A month of a busy line holds
# millions; the page says when the filters select more (`rows_left_out_of_csv`).
CSV_ROW_LIMIT = 100_000


def rows_left_out_of_csv(url: str, filters: Filters, limit: int = CSV_ROW_LIMIT) -> int:
    """How many of the verdicts the filters select the download leaves out (the oldest): it
    held the newest 100000 without a word, and the record looked complete."""
    with session_scope(url) as session:
        total = inspection_count(session, replace(filters, include_superseded=True))
    return max(0, total - limit)


def filtered_results_csv(url: str, filters: Filters, limit: int = CSV_ROW_LIMIT) -> bytes:
    """The History page's download: every verdict the filters select, superseded ones too
    (marked), as the record of the line. A month of a busy line is tens of thousands of rows
    (1.1 s for 82000 in SQLite, bench/results/history_scale_sqlite.json): too slow to build at
    every change of a filter, so the page hands this over as the button's data."""
    with session_scope(url) as session:
        rows = inspection_rows(session, replace(filters, include_superseded=True), limit)
    for row in rows:  # (a verdict judged in tiles or whole, in words, as the Live page says it)
        row["grid"] = station_grid(row["grid"]) if row["verdict"] != "error" else ""
        # (To 0.1 ms, as `batch --export csv`, the results feed and `inspect --json` give it:
        # the stored float's every digit, 12.345678, read as a precision the clock lacks.)
        row["latency_ms"] = shown_latency(row["latency_ms"])
    table = pd.DataFrame(
        [[_csv_cell(row[name]) for name in INSPECTION_COLUMNS] for row in rows],
        columns=list(INSPECTION_COLUMNS),  # the header, also over no rows
    )
    # (A count, empty where none was recorded: pandas made the column float beside the gaps.)
    table["boxes_left_out"] = table["boxes_left_out"].astype("Int64")
    # Lines end in CRLF (RFC 4180): the csv writer then quotes a CR in a name too; a bare one
    # ended the row there, the rest of the name a row of its own (a formula, maybe).
    return table.to_csv(index=False, lineterminator="\r\n").encode()
