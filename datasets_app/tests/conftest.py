"""Dataset fixtures: files shaped like real uploads, and datasets prepared through the real code."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from django.core.files.base import ContentFile

from datasets_app import actions
from datasets_app.models import Dataset

SURVEY_HEADER = (
    "Year,Industry_aggregation_NZSIOC,Industry_code_NZSIOC,Industry_name_NZSIOC,Units,"
    "Variable_code,Variable_name,Variable_category,Value,Industry_code_ANZSIC06"
)
SURVEY_ROWS = [
    "2023,Level 1,99999,All industries,Dollars (millions),H01,Total income,Financial performance,"
    '"1,234","ANZSIC06 divisions A-S (excluding classes K6330, L6711)"',
    "2023,Level 3,MM911,Māori Authorities,Dollars (millions),H04,"
    '"Sales, government funding, grants and subsidies",Financial performance,C,ANZSIC06 division M',
    "2022,Level 1,AA,Tāmaki Makaurau,Percentage,H34,Return on equity,Financial ratios,12,ANZSIC06 division A",
    "2022,Level 1,AA,Agriculture,Dollars (millions),H01,Total income,Financial performance,too,many,cells",
]


def survey_csv(rows: list[str] | None = None) -> bytes:
    """A spreadsheet export: BOM, CRLF, quoted commas, thousands separators, 'C', macrons, one bad row."""
    return codecs.BOM_UTF8 + "\r\n".join([SURVEY_HEADER, *(rows or SURVEY_ROWS), ""]).encode("utf-8")


@pytest.fixture(autouse=True)
def _own_task_folders(settings, tmp_path):
    # Each test's preparations make their scratch folders here, so a test can see none is left.
    settings.TASK_TEMP_DIR = tmp_path / "task-tmp"


def task_folders(settings) -> list[str]:
    root = Path(settings.TASK_TEMP_DIR)
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


@pytest.fixture
def survey_bytes() -> bytes:
    return survey_csv()


def make_dataset(owner, data: bytes, filename: str = "survey.csv", **options) -> Dataset:
    """Upload and prepare in-process, as the view and the task do."""
    read = actions.ReadOptions(**options)
    dataset = actions.create_dataset(owner, ContentFile(data, name=filename), filename, read, queue=False)
    actions.run_preparation(dataset.pk)
    dataset.refresh_from_db()
    return dataset


@pytest.fixture
def ready_dataset(owner, survey_bytes) -> Dataset:
    dataset = make_dataset(owner, survey_bytes)
    assert dataset.status == Dataset.Status.READY, dataset.error
    return dataset


def stored_files(media_root) -> list[str]:
    root = Path(media_root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
