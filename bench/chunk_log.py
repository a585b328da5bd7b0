"""The throughputs of a `bench/gpu_batch_cli.sh` CHUNKS log (batch_chunks_<kind>.txt), as JSON
beside it (.json): written after every run of the comparison, so that a call cut short by its
time limit still brings back what it measured.

    python bench/chunk_log.py bench/results/batch_chunks_gpu.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def main() -> None:
    log = Path(sys.argv[1])
    lines = log.read_text().splitlines()
    rates: dict[str, dict[str, list[float]]] = {}
    key = None
    for line in lines:
        if match := re.match(r"## chunk_batches (\d+), workers (\d+)", line):
            key = match.groups()
        elif key and (match := re.match(r"throughput ([\d.]+) parts/s", line)):
            rates.setdefault(key[0], {}).setdefault(key[1], []).append(float(match.group(1)))
    result = {
        "what": "defects batch throughput (parts/s) by DEFECTS_CHUNK_BATCHES, then by workers"
        " (1: one process), as printed by the command",
        "log": log.name,
        "parts_per_s": rates,
        "header": lines[0] if lines else "",
    }
    log.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
