"""Open an uploaded file as text and stream its records, whatever it is.

Pure Python, no Django: `open_records(stream, filename, ...)` looks at the
first bytes (gzip, BOM, NUL bytes, known binary formats), picks an encoding
and a format, and returns a `Records` whose `rows` iterator yields
`(line_number, record)` or `(line_number, RowError)` one at a time. Nothing
holds the whole file: text comes through a 1 MiB buffer, lines are read with
a length cap, a JSON list is decoded one element at a time.

Problems that make the whole file unusable raise `PreparationError` with a
message meant for the person who uploaded it.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

FORMATS = ("csv", "tsv", "json", "jsonl", "txt")
TXT_MODES = ("line", "paragraph")

SNIFF_BYTES = 64 * 1024
READ_CHUNK = 1024 * 1024
DEFAULT_MAX_LINE_CHARS = 1_000_000
DEFAULT_MAX_DECOMPRESSED_BYTES = 4 * 1024**3

EXTENSIONS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "txt": "txt",
    "text": "txt",
    "md": "txt",
}

# Things people upload that are not text, by their first bytes.
MAGIC = [
    (b"PK\x03\x04", "a ZIP archive (or an Excel/Word file, which are ZIP archives)"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office file (.xls/.doc)"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"PAR1", "a Parquet file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program"),
]
UNSUPPORTED_EXTENSIONS = {
    "xlsx": "an Excel workbook",
    "xls": "an Excel workbook",
    "ods": "a spreadsheet",
    "numbers": "a Numbers spreadsheet",
    "parquet": "a Parquet file",
    "pdf": "a PDF document",
    "doc": "a Word document",
    "docx": "a Word document",
    "zip": "a ZIP archive",
    "tar": "a tar archive",
    "bz2": "a bzip2 archive",
    "xz": "an xz archive",
    "7z": "a 7-Zip archive",
    "xml": "an XML file",
    "html": "a web page",
    "png": "an image",
    "jpg": "an image",
    "jpeg": "an image",
}
SAVE_AS = "Save it as CSV, TSV, JSON, JSON Lines or plain text (UTF-8) and upload that."


# Python's JSON decoder recurses once per level; a hostile file nests far deeper than that.
TOO_DEEP = "nested too deeply (more than about a thousand levels of [ or {)"


class PreparationError(Exception):
    """The file as a whole cannot be used; the message says why, for its owner."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One row that cannot become a sample; the others carry on."""

    reason: str


@dataclass
class Records:
    """What a reader found: the format, the columns and a one-pass row iterator."""

    format: str
    kind: str  # "table": rows are lists of str; "objects": dicts; "text": str
    columns: list[str]
    rows: Iterator[tuple[int, Any]]
    encoding: str
    compressed: bool = False
    notes: list[str] = field(default_factory=list)
    decoding: DecodingReport | None = None

    @property
    def encoding_note(self) -> str:
        """Said to the user when the file was not plain UTF-8; complete once the rows are consumed."""
        return self.decoding.note() if self.decoding else ""


# --- Decoding ------------------------------------------------------------------

# A file read as UTF-8 is decoded with "surrogateescape": each byte that is not UTF-8 becomes
# U+DC80..U+DCFF, which a UTF-8 decoder never yields otherwise, so a line holding one is found
# by that character and refused with its number, and the rest of the file is still read.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
SAVE_AS_UTF8 = "If accented letters look wrong, save the file as UTF-8 and upload it again."


@dataclass
class DecodingReport:
    """How the bytes became text: the codec, why a legacy one was chosen, the lines not valid in it."""

    codec: str
    legacy_reason: str = ""
    bad_lines: int = 0
    first_bad_line: int = 0

    def flaw(self, number: int, text: str, offset: int = 0) -> RowError | None:
        """The refusal of line `number` when `text` (starting at its column `offset + 1`) holds a
        byte that was not UTF-8; counted once per line."""
        found = _ESCAPED_BYTE.search(text)
        if found is None:
            return None
        self.bad_lines += 1
        self.first_bad_line = self.first_bad_line or number
        byte = ord(found.group()) - 0xDC00
        return RowError(f"not valid UTF-8 (byte 0x{byte:02x} at column {offset + found.start() + 1})")

    def note(self) -> str:
        if self.legacy_reason:
            return f"Read as Windows-1252: {self.legacy_reason}. {SAVE_AS_UTF8}"
        if self.bad_lines:
            lines = f"{self.bad_lines:,} line{'s are' if self.bad_lines != 1 else ' is'}"
            return (
                f"{lines} not valid UTF-8 and left out (the first is line {self.first_bad_line:,}); "
                f"the rest of the file was read as UTF-8. {SAVE_AS_UTF8}"
            )
        return ""


