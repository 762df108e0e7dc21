"""Write a CSV shaped like a national business-survey export.

Ten columns (Year, Industry_aggregation_NZSIOC, ... Industry_code_ANZSIC06),
exported the way a spreadsheet does it: UTF-8 with a BOM, CRLF line ends,
quoted fields with commas, thousands separators inside quotes ("1,234"),
'C' for confidential values and names with macrons (Māori).

    python bench/make_survey_csv.py out.csv                 # 55,621 rows
    python bench/make_survey_csv.py out.csv --bytes 1G      # ~1 GB, same rows repeated

Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import random
import sys
from pathlib import Path

COLUMNS = [
    "Year",
    "Industry_aggregation_NZSIOC",
    "Industry_code_NZSIOC",
    "Industry_name_NZSIOC",
    "Units",
    "Variable_code",
    "Variable_name",
    "Variable_category",
    "Value",
    "Industry_code_ANZSIC06",
]

INDUSTRIES = [
    ("Level 1", "99999", "All industries", "ANZSIC06 divisions A-S (excluding classes K6330, L6711, O7552)"),
    ("Level 1", "AA", "Agriculture, Forestry and Fishing", "ANZSIC06 division A"),
    ("Level 1", "BB", "Mining", "ANZSIC06 division B"),
    ("Level 1", "CC", "Manufacturing", "ANZSIC06 division C"),
    ("Level 1", "DD", "Electricity, Gas, Water and Waste Services", "ANZSIC06 division D"),
    ("Level 1", "EE", "Construction", "ANZSIC06 division E"),
    ("Level 3", "AA111", "Horticulture and Fruit Growing", "ANZSIC06 groups A011 and A012"),
    ("Level 3", "AA121", "Sheep, Beef Cattle and Grain Farming", "ANZSIC06 group A014"),
    ("Level 3", "CC131", "Meat and Meat Product Manufacturing", "ANZSIC06 group C111"),
    ("Level 3", "MM911", "Māori Authorities and Iwi Trusts", "ANZSIC06 classes M6962 and S9559"),
    ("Level 3", "RR411", "Tāmaki Makaurau Arts and Recreation Services", "ANZSIC06 division R"),
    ("Level 3", "HH111", "Accommodation and Food Services (Ōtautahi)", "ANZSIC06 division H"),
]

VARIABLES = [
    ("H01", "Total income", "Financial performance", "Dollars (millions)"),
    ("H04", "Sales, government funding, grants and subsidies", "Financial performance", "Dollars (millions)"),
    ("H05", "Interest, dividends and donations", "Financial performance", "Dollars (millions)"),
    ("H07", "Non-operating income", "Financial performance", "Dollars (millions)"),
    ("H08", "Total expenditure", "Financial performance", "Dollars (millions)"),
    ("H09", "Interest and donations", "Financial performance", "Dollars (millions)"),
    ("H10", "Indirect taxes", "Financial performance", "Dollars (millions)"),
    ("H11", "Depreciation", "Financial performance", "Dollars (millions)"),
    ("H12", "Salaries and wages paid", "Financial performance", "Dollars (millions)"),
    ("H13", "Redundancy and severance", "Financial performance", "Dollars (millions)"),
    ("H19", "Purchases and other operating expenses", "Financial performance", "Dollars (millions)"),
    ("H29", "Total assets", "Financial position", "Dollars (millions)"),
    ("H32", "Current liabilities", "Financial position", "Dollars (millions)"),
    ("H34", "Return on equity", "Financial ratios", "Percentage"),
    ("H35", "Return on total assets", "Financial ratios", "Percentage"),
    ("H37", "Liabilities structure", "Financial ratios", "Percentage"),
]

SURVEY_ROWS = 55_621


def _value(rng: random.Random, units: str) -> str:
    roll = rng.random()
    if roll < 0.05:
        return "C"  # confidential
    if roll < 0.07:
        return "S"  # suppressed
    if units == "Percentage":
        return str(rng.randint(-20, 60))
    return f"{rng.randint(0, 2_000_000):,}"


def survey_rows(count: int = SURVEY_ROWS, seed: int = 2023):
    rng = random.Random(seed)
    produced = 0
    for block in itertools.count():
        year = 2023 - block % 11
        for aggregation, code, name, anzsic in INDUSTRIES:
            for var_code, var_name, category, units in VARIABLES:
                if produced == count:
                    return
                yield [
                    str(year),
                    aggregation,
                    code,
                    name,
                    units,
                    var_code,
                    var_name,
                    category,
                    _value(rng, units),
                    anzsic,
                ]
                produced += 1


def survey_block(rows: int = SURVEY_ROWS, header: bool = True) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows(survey_rows(rows))
    return buffer.getvalue().encode("utf-8")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def write_survey_csv(path: Path, rows: int = SURVEY_ROWS, size_bytes: int | None = None) -> int:
    """Write the file; with size_bytes, repeat the rows (no header) until it is at least that big."""
    head = survey_block(rows, header=True)
    with open(path, "wb") as out:
        out.write(b"\xef\xbb\xbf")
        out.write(head)
        written = 3 + len(head)
        if size_bytes:
            body = survey_block(rows, header=False)
            while written < size_bytes:
                out.write(body)
                written += len(body)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=SURVEY_ROWS, help="rows per block (default 55,621)")
    parser.add_argument("--bytes", dest="size", type=parse_size, help="repeat rows up to this size (e.g. 1G)")
    args = parser.parse_args(argv)
    written = write_survey_csv(args.path, args.rows, args.size)
    print(f"wrote {args.path} ({written:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
