"""Packing samples into full rows with per-document attention.

Samples (token ids + loss mask from curation) are packed best-fit-decreasing into rows of
`max_seq_len` tokens: longest first (a stable sort, so equal lengths keep the order given and a seeded
shuffle of the input gives a seeded result), each into the open row with the least room that still fits
it — O(N log N), and in the worst case about 11/9 of the optimal number of rows (plus a small constant).
Position ids restart at 0 for every sample; the attention layer derives the document boundaries from
them (transformers' packed-sequence mask on CPU, varlen flash attention on GPU via `cu_seqlens`), so
packed samples never attend to each other. Targets are shifted here, once: `targets[t]` is the token to
predict at position t, or -100 where nothing is trained — prompt tokens, padding, and the first token of
the next sample (which the previous one must not predict).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    """One rendered conversation."""

    input_ids: Sequence[int]
    loss_mask: Sequence[bool]


@dataclass
class PackedBatch:
    """Rows of packed samples, ready for the model."""

    input_ids: torch.Tensor  # [rows, max_seq_len] int64
    position_ids: torch.Tensor  # [rows, max_seq_len] int64, restarting per sample
    targets: torch.Tensor  # [rows, max_seq_len] int64, IGNORE where nothing is trained
    cu_seqlens: torch.Tensor  # [documents + 1] int32 over the flattened rows (padding is its own document)
    max_seqlen: int
    num_tokens: int  # real (non-padding) tokens

    @property
    def num_loss_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device | str) -> PackedBatch:
        """The batch on `device`. To a GPU through pinned memory, without blocking: a copy from pageable memory
        makes the host wait until the device has run everything queued before it, so each step would start
        from an empty queue (the FP8 spread in benchmarks/RESULTS.md)."""
        device = torch.device(device)
        return PackedBatch(
            to_device(self.input_ids, device),
            to_device(self.position_ids, device),
            to_device(self.targets, device),
            to_device(self.cu_seqlens, device),
            self.max_seqlen,
            self.num_tokens,
        )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a host tensor goes to a GPU by a non-blocking copy from pinned memory."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pack_rows(samples: Iterable[Sample], max_seq_len: int) -> list[list[Sample]]:
    """Best-fit-decreasing packing into rows of at most `max_seq_len` tokens.

    Samples longer than `max_seq_len` are cut to it (ids and loss mask), empty ones are skipped. The rest
    are taken longest first — a stable sort: equal lengths keep their input order — and each goes into
    the open row with the least room that still fits it (the oldest such row on a tie), else into a new
    row. Open rows live in a sorted list of integer keys `room << shift | row`, searched with the C-level
    `bisect`, so a placement costs O(log R) plus at most two memmoves; full rows leave the list.
    """
    kept: list[Sample] = []
    sizes: list[int] = []
    for sample in samples:
        size = len(sample.input_ids)
        if size > max_seq_len:
            sample = Sample(sample.input_ids[:max_seq_len], sample.loss_mask[:max_seq_len])
            size = max_seq_len
        if size > 0:
            kept.append(sample)
            sizes.append(size)
    order = sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True)  # reverse=True keeps stability
    shift = max(len(sizes).bit_length(), 1)  # the row index fits below the room bits
    low = (1 << shift) - 1
    rows: list[list[Sample]] = []
    open_rows: list[int] = []  # sorted keys room << shift | row index; rows with room > 0 only
    for i in order:
        size = sizes[i]
        at = bisect_left(open_rows, size << shift)
        if at < len(open_rows):
            key = open_rows[at]
            index = key & low
            rows[index].append(kept[i])
            room = (key >> shift) - size
            if room == 0:
                del open_rows[at]
                continue
            key = room << shift | index
            to = bisect_left(open_rows, key, 0, at)
            if to == at:
                open_rows[at] = key  # still in order: no move
            else:
                del open_rows[at]
                open_rows.insert(to, key)
        else:
            index = len(rows)
            rows.append([kept[i]])
            room = max_seq_len - size
            if room > 0:
                insort(open_rows, room << shift | index)
    return rows


def collate(
    rows: Sequence[Sequence[Sample]], max_seq_len: int, pad_id: int, train_on_prompt: bool = False
) -> PackedBatch:
    """Tensors for a list of packed rows (each at most `max_seq_len` tokens)."""
    count = len(rows)
    input_ids = np.full((count, max_seq_len), pad_id, dtype=np.int64)
    position_ids = np.zeros((count, max_seq_len), dtype=np.int64)
    targets = np.full((count, max_seq_len), IGNORE, dtype=np.int64)
    boundaries = [0]
    real = 0
    for r, row in enumerate(rows):
        offset = 0
        for sample in row:
            ids = np.asarray(sample.input_ids, dtype=np.int64)
            mask = np.asarray(sample.loss_mask, dtype=bool)
            size = ids.size
            input_ids[r, offset : offset + size] = ids
            position_ids[r, offset : offset + size] = np.arange(size)
            trained = np.ones(size, dtype=bool) if train_on_prompt else mask
            # position t predicts token t+1 of the same sample, and only where that token is trained
            shifted = np.where(trained[1:], ids[1:], IGNORE)
            targets[r, offset : offset + size - 1] = shifted
            offset += size
            boundaries.append(r * max_seq_len + offset)
        real += offset
        if offset < max_seq_len:  # padding: positions restart, so it is a document of its own
            position_ids[r, offset:] = np.arange(max_seq_len - offset)
            boundaries.append((r + 1) * max_seq_len)
    cu_seqlens = torch.tensor(boundaries, dtype=torch.int32)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return PackedBatch(
        torch.from_numpy(input_ids),
        torch.from_numpy(position_ids),
        torch.from_numpy(targets),
        cu_seqlens,
        int(lengths.max()) if lengths.numel() else 0,
        real,
    )