class _HeadThenStream(io.RawIOBase):
    """Serves the sniffed head again, then the rest of the stream, counting bytes against a cap."""

    def __init__(self, head: bytes, stream: BinaryIO, cap: int | None, cap_message: str):
        self._head = memoryview(head)
        self._stream = stream
        self._cap = cap
        self._cap_message = cap_message
        self._total = len(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        if not data:
            return 0
        self._total += len(data)
        if self._cap is not None and self._total > self._cap:
            raise PreparationError(self._cap_message)
        n = len(data)
        buffer[:n] = data
        return n


def _read_head(stream: BinaryIO, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining > 0:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _describe_size(n: int) -> str:
    if n >= 1024**3 and n % 1024**3 == 0:
        return f"{n // 1024**3:,} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:,.0f} MB"
    return f"{n:,} bytes"


def _guess_encoding(head: bytes, at_eof: bool) -> tuple[str, int, str]:
    """Return (codec, BOM length to skip, why a legacy codec) for the first bytes, or raise for
    binary content."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3, ""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32", 0, ""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", 0, ""
    if b"\x00" in head:
        # UTF-16 without a BOM: every other byte of ASCII text is NUL.
        if len(head) >= 8:
            even, odd = head[0::2], head[1::2]
            if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
                return "utf-16-le", 0, ""
            if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
                return "utf-16-be", 0, ""
        raise PreparationError("This looks like a binary file, not text: it contains NUL bytes. " + SAVE_AS)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=at_eof)
    except UnicodeDecodeError as exc:
        # Only ASCII before the first bad byte: nothing says UTF-8, so it is a legacy file. After
        # real UTF-8 letters, a bad byte is a flaw in a UTF-8 file: its line is refused instead.
        if head[: exc.start].isascii():
            line = head.count(b"\n", 0, exc.start) + 1
            return "cp1252", 0, f"the file is not UTF-8 (first bad byte on line {line:,})"
    return "utf-8", 0, ""


def _check_magic(head: bytes) -> None:
    for magic, what in MAGIC:
        if head.startswith(magic):
            raise PreparationError(f"This file is {what}, not text. {SAVE_AS}")


def _split_name(filename: str) -> tuple[str, bool]:
    """Return (extension without .gz, whether the name ends in .gz)."""
    name = (filename or "").strip().lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    return ext, gz


# --- Format detection --------------------------------------------------------


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


def _looks_like_jsonl(text: str) -> bool:
    """The first line is a whole object and more follows it: a file of one object is not JSON Lines."""
    first, _, rest = text.lstrip().partition("\n")
    try:
        return isinstance(json.loads(first), dict) and bool(rest.strip())
    except (ValueError, RecursionError):
        return False


def _delimiter_of(text: str) -> str | None:
    """',' or '\\t' when the first lines split consistently on one of them."""
    lines = [line for line in text.splitlines()[:20] if line.strip()]
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last sniffed line may be cut short
    if not lines:
        return None
    for delimiter in ("\t", ",", ";"):
        try:
            counts = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        if counts and counts[0] > 1 and all(c == counts[0] for c in counts):
            return "tsv" if delimiter == "\t" else "csv"
    return None


def csv_delimiter(text_head: str) -> str:
    """',' unless the header splits on ';' and has no comma (spreadsheets in comma-decimal locales)."""
    first = _first_line(text_head.lstrip())
    if ";" in first and "," not in first:
        lines = [line for line in text_head.splitlines()[:20] if line.strip()][:-1] or [first]
        counts = {len(row) for row in csv.reader(lines, delimiter=";")}
        if len(counts) == 1 and counts.pop() > 1:
            return ";"
    return ","


def detect_format(filename: str, text_head: str) -> str:
    """Decide the format from the extension, then let the content correct it.

    `text_head` is the first decoded part of the file. The content wins where
    it clearly disagrees: a `.json` that is one object per line is JSON Lines,
    a `.csv` whose first lines split on tabs (and not commas) is TSV.
    """
    ext, _ = _split_name(filename)
    if ext in UNSUPPORTED_EXTENSIONS:
        raise PreparationError(
            f"This file is {UNSUPPORTED_EXTENSIONS[ext]} (.{ext}), which is not supported. {SAVE_AS}"
        )
    by_name = EXTENSIONS.get(ext)
    stripped = text_head.lstrip()
    if by_name == "txt":
        return "txt"
    if by_name in ("json", "jsonl") or by_name is None:
        if stripped.startswith("["):
            return "json"
        if stripped.startswith("{"):
            # A .jsonl whose first line is longer than the sniffed head cannot be parsed here;
            # its name says what it is.
            return "jsonl" if by_name == "jsonl" or _looks_like_jsonl(stripped) else "json"
        if by_name is not None:
            return by_name  # its reader will say what is wrong
    if by_name in ("csv", "tsv"):
        sniffed = _delimiter_of(text_head)
        if sniffed in ("csv", "tsv") and sniffed != by_name:
            first = _first_line(stripped)
            own = "\t" if by_name == "tsv" else ","
            if own not in first:
                return sniffed
        return by_name
    return _delimiter_of(text_head) or "txt"


# --- Opening -----------------------------------------------------------------


def open_text(
    stream: BinaryIO,
    filename: str,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> tuple[io.TextIOWrapper, str, str, bool, DecodingReport]:
    """Return (text stream, encoding, first decoded text, compressed?, report).

    The text stream keeps line ends as they are (`newline=""`), as the csv
    module needs; readers strip them.
    """
    raw_head = _read_head(stream, SNIFF_BYTES)
    if not raw_head:
        raise PreparationError("The file is empty.")
    _, gz_name = _split_name(filename)
    compressed = raw_head.startswith(b"\x1f\x8b")
    source: BinaryIO = stream
    cap = None
    if compressed:
        again = io.BufferedReader(_HeadThenStream(raw_head, stream, None, ""), READ_CHUNK)
        source = gzip.GzipFile(fileobj=again, mode="rb")  # type: ignore[assignment]
        cap = max_decompressed_bytes
        try:
            head = _read_head(source, SNIFF_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise PreparationError(f"The compressed file is damaged and cannot be read ({exc}).") from None
        if not head:
            raise PreparationError("The compressed file is empty.")
        if len(head) > cap:
            raise PreparationError(_cap_message(cap))
    elif gz_name:
        raise PreparationError("The file name ends in .gz but the file is not gzip-compressed.")
    else:
        head = raw_head
    _check_magic(head)
    at_eof = len(head) < SNIFF_BYTES
    codec, bom, legacy_reason = _guess_encoding(head, at_eof)
    raw = _HeadThenStream(head[bom:], source, cap, _cap_message(cap or 0))
    report = DecodingReport(codec, legacy_reason)
    errors = {"utf-8": "surrogateescape", "cp1252": "replace"}.get(codec, "strict")
    text = io.TextIOWrapper(io.BufferedReader(raw, READ_CHUNK), encoding=codec, errors=errors, newline="")
    decoded_head = head[bom:].decode(codec, errors="replace").removeprefix("\ufeff")
    return text, codec, decoded_head, compressed, report


def _cap_message(cap: int) -> str:
    return (
        f"The compressed file expands to more than {_describe_size(cap)}, the limit for a dataset. "
        "Upload a smaller file, or split it."
    )


# --- Lines --------------------------------------------------------------------


def physical_lines(
    text: io.TextIOBase, max_chars: int, flawed: list[tuple[int, RowError]], report: DecodingReport
) -> Iterator[str]:
    """Yield the file's lines with their line ends, adding `(number, refusal)` to `flawed` for
    each line the reader must refuse the row of: a line over `max_chars`, skipped without reading
    it whole and yielded as a bare newline; a line holding a byte that is not UTF-8, yielded as it
    is (so a quoted CSV field still ends where it does)."""
    readline = text.readline
    flaw = report.flaw if report.codec == "utf-8" else None
    number = 0
    while True:
        line = readline(max_chars)
        if not line:
            return
        number += 1
        if len(line) >= max_chars and line[-1] not in "\r\n":
            while True:
                rest = readline(max_chars)
                if not rest or rest[-1] in "\r\n":
                    break
            flawed.append((number, _too_long(max_chars)))
            line = "\n"
        elif flaw is not None and not line.isascii():
            refusal = flaw(number, line)
            if refusal is not None:
                flawed.append((number, refusal))
        yield line


def _line_number(flaw: tuple[int, RowError]) -> int:
    return flaw[0]


def _too_long(max_chars: int) -> RowError:
    return RowError(f"this line is longer than {max_chars:,} characters, the limit for one line")


# --- Readers ------------------------------------------------------------------


def _clean_columns(header: list[str]) -> list[str]:
    columns: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(header, 1):
        name = raw.strip().lstrip("\ufeff") or f"column_{index}"
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name}_{n}", n + 1
        seen.add(unique)
        columns.append(unique)
    return columns


def read_delimited(
    text: io.TextIOBase, delimiter: str, max_line_chars: int, report: DecodingReport
) -> tuple[list[str], Iterator]:
    """CSV/TSV with a header row. Rows are lists of str, numbered by the line where they start."""
    if csv.field_size_limit() < max_line_chars:
        csv.field_size_limit(max_line_chars)
    flawed: list[tuple[int, RowError]] = []
    reader = csv.reader(physical_lines(text, max_line_chars, flawed, report), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    while header is None:
        try:
            row = next(reader)
        except StopIteration:
            raise PreparationError("The file has no rows: it holds only blank lines.") from None
        except csv.Error as exc:
            raise PreparationError(
                f"The header row (line {reader.line_num}) cannot be read: {exc}."
            ) from None
        if flawed:
            line, refusal = flawed[0]
            if refusal == _too_long(max_line_chars):
                raise PreparationError(
                    f"Line {line} is longer than {max_line_chars:,} characters; "
                    "a header row that long is not a table."
                )
            raise PreparationError(f"The header row (line {line}) cannot be read: {refusal.reason}.")
        if any(cell.strip() for cell in row):
            header = row
            header_line = reader.line_num
    columns = _clean_columns(header)

    def rows() -> Iterator[tuple[int, Any]]:
        width = len(columns)
        end = header_line
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                yield (
                    start,
                    RowError(
                        f"this row cannot be read as {('TSV' if delimiter == chr(9) else 'CSV')}: {exc}"
                    ),
                )
                continue
            end = reader.line_num
            if flawed and flawed[0][0] <= end:
                first = flawed[0]
                del flawed[: bisect.bisect_right(flawed, end, key=_line_number)]
                yield first
                continue
            if not any(row):
                continue  # blank line, or a spreadsheet's row of empty cells
            if len(row) != width:
                if len(row) > width and not any(row[width:]):
                    row = row[:width]  # trailing empty cells from a spreadsheet
                else:
                    plural = "s" if width != 1 else ""
                    yield (
                        start,
                        RowError(f"expected {width} column{plural} like the header, found {len(row)}"),
                    )
                    continue
            yield start, row

    return columns, rows()


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "an object"


class LongNumberDecoder(json.JSONDecoder):
    """Reads an integer longer than Python converts (`sys.get_int_max_str_digits()`) as None and
    notes its length, so the record holding it can be refused with its line instead of a crash.

    Slower than the plain decoder (a call per integer): used only on a record the plain one refused."""

    def __init__(self) -> None:
        super().__init__(parse_int=self._parse_int)
        self.longest = 0

    def _parse_int(self, digits: str) -> int | None:
        try:
            return int(digits)
        except ValueError:
            self.longest = max(self.longest, len(digits.lstrip("-")))
            return None

    def refusal(self) -> RowError:
        limit = sys.get_int_max_str_digits()
        return RowError(f"a number with {self.longest:,} digits; at most {limit:,} digits can be read")


def read_jsonl(text: io.TextIOBase, max_line_chars: int, report: DecodingReport) -> Iterator[tuple[int, Any]]:
    flawed: list[tuple[int, RowError]] = []
    for number, line in enumerate(physical_lines(text, max_line_chars, flawed, report), 1):
        if flawed:
            yield flawed.pop()
            continue
        line = line.strip()
        if line:
            yield number, _json_line(line)


_PLAIN_JSON = json.JSONDecoder()


def _json_line(line: str, decoder: json.JSONDecoder = _PLAIN_JSON) -> Any:
    """One JSON Lines record, or the RowError that says why it cannot be one."""
    try:
        value = decoder.decode(line)
    except json.JSONDecodeError as exc:
        return RowError(f"not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return RowError(TOO_DEEP)
    except ValueError:  # an integer too long to convert: read the line again to say so
        return _json_line(line, LongNumberDecoder())
    if isinstance(decoder, LongNumberDecoder) and decoder.longest:
        return decoder.refusal()
    if not isinstance(value, dict):
        return RowError(f"expected a JSON object {{...}}, found {_json_type(value)}")
    return value


_WHITESPACE = " \t\r\n"


def read_json_list(
    text: io.TextIOBase, max_line_chars: int, report: DecodingReport, notes: list[str]
) -> Iterator[tuple[int, Any]]:
    """A JSON array of objects, decoded one element at a time with `raw_decode`; or the one
    array of objects inside an object (`{"data": [...]}`), whose key is added to `notes`.

    A syntax error inside the array cannot be skipped over safely, so it ends
    the file with a `PreparationError` that names the line and column.
    """
    plain = json.JSONDecoder()
    buf = ""
    pos = 0
    eof = False
    escaped = False  # a byte that is not UTF-8 was seen: elements are searched for it
    counted_to = 0  # buf[:counted_to] holds (line_at_counted - 1) newlines since the file's start
    line_at_counted = 1

    def line_at(index: int) -> int:
        nonlocal counted_to, line_at_counted
        if index > counted_to:
            line_at_counted += buf.count("\n", counted_to, index)
            counted_to = index
        return line_at_counted

    def column_at(index: int) -> int:
        return index - (buf.rfind("\n", 0, index) + 1) + 1

    def fill() -> bool:
        nonlocal buf, pos, eof, counted_to, escaped
        if eof:
            return False
        chunk = text.read(READ_CHUNK)
        if not chunk:
            eof = True
            return False
        if pos > READ_CHUNK:
            line_at(pos)
            buf, counted_to, pos = buf[pos:], 0, 0
        buf += chunk
        if not escaped and report.codec == "utf-8" and not chunk.isascii():
            escaped = _ESCAPED_BYTE.search(chunk) is not None
        return True

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            if pos < len(buf) or not fill():
                return

    def at_end() -> bool:
        skip_ws()
        return pos >= len(buf)

    def broken(message: str, at: int) -> PreparationError:
        where = f"line {line_at(at)}, column {column_at(at)}"
        return PreparationError(f"The JSON is broken at {where}: {message}.")

    def decode() -> tuple[Any, int]:
        """The value at `pos` and where it ends; a RowError for a number too long to read."""
        careful = None
        while True:
            try:
                value, end = (careful or plain).raw_decode(buf, pos)
                break
            except RecursionError:
                raise broken(TOO_DEEP, pos) from None
            except json.JSONDecodeError as exc:
                if eof:
                    raise broken(exc.msg, exc.pos) from None
                if len(buf) - pos > max_line_chars:
                    error = broken(exc.msg, exc.pos)
                    raise PreparationError(
                        f"{error} (Or one element is longer than {max_line_chars:,} characters, the limit.)"
                    ) from None
                fill()
            except ValueError:  # an integer too long to convert: read this element again, carefully
                careful = LongNumberDecoder()
        if careful and careful.longest:
            return careful.refusal(), end
        return value, end

    def elements() -> Iterator[tuple[int, Any]]:
        """The elements of the list whose [ is just behind `pos`, up to and past its ]."""
        nonlocal pos
        if at_end():
            raise broken("the list is not closed with ]", pos)
        if buf[pos] == "]":
            pos += 1
            return
        while True:
            skip_ws()
            value, end = decode()
            found = _ESCAPED_BYTE.search(buf, pos, end) if escaped else None
            if found is not None:
                at = found.start()
                yield line_at(at), report.flaw(line_at(at), buf[at], column_at(at) - 1)
            else:
                if not isinstance(value, dict | RowError):
                    value = RowError(f"expected a JSON object {{...}}, found {_json_type(value)}")
                yield line_at(pos), value
            pos = end
            if at_end():
                raise broken("the list is not closed with ]", pos)
            if buf[pos] == ",":
                pos += 1
                continue
            if buf[pos] == "]":
                pos += 1
                return
            raise broken("expected , or ] after an element", pos)

    def records_in_object() -> Iterator[tuple[int, Any]]:
        """The one value of the object at `pos` that is a list of objects, or a refusal."""
        nonlocal pos
        pos += 1
        keys: list[str] = []  # the first few, for the message
        key_count = 0
        records_key: str | None = None
        while not at_end() and buf[pos] != "}":
            key, end = decode()
            if not isinstance(key, str):
                raise broken("expected a key in double quotes", pos)
            pos = end
            key_count += 1
            if len(keys) < KEYS_SHOWN:
                keys.append(key)
            if at_end() or buf[pos] != ":":
                raise broken("expected : after a key", pos)
            pos += 1
            if not at_end() and buf[pos] == "[":
                pos += 1
                holds_objects = not at_end() and buf[pos] == "{"
                if holds_objects and records_key is not None:
                    raise PreparationError(
                        f"{ONE_OBJECT} its keys {_quoted(records_key)} and {_quoted(key)} both hold lists "
                        "of objects. Keep only the list to train on, or upload each as a file of its own."
                    )
                if holds_objects:
                    records_key = key
                    notes.append(f"The records were read from the list under {_quoted(key)}.")
                    yield from elements()
                else:
                    for _ in elements():  # a list of something else: passed over
                        pass
            else:
                _, pos = decode()
            if at_end() or buf[pos] not in ",}":
                raise broken("expected , or } after a value", pos)
            if buf[pos] == ",":
                pos += 1
        pos += 1
        if records_key is None:
            found = "it is empty ({})."
            if keys:
                found = f"its keys are {_quoted_list(keys, key_count)}, and none holds a list of objects."
            raise PreparationError(
                f"{ONE_OBJECT} {found} A JSON file must be a list of objects "
                '([{...}, {...}]), or an object with one such list ({"data": [{...}, ...]}). '
                "If each line is its own object, name the file .jsonl."
            )

    if at_end():
        raise PreparationError("The file is empty.")
    opening = buf[pos]
    if opening == "{":
        yield from records_in_object()
    elif opening == "[":
        pos += 1
        yield from elements()
    else:
        raise PreparationError(
            "A JSON file must be a list of objects ([{...}, {...}]); this one starts with something else."
        )
    if not at_end():
        raise broken(f"unexpected text after the closing {']' if opening == '[' else '}'}", pos)


ONE_OBJECT = "The file holds one JSON object, not a list of records:"
KEYS_SHOWN = 10


def _quoted(key: str) -> str:
    return json.dumps(key if len(key) <= 40 else key[:39] + "…", ensure_ascii=False)


def _quoted_list(keys: list[str], count: int) -> str:
    shown = ", ".join(_quoted(key) for key in keys)
    return shown + (f" and {count - len(keys):,} more" if count > len(keys) else "")


def read_text(
    text: io.TextIOBase, mode: str, max_line_chars: int, report: DecodingReport
) -> Iterator[tuple[int, Any]]:
    """Plain text: one sample per non-blank line, or per blank-line-separated paragraph."""
    flawed: list[tuple[int, RowError]] = []
    lines = physical_lines(text, max_line_chars, flawed, report)
    if mode == "line":
        for number, line in enumerate(lines, 1):
            if flawed:
                yield flawed.pop()
                continue
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line
        return
    paragraph: list[str] = []
    start = 0
    size = 0
    refusal: tuple[int, RowError] | None = None  # the paragraph's first flawed line
    for number, line in enumerate(lines, 1):
        if flawed:
            start = start or number
            refusal = refusal or flawed[0]
            flawed.clear()
            continue
        line = line.rstrip("\r\n")
        if line.strip():
            start = start or number
            if refusal is None:
                paragraph.append(line)
                size += len(line) + 1
                if size > max_line_chars:
                    refusal = (start, _too_long_paragraph(max_line_chars))
            continue
        if start:
            yield refusal or (start, "\n".join(paragraph))
        paragraph, start, size, refusal = [], 0, 0, None
    if start:
        yield refusal or (start, "\n".join(paragraph))


def _too_long_paragraph(max_chars: int) -> RowError:
    return RowError(f"this paragraph is longer than {max_chars:,} characters, the limit for one sample")


# --- Entry point --------------------------------------------------------------


def open_records(
    stream: BinaryIO,
    filename: str,
    format: str = "auto",
    txt_mode: str = "line",
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> Records:
    """Sniff `stream` (binary, read once, front to back) and return its records.

    `filename` is only used for its extension. `format` is "auto" or one of
    FORMATS; with "auto" the content can correct the extension.
    """
    if format not in ("auto", *FORMATS):
        raise PreparationError(f"Unknown format {format!r}; choose one of auto, {', '.join(FORMATS)}.")
    if txt_mode not in TXT_MODES:
        raise PreparationError(f"Unknown text mode {txt_mode!r}; choose line or paragraph.")
    ext, _ = _split_name(filename)
    if format == "auto" and ext in UNSUPPORTED_EXTENSIONS:
        raise PreparationError(
            f"This file is {UNSUPPORTED_EXTENSIONS[ext]} (.{ext}), which is not supported. {SAVE_AS}"
        )
    text, codec, head, compressed, report = open_text(stream, filename, max_decompressed_bytes)
    encoding = {"utf-16-le": "utf-16", "utf-16-be": "utf-16"}.get(codec, codec)
    if not head.strip():
        raise PreparationError("The file holds only blank space.")
    detected = detect_format(filename, head) if format == "auto" else format
    notes: list[str] = []
    ext_format = EXTENSIONS.get(ext)
    if format == "auto" and ext_format and ext_format != detected:
        found = detected.upper()
        notes.append(f"The file is named .{ext} but its content is {found}; it was read as {found}.")
    rows: Iterator
    if detected in ("csv", "tsv"):
        delimiter = "\t" if detected == "tsv" else csv_delimiter(head)
        if delimiter == ";":
            notes.append("Columns are separated by semicolons.")
        columns, rows = read_delimited(text, delimiter, max_line_chars, report)
        kind = "table"
    elif detected == "jsonl":
        columns, rows = _peek_keys(read_jsonl(text, max_line_chars, report))
        kind = "objects"
    elif detected == "json":
        columns, rows = _peek_keys(read_json_list(text, max_line_chars, report, notes))
        kind = "objects"
    else:
        columns, rows, kind = [], read_text(text, txt_mode, max_line_chars, report), "text"
    return Records(
        format=detected,
        kind=kind,
        columns=columns,
        rows=_read_errors_as_messages(rows),
        encoding=encoding,
        compressed=compressed,
        notes=notes,
        decoding=report,
    )


def _read_errors_as_messages(rows: Iterator) -> Iterator:
    """The rows, with what goes wrong reading the file further on turned into a message for its owner."""
    try:
        yield from rows
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise PreparationError(f"The compressed file is damaged and cannot be read ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise PreparationError(
            f"The file is not valid {exc.encoding.upper()} text ({exc.reason}). "
            "Save it as UTF-8 and upload it again."
        ) from None


def _peek_keys(rows: Iterator[tuple[int, Any]]) -> tuple[list[str], Iterator]:
    """The keys of the first object, with the rows read to find it put back in front."""
    seen: list[tuple[int, Any]] = []
    columns: list[str] = []
    for item in rows:
        seen.append(item)
        if isinstance(item[1], dict):
            columns = [str(key) for key in item[1]]
            break
        if len(seen) >= 1000:
            break

    def chained() -> Iterator:
        yield from seen
        yield from rows

    return columns, chained()
