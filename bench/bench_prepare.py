"""Time dataset preparation on the survey CSV, against a minimal script doing the same steps.

    python bench/bench_prepare.py                  # 55,621-row survey, timings only
    python bench/bench_prepare.py --big 1G         # also peak RSS of preparing a 1 GB CSV

The minimal script is the floor: csv module, one all-columns text per row,
json.dumps to a JSONL file, `tokenizers` encode_batch for an exact count, no
validation, split, stats or fallbacks. Both run in this process on the same
file, alternately, after a warm-up; the best of the runs is reported.
Targets: prepare() <= 3 s, and <= 1.5 x the minimal script.

The 1 GB run is a subprocess; its peak RSS comes from getrusage (ru_maxrss)
of that child alone. Target < 300 MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.make_survey_csv import SURVEY_ROWS, parse_size, write_survey_csv  # noqa: E402
from datasets_app.preparation import PrepareOptions, load_tokenizer, prepare  # noqa: E402


def minimal(path: Path, out_dir: Path) -> tuple[int, int]:
    """The same steps, done the shortest way: returns (samples, tokens)."""
    tokenizer = load_tokenizer()
    samples = tokens = 0
    batch: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as source, open(out_dir / "min.jsonl", "w") as out:
        reader = csv.reader(source)
        header = next(reader)
        for row in reader:
            text = "\n".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value)
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            batch.append(text)
            samples += 1
            if len(batch) == 2048:
                tokens += sum(len(e) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
                batch = []
        if batch:
            tokens += sum(len(e) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    return samples, tokens


def ours(path: Path, out_dir: Path) -> tuple[int, int]:
    with (
        open(path, "rb") as source,
        open(out_dir / "train.jsonl", "wb") as train,
        open(out_dir / "validation.jsonl", "wb") as validation,
    ):
        result = prepare(source, path.name, train, validation, PrepareOptions())
    return result.stats["samples"], result.stats["tokens"]


def timed(fn, *args) -> tuple[float, tuple[int, int]]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


BIG_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from datasets_app.preparation import PrepareOptions, prepare
started = time.perf_counter()
with open({path!r}, "rb") as source, open({train!r}, "wb") as train, open({validation!r}, "wb") as validation:
    result = prepare(source, "big.csv", train, validation, PrepareOptions())
print(json.dumps({{
    "seconds": round(time.perf_counter() - started, 1),
    "rows": result.stats["rows"],
    "tokens": result.stats["tokens"],
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}}))
"""


def big_run(size: int, work: Path) -> dict:
    path = work / "big.csv"
    written = write_survey_csv(path, SURVEY_ROWS, size)
    code = BIG_CHILD.format(
        root=str(ROOT),
        path=str(path),
        train=str(work / "big-train.jsonl"),
        validation=str(work / "big-val.jsonl"),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = json.loads(done.stdout)
    child["bytes"] = written
    child["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    for name in ("big.csv", "big-train.jsonl", "big-val.jsonl"):
        (work / name).unlink(missing_ok=True)
    return child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--big", type=parse_size, help="also prepare a CSV of this size in a subprocess (e.g. 1G)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        work = Path(tmp)
        path = work / "survey.csv"
        size = write_survey_csv(path)
        load_tokenizer()
        timed(ours, path, work)  # warm-up: imports, tokenizer, page cache
        mins, ourss = [], []
        for _ in range(args.runs):
            seconds, min_counts = timed(minimal, path, work)
            mins.append(seconds)
            seconds, our_counts = timed(ours, path, work)
            ourss.append(seconds)
        if min_counts != our_counts:
            print(f"MISMATCH: minimal {min_counts} vs prepare {our_counts}", file=sys.stderr)
            return 1
        figures = {
            "file_bytes": size,
            "rows": our_counts[0],
            "tokens": our_counts[1],
            "cpus": os.cpu_count(),
            "minimal_s": round(min(mins), 3),
            "prepare_s": round(min(ourss), 3),
            "ratio": round(min(ourss) / min(mins), 2),
        }
        if args.big:
            figures["big"] = big_run(args.big, work)

    if args.json:
        print(json.dumps(figures))
        return 0
    print(
        f"survey CSV: {figures['file_bytes']:,} bytes, {figures['rows']:,} rows, {figures['tokens']:,} tokens"
    )
    print(
        f"minimal script: {figures['minimal_s']:.2f} s   prepare(): {figures['prepare_s']:.2f} s   "
        f"ratio {figures['ratio']:.2f}  (targets: <= 3 s, <= 1.5x)"
    )
    if args.big:
        big = figures["big"]
        print(
            f"{big['bytes'] / 1024**3:.2f} GB CSV: {big['rows']:,} rows, {big['tokens']:,} tokens "
            f"in {big['seconds']} s, "
            f"peak RSS {big['maxrss_kb'] / 1024:.0f} MB (target < 300 MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
