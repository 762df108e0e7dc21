"""Reading a manifest file (YAML, which JSON is too, or CSV/TSV) into its entries, as written.

Nothing here knows users, datasets or models: it refuses what cannot be read safely (not UTF-8,
YAML's Python tags, nesting too deep, cells over the csv module's limit) and says where. A number
too long to read is left in its entry as a `LongNumber`, so that it is reported with its field.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from jobs.batch.plan import ManifestError

FIELDS = (
    "name",
    "user",
    "dataset",
    "mapping",
    "base_model",
    "backend",
    "instance_type",
    "instance_count",
    "method",
    "preset",
    "hyperparameters",
    "max_cost_usd",
)
HP_PREFIX = "hp."
# Problems the CSV reader finds in a row, carried in the entry to be listed with the entry's own.
ROW_PROBLEMS = "\x00problems"
EXTRA_CELLS = "\x00extra"
# Python reads and writes at most this many digits of a whole number in base 10 (0: any number).
MAX_DIGITS = sys.get_int_max_str_digits()
DIGITS = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class LongNumber:
    """A whole number with more digits than Python reads, in place of its value, and where it is."""

    line: int
    file: str

    def __str__(self) -> str:
        return (
            f"line {self.line} of {self.file} holds a number of more than {MAX_DIGITS:,} digits, "
            "too long to read"
        )


def read_number(read: Callable[[], int], line: int, file: str) -> int | LongNumber:
    """What `read` makes of a whole number, or a LongNumber where it is too long to read or to show."""
    try:
        number = read()
    except ValueError:  # int() refuses text over Python's limit
        return LongNumber(line, file)
    # Hexadecimal and base-60 numbers are read without that limit, but no message could show them.
    if MAX_DIGITS and abs(number) >= 10**MAX_DIGITS:
        return LongNumber(line, file)
    return number


def read_text(text: str, line: int, file: str) -> str | LongNumber:
    """Text as written, unless it is digits too long to read as a number (a dataset id is read from text)."""
    if DIGITS.fullmatch(text.strip()):
        number = read_number(partial(int, text), line, file)
        if isinstance(number, LongNumber):
            return number
    return text


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The entries of a YAML or CSV manifest as dicts, as written. Raises ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        return parse_csv(text, delimiter="\t" if path.suffix.lower() == ".tsv" else ",", file=path.name)
    return parse_yaml(text, file=path.name)


class ManifestLoader(yaml.SafeLoader):
    """YAML's safe loader, which leaves a number too long to read as a LongNumber with its line."""

    file = "the manifest"

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | LongNumber:
        return read_number(partial(super().construct_yaml_int, node), node.start_mark.line + 1, self.file)

    def construct_yaml_str(self, node: yaml.ScalarNode) -> str | LongNumber:
        return read_text(super().construct_yaml_str(node), node.start_mark.line + 1, self.file)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_yaml_int)
ManifestLoader.add_constructor("tag:yaml.org,2002:str", ManifestLoader.construct_yaml_str)


def load_yaml(text: str, file: str) -> Any:
    loader = ManifestLoader(text)
    loader.file = file
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str = "the manifest") -> list[dict[str, Any]]:
    try:
        document = load_yaml(text, file)
    except RecursionError:
        raise ManifestError("not valid YAML: it is nested too deeply") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error)
        raise ManifestError(f"not valid YAML{where}: {reason}") from None
    if not isinstance(document, dict) or "jobs" not in document:
        raise ManifestError("the manifest must be a mapping with a top-level `jobs:` list")
    unknown = sorted(str(key) for key in document if key != "jobs")
    if unknown:
        raise ManifestError(f"unknown top-level key(s): {', '.join(unknown)} (only `jobs:` is read)")
    jobs = document["jobs"]
    if not isinstance(jobs, list):
        raise ManifestError(f"`jobs:` must be a list of entries, not {kind_of(jobs)}")
    if not jobs:
        raise ManifestError("`jobs:` is empty")
    return jobs


def parse_csv(text: str, delimiter: str = ",", file: str = "the manifest") -> list[dict[str, Any]]:
    """Rows as entries: empty cells are left out, `hyperparameters` (JSON) and `hp.*` columns merged."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, restkey=EXTRA_CELLS)
    headers = [header.strip() for header in reader.fieldnames or []]
    if not headers:
        raise ManifestError("the CSV file is empty: its first line must name the columns")
    reader.fieldnames = headers
    unknown = [
        h for h in headers if h not in FIELDS and not (h.startswith(HP_PREFIX) and len(h) > len(HP_PREFIX))
    ]
    if unknown:
        raise ManifestError(f"unknown column(s): {', '.join(unknown)} (known: {', '.join(FIELDS)}, hp.NAME)")
    entries: list[dict[str, Any]] = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:  # a cell over the csv module's size limit, a broken quote
            raise ManifestError(f"line {reader.line_num} cannot be read as CSV: {error}") from None
        extra = row.pop(EXTRA_CELLS, None)
        cells = {key: value.strip() for key, value in row.items() if key and value and value.strip()}
        if not cells and not extra:
            continue
        entries.append(csv_entry(cells, extra, reader.line_num, file))
    if not entries:
        raise ManifestError("the CSV file has no rows")
    return entries


def csv_entry(cells: dict[str, str], extra: list[str] | None, line: int, file: str) -> dict[str, Any]:
    """One row as an entry, with the problems only its cells can show."""
    cells = {
        key: value if key == "hyperparameters" else read_text(value, line, file)
        for key, value in cells.items()
    }
    entry: dict[str, Any] = {key: value for key, value in cells.items() if not key.startswith(HP_PREFIX)}
    problems = []
    if extra:
        problems.append(("", f"line {line} has more cells than there are columns"))
    if "hyperparameters" in entry:
        try:
            entry["hyperparameters"] = json.loads(
                entry["hyperparameters"],
                parse_int=lambda digits: read_number(partial(int, digits), line, file),
            )
        except ValueError as error:
            problems.append(("hyperparameters", f"not a JSON object ({error})"))
            entry.pop("hyperparameters")
    columns = {key[len(HP_PREFIX) :]: value for key, value in cells.items() if key.startswith(HP_PREFIX)}
    if columns:
        merged = entry.get("hyperparameters")
        merged = dict(merged) if isinstance(merged, dict) else {}
        for name, value in columns.items():
            if name in merged:
                problems.append((f"hyperparameters.{name}", "given twice (JSON column and hp. column)"))
            merged[name] = value
        if isinstance(entry.get("hyperparameters", {}), dict):
            entry["hyperparameters"] = merged
    if problems:
        entry[ROW_PROBLEMS] = problems
    return entry


def kind_of(value: Any) -> str:
    """What a value is, in the words of a message ("a mapping", "a number")."""
    if value is None:
        return "nothing"
    kinds = {
        dict: "a mapping",
        list: "a list",
        bool: "true/false",
        int: "a number",
        float: "a number",
        LongNumber: "a number",
    }
    return kinds.get(type(value), f"a {type(value).__name__}")
