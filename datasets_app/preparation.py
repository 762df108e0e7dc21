"""Turn an uploaded file into training samples, in one streaming pass.

    result = prepare(source, "survey.csv", train_out, validation_out, PrepareOptions())

`source` is a binary stream read once, front to back; `train_out` and
`validation_out` are binary streams that receive JSONL, one sample a line,
in one of three shapes: {"text"}, {"prompt", "completion"} or
{"messages": [{"role", "content"}, ...]}. Each sample goes to validation with
probability `validation_fraction`, decided by a seeded RNG in file order, so
the same file and options give the same split; nothing is held back except
one sample (so that a non-empty dataset always gets at least one validation
sample when the fraction is above zero).

Tokens are counted exactly with a `tokenizers` tokenizer (GPT-2's byte-level
BPE, vendored under tokenizer/, or the tokenizer.json named by
`PrepareOptions.tokenizer_path`), batched and on a background thread, on the
sample's text: the text; prompt + completion; or the message contents joined
by newlines. No chat template or special tokens are added, so a training run
that adds them sees a few more tokens per sample.

A file that cannot be used at all raises `PreparationError`; rows that
cannot become samples are counted, and the first ones kept with their line
numbers, in the result. Pure Python: no Django here, no torch, no network.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from llmtuner.text import UNSTORABLE

from .mapping import (
    BoundMapping,
    MappingError,
    SampleError,
    bind_mapping,
    display_text,
    parse_mapping,
)
from .readers import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_MAX_LINE_CHARS,
    PreparationError,
    Records,
    RowError,
    open_records,
)

__all__ = [
    "MappingError",
    "OutputTooLarge",
    "PreparationError",
    "PrepareOptions",
    "PreparationResult",
    "inspect_file",
    "load_tokenizer",
    "prepare",
]

VENDORED_TOKENIZER = Path(__file__).resolve().parent / "tokenizer" / "gpt2-tokenizer.json.gz"
DEFAULT_SEED = 20_240_601
TOKEN_BATCH = 2048
HISTOGRAM_BUCKETS = 10
MAX_INDEX_ENTRIES = 10_000
# `progress` is called every PROGRESS_EVERY_ROWS rows, and also once PROGRESS_SECONDS have passed
# (the clock is read every PROGRESS_CHECK_ROWS rows): the caller's heartbeat and cancel check.
PROGRESS_EVERY_ROWS = 100_000
PROGRESS_CHECK_ROWS = 1000
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class PrepareOptions:
    format: str = "auto"  # auto | csv | tsv | json | jsonl | txt
    txt_mode: str = "line"  # line | paragraph
    mapping: str = ""  # "" or "auto": chosen from the columns
    validation_fraction: float = 0.05
    seed: int = DEFAULT_SEED
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS
    max_sample_chars: int = 200_000
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    tokenizer_path: str | None = None  # a tokenizer.json (or .json.gz); None: vendored GPT-2
    max_rejected_examples: int = 20
    preview_samples: int = 5
    preview_chars: int = 150
    index_every: int = 50  # keep the byte offset of every Nth sample, for paging through the files
    max_output_bytes: int | None = None  # the two outputs together; past it, OutputTooLarge

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise PreparationError("The validation fraction must be at least 0 and below 1.")


class OutputTooLarge(PreparationError):
    """The samples would take more than `PrepareOptions.max_output_bytes` (the caller says why)."""

    def __init__(self, limit: int):
        super().__init__(f"The samples would take more than {limit:,} bytes.")
        self.limit = limit


@dataclass
class PreparationResult:
    stats: dict[str, Any]
    preview: list[dict[str, Any]]
    index: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.stats.get("samples", 0) > 0


# --- Tokens ---------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    """A `tokenizers.Tokenizer`, loaded once per process. Imported here so the web process never loads it."""
    from tokenizers import Tokenizer

    file = Path(path) if path else VENDORED_TOKENIZER
    data = file.read_bytes()
    if file.suffix == ".gz":
        data = gzip.decompress(data)
    return Tokenizer.from_str(data.decode("utf-8"))


def tokenizer_name(path: str | None) -> str:
    return Path(path).name if path else "gpt2"


class TokenCounter:
    """Counts tokens of texts in batches on one background thread, so parsing and counting overlap.

    `encode_batch_fast` releases the GIL and spreads a batch over the cores; at
    most two batches are in flight, so memory stays bounded.
    """

    def __init__(self, tokenizer, batch_size: int = TOKEN_BATCH):
        self._tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._batch_size = batch_size
        self._texts: list[str] = []
        self._flags: list[bool] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-count")
        self._pending: list[Future] = []
        self.lengths: Counter[int] = Counter()
        self.total = 0
        self.validation = 0

    def add(self, text: str, validation: bool) -> None:
        self._texts.append(text)
        self._flags.append(validation)
        if len(self._texts) >= self._batch_size:
            self._submit()

    def _submit(self) -> None:
        texts, flags = self._texts, self._flags
        self._texts, self._flags = [], []
        self._pending.append(self._pool.submit(self._count, texts, flags))
        while len(self._pending) > 2:
            self._collect(self._pending.pop(0))

    def _count(self, texts: list[str], flags: list[bool]) -> tuple[list[int], int]:
        lengths = [len(encoding) for encoding in self._encode(texts, add_special_tokens=False)]
        return lengths, sum(n for n, f in zip(lengths, flags, strict=True) if f)

    def _collect(self, future: Future) -> None:
        lengths, validation = future.result()
        self.lengths.update(lengths)
        self.total += sum(lengths)
        self.validation += validation

    def finish(self) -> None:
        if self._texts:
            self._submit()
        while self._pending:
            self._collect(self._pending.pop(0))
        self._pool.shutdown()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def token_length_stats(lengths: Counter[int]) -> tuple[dict[str, Any], list[dict[str, int]]]:
    """Summary figures and a histogram of ~10 equal-width buckets from min to max."""
    if not lengths:
        return {}, []
    keys = sorted(lengths)
    total = sum(lengths.values())
    low, high = keys[0], keys[-1]

    def percentile(fraction: float) -> int:
        target = max(1, math.ceil(total * fraction))
        seen = 0
        for key in keys:
            seen += lengths[key]
            if seen >= target:
                return key
        return high

    summary = {
        "min": low,
        "max": high,
        "mean": round(sum(k * v for k, v in lengths.items()) / total, 1),
        "median": percentile(0.5),
        "p95": percentile(0.95),
    }
    width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BUCKETS))
    buckets = [
        {"start": low + i * width, "end": min(high, low + (i + 1) * width - 1), "count": 0}
        for i in range(math.ceil((high - low + 1) / width))
    ]
    for key, count in lengths.items():
        buckets[(key - low) // width]["count"] += count
    return summary, buckets


# --- Output ---------------------------------------------------------------------


class SplitWriter:
    """One output stream: counts samples and bytes and keeps a sparse offset index for paging."""

    def __init__(self, out: BinaryIO, every: int):
        self._write = out.write
        self.samples = 0
        self.bytes = 0
        self.every = every
        self.offsets: list[int] = []

    def write(self, line: bytes) -> None:
        if self.samples % self.every == 0:
            self.offsets.append(self.bytes)
            if len(self.offsets) > MAX_INDEX_ENTRIES:
                self.offsets = self.offsets[::2]
                self.every *= 2
        self._write(line)
        self.samples += 1
        self.bytes += len(line)

    def index(self) -> dict[str, Any]:
        return {"every": self.every, "offsets": self.offsets, "samples": self.samples, "bytes": self.bytes}


# JSON leaves these raw, but str.splitlines() and some JSONL readers break lines on them.
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")


def unstorable_reason(text: str) -> str | None:
    """Why text cannot be kept (NUL, or broken Unicode), or None."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "the sample contains a NUL character (binary data)"
    return f"the sample contains invalid Unicode (an unpaired surrogate, \\u{ord(found.group()):04x})"


