"""Examples into batches: packed blocks or padded rows, and the one place that orders them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from data import Corpus, Sample
from reporting import TrainingError
from tokenization import IGNORE, Encoder


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    targets: torch.Tensor  # causal: already shifted (targets[t] = next token); seq2seq: labels
    decoder_input_ids: torch.Tensor | None
    tokens: int  # real (non-padding) tokens processed
    n_targets: int
    # A rank's filler at the end of an epoch, so every rank runs as many micro-batches (DDP needs
    # that): it is computed and weighted 0, so no sample counts twice.
    filler: bool = False


class PackedData:
    """Causal-LM examples concatenated and cut into max_seq_length blocks (no padding but the last)."""

    def __init__(self, examples, block: int, pad_id: int):
        ids = list(itertools.chain.from_iterable(e[0] for e in examples))
        labels = list(itertools.chain.from_iterable(e[1] for e in examples))
        n = len(ids)
        self.tokens = n
        self.block = block
        nblocks = max(1, math.ceil(n / block))
        total = nblocks * block
        ids_t = torch.full((total,), pad_id, dtype=torch.long)
        ids_t[:n] = torch.tensor(ids, dtype=torch.long)
        # Shift once here: the target at position t is the label of token t+1 of the stream,
        # so even a block's last position learns (from the next block's first token).
        tgt = torch.full((total,), IGNORE, dtype=torch.long)
        if n > 1:
            tgt[: n - 1] = torch.tensor(labels[1:], dtype=torch.long)
        self.ids = ids_t.view(nblocks, block)
        self.targets = tgt.view(nblocks, block)
        self.last_len = n - (nblocks - 1) * block
        self.n_targets_per_block = (self.targets != IGNORE).sum(dim=1).tolist()

    def __len__(self) -> int:
        return self.ids.shape[0]

    def groups(self, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
        """The blocks of each micro-batch, in order (shuffled by ``generator``)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.tolist()
        return [order[start : start + batch_size] for start in range(0, n, batch_size)]

    def collate(self, group: list[int], pad_multiple: int) -> Batch:
        idx = torch.tensor(group, dtype=torch.long)
        ids = self.ids[idx]
        targets = self.targets[idx]
        mask = None
        tokens = len(group) * self.block
        last = len(self) - 1
        if self.last_len < self.block and last in group:
            mask = torch.ones_like(ids)
            mask[group.index(last), self.last_len :] = 0
            tokens -= self.block - self.last_len
        n_targets = sum(self.n_targets_per_block[i] for i in group)
        return Batch(ids, mask, targets, None, tokens, n_targets)


class PaddedData:
    """One example per row, batched by similar length, padded to the longest of the batch."""

    def __init__(self, examples, pad_id: int, seq2seq: bool, max_len: int, decoder_start_id: int | None):
        self.pad_id = pad_id
        self.seq2seq = seq2seq
        self.decoder_start_id = decoder_start_id
        self.rows: list[tuple[list[int], list[int]]] = []
        for ids, labels in examples:
            if seq2seq:
                row = (ids[:max_len], labels[:max_len])
            else:
                targets = [*labels[1:], IGNORE]
                row = (ids[:max_len], targets[:max_len])
            if any(t != IGNORE for t in row[1]):
                self.rows.append(row)
        self.tokens = sum(len(i) + (len(t) if seq2seq else 0) for i, t in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def groups(self, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
        """The rows of each micro-batch: similar lengths together, shuffled by ``generator``."""
        n = len(self.rows)
        if generator is None:
            order = sorted(range(n), key=lambda i: -len(self.rows[i][0]))
            return [order[k : k + batch_size] for k in range(0, n, batch_size)]
        order = torch.randperm(n, generator=generator).tolist()
        mega = batch_size * 50
        groups = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -len(self.rows[i][0]))
            groups += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        perm = torch.randperm(len(groups), generator=generator).tolist()
        return [groups[i] for i in perm]

    def collate(self, group: list[int], pad_multiple: int) -> Batch:
        return self._collate([self.rows[i] for i in group], pad_multiple)

    def _collate(self, rows, pad_multiple: int) -> Batch:
        def width(lengths):
            w = max(lengths)
            return int(math.ceil(w / pad_multiple) * pad_multiple) if pad_multiple > 1 else w

        w_in = width([len(r[0]) for r in rows])
        ids = torch.full((len(rows), w_in), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), w_in), dtype=torch.long)
        w_t = width([len(r[1]) for r in rows]) if self.seq2seq else w_in
        targets = torch.full((len(rows), w_t), IGNORE, dtype=torch.long)
        tokens = 0
        for k, (i, t) in enumerate(rows):
            ids[k, : len(i)] = torch.tensor(i, dtype=torch.long)
            mask[k, : len(i)] = 1
            targets[k, : len(t)] = torch.tensor(t, dtype=torch.long)
            tokens += len(i) + (len(t) if self.seq2seq else 0)
        decoder_input_ids = None
        if self.seq2seq:
            decoder_input_ids = torch.full_like(targets, self.pad_id)
            decoder_input_ids[:, 0] = self.decoder_start_id
            decoder_input_ids[:, 1:] = targets[:, :-1]
            decoder_input_ids[decoder_input_ids == IGNORE] = self.pad_id
        n_targets = int((targets != IGNORE).sum())
        return Batch(ids, mask, targets, decoder_input_ids, tokens, n_targets)


