"""The preparation engine, driven directly: readers, mappings, split, stats, bad inputs."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets_app.mapping import MappingError, parse_mapping
from datasets_app.preparation import (
    PreparationError,
    PrepareOptions,
    inspect_file,
    load_tokenizer,
    prepare,
)
from datasets_app.readers import open_records

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
]


def survey_bytes(rows=SURVEY_ROWS) -> bytes:
    return codecs.BOM_UTF8 + "\r\n".join([SURVEY_HEADER, *rows, ""]).encode("utf-8")


class Prepared:
    def __init__(self, result, train: bytes, validation: bytes):
        self.result = result
        self.stats = result.stats
        self.preview = result.preview
        self.train = [json.loads(line) for line in train.decode("utf-8").splitlines()]
        self.validation = [json.loads(line) for line in validation.decode("utf-8").splitlines()]
        self.samples = self.train + self.validation


def run(data: bytes, filename: str = "data.csv", **options) -> Prepared:
    options.setdefault("validation_fraction", 0.0)
    train, validation = io.BytesIO(), io.BytesIO()
    result = prepare(io.BytesIO(data), filename, train, validation, PrepareOptions(**options))
    return Prepared(result, train.getvalue(), validation.getvalue())


def fails(data: bytes, filename: str = "data.csv", **options) -> str:
    with pytest.raises(PreparationError) as caught:
        run(data, filename, **options)
    return str(caught.value)


def texts(prepared: Prepared) -> list[str]:
    return [sample["text"] for sample in prepared.samples]


# --- The survey CSV ---------------------------------------------------------------


def test_survey_csv_becomes_one_all_columns_sample_per_row():
    prepared = run(survey_bytes(), "survey.csv")

    assert prepared.stats["format"] == "csv"
    assert prepared.stats["encoding"] == "utf-8"
    assert prepared.stats["encoding_note"] == ""
    assert prepared.stats["columns"][0] == "Year"  # no BOM glued to the first name
    assert prepared.stats["mapping"] == "all-columns"
    assert prepared.stats["shape"] == "text"
    assert (prepared.stats["rows"], prepared.stats["samples"], prepared.stats["rejected"]) == (3, 3, 0)
    first, second, third = texts(prepared)
    assert first.startswith("Year: 2023\nIndustry_aggregation_NZSIOC: Level 1\n")
    assert "\nValue: 1,234\n" in first  # the thousands separator stays inside the value
    assert "Industry_code_ANZSIC06: ANZSIC06 divisions A-S (excluding classes K6330, L6711)" in first
    assert "Variable_name: Sales, government funding, grants and subsidies" in second
    assert "\nValue: C\n" in second  # confidential, kept as written
    assert "Industry_name_NZSIOC: Māori Authorities" in second
    assert "Tāmaki Makaurau" in third
    assert "\r" not in "".join(texts(prepared))


def test_survey_csv_stats_count_tokens_exactly_and_preview_the_first_samples():
    rows = SURVEY_ROWS * 4
    prepared = run(survey_bytes(rows), "survey.csv")
    tokenizer = load_tokenizer()

    expected = sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in texts(prepared))
    assert prepared.stats["tokens"] == expected
    assert prepared.stats["characters"] == sum(len(text) for text in texts(prepared))
    assert sum(bucket["count"] for bucket in prepared.stats["histogram"]) == 12
    assert len(prepared.stats["histogram"]) <= 10
    assert prepared.stats["token_lengths"]["min"] <= prepared.stats["token_lengths"]["max"]
    assert len(prepared.preview) == 5
    assert [item["line"] for item in prepared.preview] == [2, 3, 4, 5, 6]
    assert all(len(item["text"]) <= 150 for item in prepared.preview)
    assert prepared.preview[0]["text"].endswith("…")


def test_gpt2_tokenizer_is_the_real_one():
    tokenizer = load_tokenizer()

    assert tokenizer.encode("Hello world", add_special_tokens=False).ids == [15496, 995]
    assert tokenizer.get_vocab_size() == 50257


def test_quoted_newlines_keep_line_numbers_of_the_physical_line_where_a_row_starts():
    data = b'name,note\r\nann,"two\r\nlines"\r\nbob,plain\r\ncat,"x",extra\r\n'

    prepared = run(data, "notes.csv", mapping="text:note")

    assert texts(prepared) == ["two\r\nlines", "plain"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 5, "reason": "expected 2 columns like the header, found 3"}
    ]
    assert [item["line"] for item in prepared.preview] == [2, 4]


def test_spreadsheet_rows_of_empty_cells_and_trailing_empty_cells_are_tolerated():
    data = b"a,b\r\n1,2,,\r\n,,\r\n\r\n3,4\r\n"

    prepared = run(data)

    assert texts(prepared) == ["a: 1\nb: 2", "a: 3\nb: 4"]
    assert prepared.stats["rejected"] == 0


def test_tsv_by_extension_and_by_content():
    data = b"question\tanswer\nWhat is 1,5?\tone and a half\n"

    by_name = run(data, "qa.tsv", mapping="prompt:question,completion:answer")
    by_content = run(data, "qa.csv", mapping="prompt:question,completion:answer")

    assert by_name.samples == [{"prompt": "What is 1,5?", "completion": "one and a half"}]
    assert by_content.stats["format"] == "tsv"
    assert by_content.samples == by_name.samples
    assert "read as TSV" in by_content.stats["notes"][0]


def test_semicolon_separated_csv_from_a_comma_decimal_locale():
    prepared = run(b"name;value\r\nann;1,5\r\nbob;2\r\n", "export.csv")

    assert texts(prepared) == ["name: ann\nvalue: 1,5", "name: bob\nvalue: 2"]
    assert prepared.stats["notes"] == ["Columns are separated by semicolons."]


def test_utf16_with_bom_both_byte_orders():
    text = "name,value\r\nMāori,1\r\n"
    for encoding in ("utf-16-le", "utf-16-be"):
        bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
        prepared = run(bom + text.encode(encoding), "export.csv")

        assert prepared.stats["encoding"] == "utf-16"
        assert texts(prepared) == ["name: Māori\nvalue: 1"]


def test_a_file_that_is_not_utf8_from_the_start_is_read_as_cp1252_and_says_why():
    data = "name,city\r\nRené,Zürich\r\nJosé,São Paulo – SP\r\n".encode("cp1252")

    prepared = run(data, "legacy.csv")

    assert prepared.stats["encoding"] == "cp1252"
    assert prepared.stats["encoding_note"].startswith(
        "Read as Windows-1252: the file is not UTF-8 (first bad byte on line 2)."
    )
    assert texts(prepared) == ["name: René\ncity: Zürich", "name: José\ncity: São Paulo – SP"]


def _utf8_with_a_bad_byte(header: str, line: str, rows: int) -> bytes:
    """A UTF-8 file (past the sniffed head) with one Windows-1252 é on line `rows + 2`."""
    good = [line.format(i=i).encode() for i in range(rows)]
    bad = line.format(i=rows).encode().replace("ü".encode(), b"caf\xe9")
    last = line.format(i="last").encode()
    return (header + "\n").encode() + b"\n".join([*good, bad, last]) + b"\n"


@pytest.mark.parametrize(
    ("filename", "header", "line"),
    [
        ("mixed.csv", "text", "row {i} ü"),
        ("mixed.tsv", "text\tn", "row {i} ü\t1"),
        ("mixed.jsonl", "", '{{"text": "row {i} ü"}}'),
        ("mixed.txt", "", "row {i} ü"),
    ],
)
def test_a_utf8_file_with_a_bad_byte_later_keeps_utf8_and_rejects_that_line(filename, header, line):
    column = line.format(i=20_000).index("ü") + 4  # "caf" took the ü's place, then the é
    data = _utf8_with_a_bad_byte(header, line, 20_000)
    bad_line = 20_001 + (1 if header else 0)
    if not header:
        data = data[1:]  # no header line: the file starts with the first row

    prepared = run(data, filename)

    assert prepared.stats["encoding"] == "utf-8"
    assert prepared.stats["rejected"] == 1
    assert prepared.stats["rejected_examples"] == [
        {"line": bad_line, "reason": f"not valid UTF-8 (byte 0xe9 at column {column})"}
    ]
    assert "1 line is not valid UTF-8" in prepared.stats["encoding_note"]
    assert "row 0 ü" in texts(prepared)[0]
    assert "row last ü" in texts(prepared)[-1]
    assert len(prepared.samples) == 20_001


def test_a_bad_byte_early_in_a_file_that_began_as_utf8_does_not_turn_it_into_cp1252():
    data = "name,city\nMāori,Ōtautahi\n".encode() + b"Jos\xe9,Paris\n" + "Ann,Zürich\n".encode()

    prepared = run(data, "early.csv")

    assert prepared.stats["encoding"] == "utf-8"
    assert texts(prepared) == ["name: Māori\ncity: Ōtautahi", "name: Ann\ncity: Zürich"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 3, "reason": "not valid UTF-8 (byte 0xe9 at column 4)"}
    ]


def test_a_bad_byte_in_a_paragraph_rejects_that_paragraph_with_the_bad_line():
    data = "Māori\nfirst\n\nsecond\n".encode() + b"caf\xe9\n\nthird\n"

    prepared = run(data, "notes.txt", txt_mode="paragraph")

    assert texts(prepared) == ["Māori\nfirst", "third"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 5, "reason": "not valid UTF-8 (byte 0xe9 at column 4)"}
    ]


def test_a_bad_byte_in_a_json_list_rejects_that_element_with_its_line():
    data = '[\n{"text": "Māori"},\n{"text": "caf'.encode() + b'\xe9"},\n{"text": "ok"}\n]'

    prepared = run(data, "list.json")

    assert texts(prepared) == ["Māori", "ok"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 3, "reason": "not valid UTF-8 (byte 0xe9 at column 14)"}
    ]


# --- JSON, JSONL, text ----------------------------------------------------------------


def test_jsonl_recognises_each_shape_on_its_own():
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Kia ora"}]}
    cases = [
        (chat, chat, "messages"),
        ({"prompt": "2+2=", "completion": "4"}, {"prompt": "2+2=", "completion": "4"}, "prompt_completion"),
        ({"text": "plain", "id": 1}, {"text": "plain"}, "text"),
        ({"city": "Ōtautahi", "pop": 380000}, {"text": "city: Ōtautahi\npop: 380000"}, "text"),
    ]
    for record, expected, shape in cases:
        prepared = run((json.dumps(record, ensure_ascii=False) + "\n").encode(), "data.jsonl")

        assert prepared.samples == [expected]
        assert prepared.stats["shape"] == shape


def test_sharegpt_conversations_become_messages():
    record = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}

    prepared = run(json.dumps(record).encode(), "chat.jsonl")

    assert prepared.samples == [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ]
    assert prepared.stats["mapping"] == "messages:conversations"


def test_jsonl_broken_line_3_is_reported_as_line_3_and_the_rest_is_kept():
    lines = [
        '{"text": "one"}',
        '{"text": "two"}',
        '{"text": "three"',
        "",
        '["not", "an", "object"]',
        '{"text": "six"}',
    ]

    prepared = run("\n".join(lines).encode(), "data.jsonl")

    assert texts(prepared) == ["one", "two", "six"]
    assert prepared.stats["rejected"] == 2
    line3, line5 = prepared.stats["rejected_examples"]
    assert line3["line"] == 3
    assert line3["reason"].startswith("not valid JSON: Expecting ',' delimiter")
    assert line5 == {"line": 5, "reason": "expected a JSON object {...}, found a list"}


def test_bad_chat_messages_are_rejected_with_a_reason():
    rows = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
    ]
    data = "\n".join(json.dumps(row) for row in rows).encode()

    prepared = run(data, "chat.jsonl")

    assert prepared.stats["samples"] == 1
    reasons = [example["reason"] for example in prepared.stats["rejected_examples"]]
    assert reasons == [
        "'messages' must be a non-empty list of messages",
        "there is no assistant message to learn from",
        "message 1 has role 'wizard'; use system, user or assistant",
        "message 1 (user) has no text content",
    ]


def test_json_list_is_streamed_with_element_line_numbers():
    data = b'[\n  {"text": "a"},\n  42,\n  {"text": ""},\n  {\n    "text": "b"\n  }\n]\n'

    prepared = run(data, "data.json")

    assert texts(prepared) == ["a", "b"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 3, "reason": "expected a JSON object {...}, found a number"},
        {"line": 4, "reason": "the text ('text') is empty"},
    ]
    assert prepared.preview[1]["line"] == 5


@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ('{"data": [', "]}")])
def test_json_list_is_read_lazily_not_whole(opening, closing):
    element = json.dumps({"text": "x" * 100}) + ",\n"
    data = (opening + element * 200_000 + '{"text": "end"}' + closing).encode()  # ~22 MB

    class CountingStream(io.BytesIO):
        consumed = 0

        def read(self, size=-1):
            chunk = super().read(size)
            CountingStream.consumed += len(chunk)
            return chunk

    records = open_records(CountingStream(data), "big.json")
    line, first = next(records.rows)

    assert (line, first) == (1, {"text": "x" * 100})
    assert CountingStream.consumed < 3 * 1024 * 1024


@pytest.mark.parametrize("data", [b'{"not": "a list"}', b'{"not": "a list"}\n', b'{\n  "not": "a list"\n}\n'])
def test_a_single_json_object_is_refused_naming_its_keys(data):
    message = fails(data, "data.json")

    assert message.startswith('The file holds one JSON object, not a list of records: its keys are "not"')
    assert "must be a list of objects" in message


def test_a_json_object_with_two_lists_of_records_is_refused_naming_them():
    message = fails(b'{"train": [{"text": "a"}], "test": [{"text": "b"}]}', "data.json")

    assert message.startswith("The file holds one JSON object, not a list of records:")
    assert '"train" and "test"' in message


def test_the_list_inside_a_one_list_wrapper_is_read_and_the_key_named():
    data = b'{"version": "1.0", "data": [\n{"text": "a"},\n{"text": "b"}\n], "count": 2}'

    prepared = run(data, "wrapped.json")

    assert texts(prepared) == ["a", "b"]
    assert prepared.stats["format"] == "json"
    assert prepared.stats["notes"] == ['The records were read from the list under "data".']
    assert [sample["line"] for sample in prepared.preview] == [2, 3]


def test_a_one_line_json_object_in_a_jsonl_file_is_still_one_record():
    prepared = run(b'{"text": "only one"}\n', "data.jsonl")

    assert texts(prepared) == ["only one"]


def test_broken_json_list_names_line_and_column():
    message = fails(b'[\n{"text": "a"},\n{"text": "b"\n]', "data.json")

    assert message.startswith("The JSON is broken at line 4, column 1:")


def test_jsonl_named_json_is_detected_from_content():
    data = b'{"text": "a"}\n{"text": "b"}\n'

    prepared = run(data, "data.json")

    assert prepared.stats["format"] == "jsonl"
    assert texts(prepared) == ["a", "b"]


def test_text_one_sample_per_line_or_per_paragraph():
    data = b"first line\r\nsecond line\r\n\r\n\r\nthird\r\nfourth\r\n"

    by_line = run(data, "notes.txt")
    by_paragraph = run(data, "notes.txt", txt_mode="paragraph")

    assert texts(by_line) == ["first line", "second line", "third", "fourth"]
    assert texts(by_paragraph) == ["first line\nsecond line", "third\nfourth"]
    assert [item["line"] for item in by_paragraph.preview] == [1, 5]


# --- Mappings -------------------------------------------------------------------------


def test_template_mapping_fills_in_columns():
    prepared = run(
        survey_bytes(),
        "survey.csv",
        mapping="template:{Industry_name_NZSIOC} in {Year}: {Variable_name} = {Value}",
    )

    assert texts(prepared)[0] == "All industries in 2023: Total income = 1,234"
    assert (
        texts(prepared)[1] == "Māori Authorities in 2023: Sales, government funding, grants and subsidies = C"
    )


def test_template_with_an_unknown_column_names_it_and_lists_the_columns():
    message = fails(survey_bytes(), "survey.csv", mapping="template:{Yeer}: {Value}")

    assert "'Yeer', which is not in the file" in message
    assert "Year, Industry_aggregation_NZSIOC" in message


def test_template_literal_braces_and_case_insensitive_columns():
    prepared = run(b"Name,Score\nann,3\n", mapping="template:{{{name}}} scored {SCORE}")

    assert texts(prepared) == ["{ann} scored 3"]


def test_text_and_prompt_completion_mappings_on_a_table():
    data = b"q,a,id\nWhy?,Because.,1\n,Empty prompt,2\nHow?,,3\n"

    as_text = run(data, mapping="text:a")
    as_pairs = run(data, mapping="prompt:q,completion:a")

    assert texts(as_text) == ["Because.", "Empty prompt"]
    assert as_pairs.samples == [{"prompt": "Why?", "completion": "Because."}]
    assert [e["reason"] for e in as_pairs.stats["rejected_examples"]] == [
        "the prompt (q) is empty",
        "the completion (a) is empty",
    ]


def test_automatic_mapping_for_tables():
    assert run(b"prompt,completion\nA,B\n").samples == [{"prompt": "A", "completion": "B"}]
    assert run(b"text,label\nhello,1\n").samples == [{"text": "hello"}]
    assert run(b"only\nhello\n").samples == [{"text": "hello"}]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", "auto"),
        ("auto", "auto"),
        ("all-columns", "all-columns"),
        ("text:body", "text:body"),
        ("prompt:q , completion: a", "prompt:q,completion:a"),
        ("template:{a} and {b}", "template:{a} and {b}"),
        ("messages", "messages"),
        ("messages:conversations", "messages:conversations"),
    ],
)
def test_parse_mapping_round_trips(spec, expected):
    assert str(parse_mapping(spec)) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("columns", "Unknown mapping 'columns'"),
        ("text:", "text: needs a column name"),
        ("prompt:q", "prompt:COLUMN,completion:COLUMN"),
        ("template:no fields", "names no column"),
        ("template:{a", "unmatched '{' at character 1"),
        ("template:a}", "unmatched '}' at character 2"),
        ("template:{} x", "empty {}"),
    ],
)
def test_parse_mapping_errors_are_clear(spec, message):
    with pytest.raises(
        MappingError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")
    ):
        parse_mapping(spec)


def test_plain_text_takes_no_column_mapping():
    assert "Plain text has no columns" in fails(b"hello\n", "a.txt", mapping="text:body")


def test_inspect_file_reads_only_the_first_rows_even_when_they_are_all_bad():
    data = b"a,b\n" + b"1\n" * 3_000_000  # 6 MB of rows with a missing column

    class CountingStream(io.BytesIO):
        consumed = 0

        def read(self, size=-1):
            chunk = super().read(size)
            CountingStream.consumed += len(chunk)
            return chunk

    seen = inspect_file(CountingStream(data), "bad.csv")

    assert seen["samples"] == []
    assert CountingStream.consumed < 2 * 1024 * 1024


def test_inspect_file_shows_columns_and_the_automatic_mapping():
    seen = inspect_file(io.BytesIO(survey_bytes()), "survey.csv")

    assert seen["columns"][:2] == ["Year", "Industry_aggregation_NZSIOC"]
    assert seen["mapping"] == "all-columns"
    assert len(seen["samples"]) == 3


# --- Split ----------------------------------------------------------------------------


def many_rows(n: int) -> bytes:
    return ("text\n" + "".join(f"sample number {i}\n" for i in range(n))).encode()


def test_default_split_holds_out_about_five_percent_deterministically():
    first = run(many_rows(4000), validation_fraction=0.05)
    again = run(many_rows(4000), validation_fraction=0.05)

    assert first.train == again.train and first.validation == again.validation
    assert 150 <= len(first.validation) <= 250
    assert len(first.train) + len(first.validation) == 4000
    assert first.stats["validation_samples"] == len(first.validation)
    assert first.stats["train_tokens"] + first.stats["validation_tokens"] == first.stats["tokens"]
    assert set(texts(first)) == {f"sample number {i}" for i in range(4000)}


def test_split_fraction_is_adjustable_and_the_seed_changes_it():
    half = run(many_rows(2000), validation_fraction=0.5)
    other_seed = run(many_rows(2000), validation_fraction=0.5, seed=7)

    assert 900 <= len(half.validation) <= 1100
    assert half.validation != other_seed.validation
    assert run(many_rows(50), validation_fraction=0.0).validation == []


def test_a_small_file_still_gets_one_validation_sample():
    prepared = run(many_rows(3), validation_fraction=0.05)

    assert (len(prepared.train), len(prepared.validation)) == (2, 1)
    assert run(many_rows(1), validation_fraction=0.05).validation == []


def test_offset_index_points_at_sample_starts():
    prepared = run(many_rows(500), validation_fraction=0.0, index_every=50)
    index = prepared.result.index["train"]
    train = io.BytesIO()
    prepare(io.BytesIO(many_rows(500)), "a.csv", train, io.BytesIO(), PrepareOptions(validation_fraction=0.0))
    data = train.getvalue()

    assert index["every"] == 50 and len(index["offsets"]) == 10
    for number, offset in enumerate(index["offsets"]):
        line = data[offset:].split(b"\n", 1)[0]
        assert json.loads(line) == {"text": f"sample number {number * 50}"}


# --- Bad inputs ---------------------------------------------------------------------


def test_empty_file():
    assert fails(b"", "data.csv") == "The file is empty."


def test_blank_file():
    assert fails(b"\r\n  \r\n", "data.csv") == "The file holds only blank space."


def test_header_only():
    message = fails(codecs.BOM_UTF8 + SURVEY_HEADER.encode() + b"\r\n", "survey.csv")

    assert message.startswith("The file has a header row but no data rows below it (columns: Year,")


def test_binary_renamed_csv():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10

    assert fails(png, "photo.csv").startswith("This file is a PNG image, not text.")


def test_nul_bytes_are_refused():
    message = fails(b"name,value\nann,1\x00\x00\x01\x02\x00garbage\n" * 3, "data.csv")

    assert message.startswith("This looks like a binary file, not text: it contains NUL bytes.")


def test_nothing_usable_says_why():
    message = fails(b'{"x": [1]}\n{"y": 2}\n', "data.jsonl", mapping="text:x")

    assert message.startswith("Nothing in the file can be used: all 2 rows were rejected.")
    assert "line 1: the text ('x') must be text, not list; line 2: there is no 'x' key." in message


def test_one_enormous_line_is_rejected_without_stopping_the_rest():
    data = b"text\nshort\n" + b"x" * 50_000 + b"\nafter\n"

    prepared = run(data, max_line_chars=10_000)

    assert texts(prepared) == ["short", "after"]
    assert prepared.stats["rejected_examples"] == [
        {"line": 3, "reason": "this line is longer than 10,000 characters, the limit for one line"}
    ]


def test_one_enormous_jsonl_line_and_an_over_long_sample():
    data = b'{"text": "ok"}\n{"text": "' + b"y" * 50_000 + b'"}\n{"text": "' + b"z" * 5_000 + b'"}\n'

    prepared = run(data, "data.jsonl", max_line_chars=10_000, max_sample_chars=1_000)

    assert texts(prepared) == ["ok"]
    assert [e["line"] for e in prepared.stats["rejected_examples"]] == [2, 3]
    assert "over the limit of 1,000" in prepared.stats["rejected_examples"][1]["reason"]


def test_unsupported_types_by_name_and_by_content():
    workbook = io.BytesIO()
    with zipfile.ZipFile(workbook, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")

    assert "Excel workbook (.xlsx), which is not supported" in fails(b"a,b\n1,2\n", "book.xlsx")
    assert fails(workbook.getvalue(), "book.csv").startswith("This file is a ZIP archive")
    assert "PDF" in fails(b"%PDF-1.7\n...", "paper.txt")


def test_gzip_of_a_supported_format_is_read():
    data = gzip.compress(survey_bytes())

    prepared = run(data, "survey.csv.gz")

    assert prepared.stats["compressed"] is True
    assert prepared.stats["format"] == "csv"
    assert prepared.stats["samples"] == 3


def test_gzip_bomb_fails_with_a_clear_message():
    bomb = gzip.compress(b"text\n" + b"aaaaaaaa\n" * 3_000_000)  # 27 MB of text in ~30 KB

    message = fails(bomb, "data.csv.gz", max_decompressed_bytes=10 * 1024 * 1024)

    assert len(bomb) < 100_000
    assert message.startswith("The compressed file expands to more than 10 MB")


def test_gzip_of_zeros_is_refused_as_binary():
    assert "NUL bytes" in fails(gzip.compress(b"\x00" * 10_000_000), "data.csv.gz")


def test_damaged_and_mislabelled_gzip():
    damaged = gzip.compress(many_rows(20_000))[:-5000]

    assert "damaged" in fails(damaged, "data.csv.gz")
    assert "not gzip-compressed" in fails(b"text\nhello\n", "data.csv.gz")


def test_unknown_format_option():
    assert "Unknown format 'xml'" in fails(b"a\n", "a.csv", format="xml")


def test_tokenizer_can_be_overridden(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    words.save(str(path))

    prepared = run(b"text\nhello hello there\n", tokenizer_path=str(path))

    assert prepared.stats["tokens"] == 3
    assert prepared.stats["tokenizer"] == "tokenizer.json"


def test_rejected_examples_are_capped_but_all_are_counted():
    data = b"a,b\n" + b"1\n" * 100 + b"1,2\n"

    prepared = run(data)

    assert prepared.stats["rejected"] == 100
    assert len(prepared.stats["rejected_examples"]) == 20
    assert prepared.stats["rejected_examples"][0] == {
        "line": 2,
        "reason": "expected 2 columns like the header, found 1",
    }


# --- Properties -------------------------------------------------------------------------

cell_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
).filter(lambda s: s.strip() and s == s.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(cell_text, min_size=1, max_size=30), line_end=st.sampled_from(["\n", "\r\n"]))
def test_any_csv_cell_round_trips_through_text_mapping(values, line_end):
    buffer = io.StringIO(newline="")
    # csv.writer quotes only for the characters of its own line end; a bare CR elsewhere must be quoted
    # too, as spreadsheets do, or the file really is ambiguous.
    bare_cr = any("\r" in value for value in values) and line_end == "\n"
    writer = csv.writer(
        buffer, lineterminator=line_end, quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL
    )
    writer.writerow(["body", "n"])
    for n, value in enumerate(values):
        writer.writerow([value, n])

    prepared = run(codecs.BOM_UTF8 + buffer.getvalue().encode(), "cells.csv", mapping="text:body")

    # Line ends inside a quoted cell stay as written, like any other character.
    assert texts(prepared) == values
    assert prepared.stats["rows"] == len(values)