def _escape_line_break(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


# --- The pass -------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _usable_or_raise(rows: int, rejected: int, examples: list[dict[str, Any]], records: Records) -> None:
    if rows == 0:
        if records.kind == "table":
            raise PreparationError(
                "The file has a header row but no data rows below it"
                f" (columns: {', '.join(records.columns[:12])}{', …' if len(records.columns) > 12 else ''})."
            )
        raise PreparationError("The file holds no records.")
    first = "; ".join(f"line {e['line']}: {e['reason']}" for e in examples[:3])
    raise PreparationError(
        f"Nothing in the file can be used: all {rejected:,} row{'s were' if rejected != 1 else ' was'} "
        f"rejected. First problems: {first}."
    )


def prepare(
    source: BinaryIO,
    filename: str,
    train_out: BinaryIO,
    validation_out: BinaryIO,
    options: PrepareOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> PreparationResult:
    """Read `source`, write samples to the two outputs, and return the stats, preview and index.

    Raises `PreparationError` (or its subclass `MappingError`) when nothing
    usable comes out, with the reason for the user, and `OutputTooLarge` past
    `max_output_bytes`. `progress(rows)` is called every PROGRESS_EVERY_ROWS
    rows or PROGRESS_SECONDS, whichever comes first; what it raises stops the pass.
    """
    options = options or PrepareOptions()
    started = time.monotonic()
    next_progress = started + PROGRESS_SECONDS
    mapping = parse_mapping(options.mapping)
    tokenizer = load_tokenizer(options.tokenizer_path)
    records = open_records(
        source,
        filename,
        format=options.format,
        txt_mode=options.txt_mode,
        max_line_chars=options.max_line_chars,
        max_decompressed_bytes=options.max_decompressed_bytes,
    )
    bound: BoundMapping = bind_mapping(mapping, records.kind, records.columns)
    sample = bound.sample

    train = SplitWriter(train_out, options.index_every)
    validation = SplitWriter(validation_out, options.index_every)
    counter = TokenCounter(tokenizer)
    encode = json.JSONEncoder(ensure_ascii=False).encode
    draw = random.Random(options.seed).random
    fraction = options.validation_fraction
    max_chars = options.max_sample_chars
    keep_examples = options.max_rejected_examples
    keep_preview = options.preview_samples
    max_output = options.max_output_bytes

    rows = rejected = characters = 0
    examples: list[dict[str, Any]] = []
    preview: list[dict[str, Any]] = []
    held: tuple[bytes, str] | None = None  # the latest sample, written when the next arrives

    def reject(line: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(examples) < keep_examples:
            examples.append({"line": line, "reason": reason})

    try:
        for line, record in records.rows:
            rows += 1
            if progress is not None and (
                rows % PROGRESS_EVERY_ROWS == 0
                or (rows % PROGRESS_CHECK_ROWS == 0 and time.monotonic() >= next_progress)
            ):
                progress(rows)
                next_progress = time.monotonic() + PROGRESS_SECONDS
            if record.__class__ is RowError:
                reject(line, record.reason)
                continue
            try:
                obj, text = sample(record)
            except SampleError as exc:
                reject(line, str(exc))
                continue
            if len(text) > max_chars:
                reject(line, f"the sample is {len(text):,} characters, over the limit of {max_chars:,}")
                continue
            problem = unstorable_reason(text)
            if problem is None:
                encoded = encode(obj)
                if not encoded.isascii() and _LINE_BREAKS.search(encoded):
                    encoded = _LINE_BREAKS.sub(_escape_line_break, encoded)
                try:
                    encoded_line = (encoded + "\n").encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate outside the text (a key, a role)
                    problem = unstorable_reason(encoded)
            if problem:
                reject(line, problem)
                continue
            characters += len(text)
            if len(preview) < keep_preview:
                preview.append({"line": line, "text": _truncate(display_text(obj), options.preview_chars)})
            if held is not None:
                if draw() < fraction:
                    validation.write(held[0])
                    counter.add(held[1], True)
                else:
                    train.write(held[0])
                    counter.add(held[1], False)
                if max_output is not None and train.bytes + validation.bytes > max_output:
                    raise OutputTooLarge(max_output)
            held = (encoded_line, text)
        if held is not None:
            to_validation = draw() < fraction or (
                fraction > 0 and validation.samples == 0 and train.samples > 0
            )
            (validation if to_validation else train).write(held[0])
            counter.add(held[1], to_validation)
            if max_output is not None and train.bytes + validation.bytes > max_output:
                raise OutputTooLarge(max_output)
        counter.finish()
    except BaseException:
        counter.close()
        raise

    samples = train.samples + validation.samples
    if not samples:
        _usable_or_raise(rows, rejected, examples, records)

    token_summary, histogram = token_length_stats(counter.lengths)
    stats: dict[str, Any] = {
        "format": records.format,
        "compressed": records.compressed,
        "encoding": records.encoding,
        "encoding_note": records.encoding_note,
        "notes": records.notes,
        "columns": records.columns,
        "mapping": str(bound.mapping),
        "shape": bound.shape,
        "rows": rows,
        "samples": samples,
        "train_samples": train.samples,
        "validation_samples": validation.samples,
        "validation_fraction": fraction,
        "rejected": rejected,
        "rejected_examples": examples,
        "characters": characters,
        "tokens": counter.total,
        "train_tokens": counter.total - counter.validation,
        "validation_tokens": counter.validation,
        "tokenizer": tokenizer_name(options.tokenizer_path),
        "token_lengths": token_summary,
        "histogram": histogram,
        "train_bytes": train.bytes,
        "validation_bytes": validation.bytes,
        "seconds": round(time.monotonic() - started, 3),
    }
    return PreparationResult(
        stats=stats,
        preview=preview,
        index={"train": train.index(), "validation": validation.index()},
    )


def inspect_file(
    source: BinaryIO,
    filename: str,
    format: str = "auto",
    txt_mode: str = "line",
    mapping: str = "",
    max_rows: int = 5,
    max_scan: int = 1000,
) -> dict[str, Any]:
    """A cheap look at the first records: format, encoding, columns, the mapping that would be used.

    Reads at most `max_scan` rows (fewer once `max_rows` samples are found),
    so it is fit for a request; raises `PreparationError` like `prepare`.
    """
    records = open_records(source, filename, format=format, txt_mode=txt_mode)
    bound = bind_mapping(parse_mapping(mapping), records.kind, records.columns)
    samples = []
    for scanned, (line, record) in enumerate(records.rows, 1):
        if scanned > max_scan:
            break
        if record.__class__ is RowError:
            continue
        try:
            obj, _ = bound.sample(record)
        except SampleError:
            continue
        if unstorable_reason(display_text(obj)):
            continue
        samples.append({"line": line, "text": _truncate(display_text(obj), 150)})
        if len(samples) >= max_rows:
            break
    return {
        "format": records.format,
        "encoding": records.encoding,
        "columns": records.columns,
        "mapping": str(bound.mapping),
        "shape": bound.shape,
        "samples": samples,
    }