Dataset = PackedData | PaddedData


@dataclass
class Datasets:
    train: Dataset
    eval: Dataset | None


def build_datasets(
    encoder: Encoder, corpus: Corpus, packing: bool, pad_id: int, decoder_start_id: int | None
) -> Datasets:
    """Tokenise both splits; fails when no training example has a token to learn from."""

    def build(samples: list[Sample]) -> Dataset | None:
        if not samples:
            return None
        if encoder.seq2seq:
            return PaddedData(
                encoder.encode_seq2seq(samples), pad_id, True, encoder.max_len, decoder_start_id
            )
        examples = encoder.encode_causal(samples)
        if packing:
            return PackedData(examples, encoder.max_len, pad_id)
        return PaddedData(examples, pad_id, False, encoder.max_len, None)

    train = build(corpus.train)
    evaluation = build(corpus.eval)
    if train is None or len(train) == 0:
        raise TrainingError(
            "no training example has tokens to learn from (check the data and max_seq_length)"
        )
    if evaluation is not None and len(evaluation) == 0:
        evaluation = None
    return Datasets(train=train, eval=evaluation)


def epoch_batches(
    data: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    pad_multiple: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """This process's micro-batches of one epoch, in an order fixed by the seed and the epoch.

    The one loader of training data. Every process draws the same order of micro-batches and
    takes every ``world_size``-th from its ``rank`` on, so the micro-batches of one optimizer step
    over all processes are those a single process would take with ``world_size`` times the
    accumulation (the same training). Each sample is seen once per epoch overall; a process left one
    short at the end runs a filler (weighted 0) so all run as many micro-batches.
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    groups = data.groups(batch_size, generator)
    mine = groups[rank::world_size]
    for group in mine:
        yield data.collate(group, pad_multiple)
    per_rank = math.ceil(len(groups) / world_size)
    for _ in range(per_rank - len(mine)):
        yield _filler(data, groups[0], pad_multiple)


def _filler(data: Dataset, group, pad_multiple: int) -> Batch:
    """A batch that runs like any other and weighs nothing: no tokens, no targets counted."""
    filler = data.collate(group, pad_multiple)
    filler.filler, filler.tokens, filler.n_targets = True, 0, 0
    return filler


def micro_batches_per_epoch(data: Dataset, batch_size: int, world_size: int = 1) -> int:
    """Micro-batches each process runs per epoch (fillers included)."""
    return math.ceil(math.ceil(len(data) / batch_size) / world_size)


def eval_batches(
    data: Dataset, batch_size: int, pad_multiple: int, rank: int = 0, world_size: int = 1
) -> Iterator[Batch]:
    """This process's share of the validation batches (their losses are summed over the processes).

    A process left one short runs a filler (not counted), so all run as many forward passes: under
    FSDP each pass is a collective."""
    groups = data.groups(batch_size, None)
    mine = groups[rank::world_size]
    for group in mine:
        yield data.collate(group, pad_multiple)
    for _ in range(math.ceil(len(groups) / world_size) - len(mine)):
        yield _filler(data, groups[0], pad_multiple)
