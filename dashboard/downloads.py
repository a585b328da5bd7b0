"""Files the pages offer for download, built when the button is pressed, not at every render."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from db.queries import Filters, inspection_rows
from db.session import session_scope


def filtered_results_csv(url: str, filters: Filters) -> bytes:
    """The History page's download: every verdict the filters select, superseded ones too
    (marked), as the record of the line. A month of a busy line is tens of thousands of rows
    (1.1 s for 82000 in SQLite, bench/results/history_scale_sqlite.json): too slow to build at
    every change of a filter, so the page hands this over as the button's data."""
    with session_scope(url) as session:
        rows = inspection_rows(session, replace(filters, include_superseded=True))
    return pd.DataFrame(rows).to_csv(index=False).encode()
