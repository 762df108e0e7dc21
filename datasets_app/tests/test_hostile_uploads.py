"""A corpus of malformed and hostile uploads, each through the real upload view and preparation.

Every case names what it is and how it must end:

- REFUSED: the upload answers 400 with a message that says what is wrong, and leaves no
  Dataset row and no stored object;
- FAILED: the quick look at the first rows could not tell, so the upload is accepted, and
  preparation ends the dataset FAILED with a message for its owner and removes every
  stored object;
- READY: the file is odd but usable: it is read correctly, stored only under the owner's
  prefix, and shown escaped.

None may answer 500, and no upload leaves a temporary file behind.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets_app.models import Dataset
from datasets_app.tests.conftest import stored_files

pytestmark = pytest.mark.django_db

REFUSED, FAILED, READY = "refused", "failed", "ready"
UPLOAD_LIMIT_MB = 3
DECOMPRESSED_LIMIT_MB = 4


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


def zip_of(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def csv_rows(rows: list[list[str]]) -> bytes:
    import csv

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


GOOD_CSV = b"question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\nColour of the sky?,Blue\n"
SCRIPT = "<script>alert('owned')</script>"
IMG = '<img src=x onerror="alert(1)">'
FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1,2)", '=HYPERLINK("http://evil.example","x")']


@dataclass(frozen=True)
class Case:
    id: str
    filename: str
    data: Callable[[], bytes]
    outcome: str
    message: str = ""  # a fragment of the message the owner sees (REFUSED / FAILED)
    fields: dict = field(default_factory=dict)
    check: Callable | None = None  # more checks on a READY dataset


def _page_is_escaped(client, dataset):
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    samples = client.get(f"/datasets/{dataset.pk}/samples/").content.decode()
    for html in (page, samples):
        assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert" in page


def _formulas_kept_as_text_and_served_as_jsonl(client, dataset):
    response = client.get(f"/datasets/{dataset.pk}/download/train/")
    assert response["Content-Type"] == "application/jsonl"
    body = b"".join(response.streaming_content).decode()
    lines = [json.loads(line) for line in body.splitlines()]
    # Formulas are training text like any other; the file is JSON Lines, never a spreadsheet.
    assert any("=cmd|" in json.dumps(line) for line in lines)


def _samples(expected: int):
    def check(client, dataset):
        assert dataset.samples == expected, dataset.stats

    return check


def _rejected(line: int, reason: str):
    def check(client, dataset):
        assert dataset.samples == 2, dataset.stats
        examples = dataset.stats["rejected_examples"]
        assert [(e["line"], reason in e["reason"]) for e in examples] == [(line, True)]

    return check


def _name_is_a_label_only(expected_original: str):
    def check(client, dataset):
        assert dataset.original_filename == expected_original
        assert dataset.raw_file == f"{dataset.storage_prefix}raw"
        assert "\x00" not in dataset.name and "/" not in dataset.original_filename

    return check


def _text_of_first_sample(expected: str):
    def check(client, dataset):
        assert dataset.preview and expected in json.dumps(dataset.preview, ensure_ascii=False)

    return check


CASES = [
    # --- Not text at all ------------------------------------------------------------------------
    Case("empty-file", "data.csv", lambda: b"", REFUSED, "The file is empty"),
    Case("only-blank-lines", "data.txt", lambda: b"\n\n   \r\n\t\n", REFUSED, "blank"),
    Case("bom-only", "data.csv", lambda: codecs.BOM_UTF8, REFUSED, "blank"),
    Case("random-binary", "data.csv", lambda: bytes(range(256)) * 64, REFUSED, "binary"),
    Case("zip-renamed-csv", "data.csv", lambda: zip_of("a.csv", GOOD_CSV), REFUSED, "ZIP archive"),
    Case("xlsx-upload", "book.xlsx", lambda: zip_of("xl/workbook.xml", b"<x/>"), REFUSED, "Excel"),
    Case("pdf-renamed-txt", "notes.txt", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", REFUSED, "PDF"),
    Case("png-renamed-jsonl", "rows.jsonl", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, REFUSED, "PNG"),
    Case("elf-program", "data.txt", lambda: b"\x7fELF\x02\x01\x01" + b"\x00" * 100, REFUSED, "program"),
    Case("sqlite-database", "data.csv", lambda: b"SQLite format 3\x00" + b"\x00" * 100, REFUSED, "SQLite"),
    # --- Compression -------------------------------------------------------------------------
    Case("empty-gzip", "data.csv.gz", lambda: gz(b""), REFUSED, "compressed file is empty"),
    Case("truncated-gzip", "data.csv.gz", lambda: gz(GOOD_CSV * 50)[:40], REFUSED, "damaged"),
    Case("gz-name-not-gzip", "data.csv.gz", lambda: GOOD_CSV, REFUSED, "not gzip-compressed"),
    Case("gzip-of-gzip", "data.csv.gz", lambda: gz(gz(GOOD_CSV * 20)), REFUSED, "binary"),
    Case(
        "gzip-bomb-of-text",
        "bomb.txt.gz",
        lambda: gz(b"all work and no play\n" * (300_000 * DECOMPRESSED_LIMIT_MB)),
        FAILED,
        "expands to more than 4 MB",
    ),
    Case(
        "gzip-bomb-of-zeros",
        "bomb.csv.gz",
        lambda: gz(b"\x00" * (DECOMPRESSED_LIMIT_MB + 2) * 1024 * 1024),
        REFUSED,
        "binary",
    ),
    # --- Sizes and lines ---------------------------------------------------------------------------
    Case(
        "over-the-upload-limit",
        "big.txt",
        lambda: b"x" * 99 + b"\n" * (UPLOAD_LIMIT_MB * 1024 * 1024),
        REFUSED,
        "the limit for one upload",
    ),
    Case(
        "huge-single-line-txt",
        "one-line.txt",
        lambda: b"a" * 1_500_000,
        FAILED,
        "longer than 1,000,000 characters",
    ),
    Case(
        "huge-single-line-header-csv",
        "wide.csv",
        lambda: b"c," * 700_000 + b"c\n1,2\n",
        REFUSED,
        "not a table",
    ),
    Case("header-only-csv", "data.csv", lambda: b"question,answer\n", FAILED, "no"),
    Case("ten-thousand-columns", "wide.csv", lambda: csv_rows([[f"c{i}" for i in range(10_000)]] * 3), READY),
    # --- Encodings and newlines ----------------------------------------------------------------------
    Case(
        "utf16-le-without-bom",
        "data.csv",
        lambda: "question,answer\nWhat is café?,A place\nNaïve?,Yes\n".encode("utf-16-le"),
        READY,
        check=_text_of_first_sample("café"),
    ),
    Case(
        "utf16-be-without-bom",
        "data.csv",
        lambda: "question,answer\nWhat is café?,A place\nNaïve?,Yes\n".encode("utf-16-be"),
        READY,
        check=_text_of_first_sample("café"),
    ),
    Case(
        "utf16-with-bom",
        "data.tsv",
        lambda: "question\tanswer\nÜber?\tJa\n".encode("utf-16"),
        READY,
        check=_text_of_first_sample("Über"),
    ),
    Case(
        "utf32-with-bom",
        "data.txt",
        lambda: "première ligne\nseconde ligne\n".encode("utf-32"),
        READY,
        check=_samples(2),
    ),
    Case(
        "windows-1252-not-utf8",
        "data.csv",
        lambda: "question,answer\nCafé crème?,Oui\n".encode("cp1252"),
        READY,
        check=_text_of_first_sample("Café"),
    ),
    Case(
        "utf8-then-a-windows-1252-byte",
        "data.csv",
        lambda: "question,answer\nWhat is naïve?,Yes\n".encode() + b"Caf\xe9?,Oui\nWhy?,Because\n",
        READY,
        check=_rejected(3, "not valid UTF-8 (byte 0xe9 at column 4)"),
    ),
    Case(
        "mixed-newlines",
        "data.txt",
        lambda: b"one\r\ntwo\nthree\rfour\r\n\r\nfive",
        READY,
        check=_samples(5),
    ),
    Case(
        "nul-after-the-sniffed-head",
        "data.txt",
        lambda: b"fine line\n" * 8000 + b"bad \x00 line\n" + b"after\n",
        READY,
    ),
    # --- JSON --------------------------------------------------------------------------------------------
    Case("json-nested-100k-deep", "deep.json", lambda: b"[" * 100_000 + b"]" * 100_000, REFUSED, "nested"),
    Case(
        "jsonl-object-nested-100k-deep",
        "deep.jsonl",
        lambda: b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
        FAILED,
        "nested",
    ),
    Case(
        "json-list-of-100k-nested-arrays",
        "lists.json",
        lambda: b"[" + b",".join([b"[[1,[2]]]"] * 100_000) + b"]",
        FAILED,
        "expected a JSON object",
    ),
    Case(
        "json-object-not-list",
        "data.json",
        lambda: b'{\n  "a": 1,\n  "b": {"c": 2}\n}',
        REFUSED,
        "list of objects",
    ),
    Case(
        "json-one-object-on-one-line",
        "data.json",
        lambda: b'{"not": "a list"}',
        REFUSED,
        "one JSON object, not a list of records: its keys are &quot;not&quot;",
    ),
    Case(
        "json-list-in-a-data-wrapper",
        "data.json",
        lambda: b'{"data": [{"text": "a"}, {"text": "b"}]}',
        READY,
        check=_samples(2),
    ),
    Case(
        "json-integer-of-4301-digits",
        "data.json",
        lambda: b'[\n{"text": "fine", "n": ' + b"9" * 4301 + b"}\n]",
        FAILED,
        "line 2: a number with 4,301 digits",
    ),
    Case(
        "jsonl-integer-of-4301-digits",
        "data.jsonl",
        lambda: b'{"text": "fine", "n": -' + b"1" * 4301 + b"}\n",
        FAILED,
        "line 1: a number with 4,301 digits",
    ),
    Case(
        "jsonl-integer-of-4301-digits-then-broken",
        "data.jsonl",
        lambda: b'{"n": ' + b"1" * 4301 + b', "text": }\n',
        FAILED,
        "line 1: not valid JSON",
    ),
    Case(
        "json-one-integer-of-4301-digits-among-good-rows",
        "data.json",
        lambda: b'[{"text": "one"},\n{"text": "two", "n": ' + b"7" * 4301 + b'},\n{"text": "three"}]',
        READY,
        check=_rejected(2, "a number with 4,301 digits"),
    ),
    Case("json-broken", "data.json", lambda: b'[{"text": "a"}, {"text": ', REFUSED, "broken"),
    Case(
        "jsonl-only-scalars", "data.jsonl", lambda: b'1\n2\n"three"\nnull\n', FAILED, "expected a JSON object"
    ),
    Case(
        "json-escaped-nul-in-string",
        "data.jsonl",
        lambda: b'{"text": "before\\u0000after"}\n{"text": "second \\u0000"}\n',
        FAILED,
        "NUL character",
    ),
    Case(
        "json-lone-surrogate",
        "data.jsonl",
        lambda: b'{"text": "broken \\ud800 pair"}\n{"text": "fine"}\n',
        READY,
        check=_samples(1),
    ),
    Case(
        "json-nul-and-surrogate-in-keys",
        "data.jsonl",
        lambda: b'{"te\\u0000xt": "a", "\\udc00": "b", "ok": "c"}\n{"ok": "d"}\n',
        READY,
    ),
    Case(
        "jsonl-first-line-longer-than-the-sniffed-head",
        "data.jsonl",
        lambda: (json.dumps({f"key{i}": i for i in range(10_000)}) + "\n").encode(),
        READY,
        check=_samples(1),
    ),
    # --- Names ----------------------------------------------------------------------------------------------
    Case(
        "path-traversal-name",
        "../../etc/passwd.csv",
        lambda: GOOD_CSV,
        READY,
        check=_name_is_a_label_only("passwd.csv"),
    ),
    Case(
        "windows-path-name",
        "C:\\Users\\mallory\\..\\..\\boot.ini.csv",
        lambda: GOOD_CSV,
        READY,
        check=_name_is_a_label_only("boot.ini.csv"),
    ),
    Case("nul-in-filename", "data\x00.csv", lambda: GOOD_CSV, READY),
    Case("control-characters-in-filename", "invoice\u202ecsv.exe\x07\x1b[31m.csv", lambda: GOOD_CSV, READY),
    Case("filename-of-2000-chars", "a" * 2000 + ".csv", lambda: GOOD_CSV, READY),
    Case("shell-metacharacters-in-filename", "$(id);rm -rf ~`reboot`|x.csv", lambda: GOOD_CSV, READY),
    # --- Cells --------------------------------------------------------------------------------------------
    Case(
        "scripts-in-cells",
        "data.csv",
        lambda: csv_rows([["question", "answer"], [SCRIPT, IMG], ["fine", SCRIPT]]),
        READY,
        check=_page_is_escaped,
    ),
    Case(
        "formulas-in-cells",
        "data.csv",
        lambda: csv_rows([["question", "answer"], *[[f, f] for f in FORMULAS]]),
        READY,
        check=_formulas_kept_as_text_and_served_as_jsonl,
    ),
    # --- Form fields ------------------------------------------------------------------------------------
    Case(
        "template-mapping-reaching-for-attributes",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "column",
        fields={"mapping": "template:{question.__class__.__init__.__globals__}"},
    ),
    Case(
        "mapping-of-5000-chars",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "at most 2000 characters",
        fields={"mapping": "text:" + "q" * 5000},
    ),
    Case(
        "validation-nan",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "number",
        fields={"validation_percent": "NaN"},
    ),
    Case(
        "validation-infinity",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "number",
        fields={"validation_percent": "Infinity"},
    ),
    Case(
        "validation-negative",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "greater than or equal to 0",
        fields={"validation_percent": "-5"},
    ),
    Case(
        "format-not-a-choice",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "not one of the available choices",
        fields={"format": "xml; rm -rf /"},
    ),
    Case(
        "nul-in-name-field",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "Null characters",
        fields={"name": "a\x00b"},
    ),
    Case(
        "line-break-in-name-field",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "control characters",
        fields={"name": "Quarterly\r\nBcc: x@example.com"},
    ),
    Case(
        "name-of-10k-chars",
        "data.csv",
        lambda: GOOD_CSV,
        REFUSED,
        "at most 200",
        fields={"name": "n" * 10_000},
    ),
]


@pytest.fixture
def upload_settings(settings, tmp_path):
    settings.DATASET_MAX_UPLOAD_MB = UPLOAD_LIMIT_MB
    settings.DATASET_MAX_DECOMPRESSED_MB = DECOMPRESSED_LIMIT_MB
    # Every upload past 64 KB streams to a temporary file here; none may be left behind.
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir()
    return settings


def test_the_corpus_is_large_and_names_every_case():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_hostile_upload_is_refused_or_prepared_safely_never_a_500(
    case, owner_client, owner, upload_settings, django_capture_on_commit_callbacks
):
    form = {"file": SimpleUploadedFile(case.filename, case.data()), "format": "auto", "txt_mode": "line"}
    form["validation_percent"] = "10"
    form.update(case.fields)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post("/datasets/upload/", form)

    assert response.status_code < 500
    media = upload_settings.MEDIA_ROOT
    assert list(Path(upload_settings.FILE_UPLOAD_TEMP_DIR).iterdir()) == []
    if case.outcome == REFUSED:
        assert response.status_code == 400, Dataset.objects.values("status", "error").first()
        text = response.content.decode()
        assert case.message in text, text[text.find("errorlist") - 200 :][:800]
        assert Dataset.objects.count() == 0
        assert stored_files(media) == []
        return

    assert response.status_code == 302, response.content.decode()[:2000]
    dataset = Dataset.objects.get()
    assert dataset.owner == owner
    if case.outcome == FAILED:
        assert dataset.status == Dataset.Status.FAILED, dataset.stats
        assert case.message in dataset.error, dataset.error
        assert stored_files(media) == []
        page = owner_client.get(f"/datasets/{dataset.pk}/")
        assert page.status_code == 200
        return

    assert dataset.status == Dataset.Status.READY, dataset.error
    assert all(path.startswith(dataset.storage_prefix) for path in stored_files(media))
    assert sorted(stored_files(media)) == sorted(dataset.stored_keys())
    for url in (f"/datasets/{dataset.pk}/", f"/datasets/{dataset.pk}/samples/", "/datasets/", "/dashboard/"):
        assert owner_client.get(url).status_code == 200, url
    if case.check:
        case.check(owner_client, dataset)
