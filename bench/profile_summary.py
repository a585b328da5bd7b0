"""Where each process of a profiled run spent its samples: py-spy's raw output, summarised.

    py-spy record --subprocesses -f raw -o run.raw -- defects batch ... --workers 8
    python bench/profile_summary.py run.raw --out run.md

For each process (the dealer, each worker; py-spy's own helpers left out): its samples, the
frames it was in most (self), and the product's functions it was under most (inclusive).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

PRODUCT = ("inspection/", "db/", "training/")
TOP = 15


def summarise(raw: Path) -> str:
    samples: Counter[str] = Counter()
    self_time: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        if not processes or "resource_tracker" in processes[-1]:
            continue
        process = _name(processes[-1], is_dealer=len(processes) == 1)
        code = [f for f in frames if not f.startswith("process ") and f]
        if not code:
            continue
        n = int(count)
        samples[process] += n
        self_time[process][code[-1]] += n
        for frame in set(code):
            if any(part in frame for part in PRODUCT):
                inclusive[process][frame] += n
    lines = [f"# Samples by process ({raw.name})", ""]
    for process, total in sorted(samples.items()):
        lines += [f"## {process}: {total} samples", "", "| self | frame |", "| --- | --- |"]
        lines += [f"| {n / total:.1%} | `{f}` |" for f, n in self_time[process].most_common(TOP)]
        lines += ["", "| inclusive | product function |", "| --- | --- |"]
        lines += [f"| {n / total:.1%} | `{f}` |" for f, n in inclusive[process].most_common(TOP)]
        lines.append("")
    return "\n".join(lines)


def _name(process_frame: str, is_dealer: bool) -> str:
    pid = re.match(r"process (\d+)", process_frame)
    return ("dealer " if is_dealer else "worker ") + (pid.group(1) if pid else "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = summarise(args.raw)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
