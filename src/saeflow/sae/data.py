"""Streaming training batches from a memory-mapped activation layer in O(batch) memory.

Training rows are a set of row ranges (one per training sequence, so the
held-out split is by sequence). Random order comes from a keyed Feistel
permutation of the positions 0..n-1 (cycle walking for n not a power of two):
a true pseudo-random permutation computed on the fly, so no index array of the
size of the file is ever held, one epoch visits every row once, and the stream's
whole state is (epoch, position). ``max_vectors`` subsampling takes the first
``max_vectors`` positions of a fixed permutation, also without an index array.

Rows are read with ``pread`` (:class:`RowReader`), not through the memory map,
so the process's resident memory stays flat however large the file is.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from saeflow.utils import SaeflowError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """A 64-bit integer hash (splitmix64 finaliser), vectorised, wrapping."""
    with np.errstate(over="ignore"):
        z = (x + key) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A seeded bijection of range(n) evaluated element-wise (4-round balanced Feistel + cycle walking)."""

    def __init__(self, n: int, seed: int, rounds: int = 4):
        if n < 1:
            raise SaeflowError("cannot permute an empty set of rows")
        self.n = int(n)
        bits = max(2, int(np.ceil(np.log2(max(n, 2)))))
        bits += bits % 2
        self.half = bits // 2
        self.lo_mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng(seed)
        self.keys = [np.uint64(k) for k in rng.integers(0, 2**63, size=rounds, dtype=np.int64)]

    def _once(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.lo_mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right, k) & self.lo_mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        x = self._once(np.asarray(idx, dtype=np.uint64))
        out_of_range = x >= self.n
        while out_of_range.any():  # cycle walking: the expected number of extra rounds is < 2
            x[out_of_range] = self._once(x[out_of_range])
            out_of_range = x >= self.n
        return x.astype(np.int64)


class RowSet:
    """Rows of a layer given as [start, end) ranges; position i in the set maps to a row."""

    def __init__(self, ranges: np.ndarray):
        ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        ranges = ranges[ranges[:, 1] > ranges[:, 0]]
        self.starts = ranges[:, 0]
        lengths = ranges[:, 1] - ranges[:, 0]
        self.cum = np.concatenate([[0], np.cumsum(lengths)])
        self.n = int(self.cum[-1])

    def rows(self, positions: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.cum, positions, side="right") - 1
        return self.starts[j] + (positions - self.cum[j])

    def iter_blocks(self, block: int = 65536):
        """Consecutive rows, as (row_start, row_end) spans of at most ``block`` rows."""
        for s, length in zip(self.starts, np.diff(self.cum)):
            for a in range(0, int(length), block):
                yield int(s + a), int(s + min(length, a + block))


class RowReader:
    """Read rows of a memory-mapped .npy layer with ``pread`` (one call per run of consecutive rows).

    Reading through the memory map would make every touched page resident in this
    process -- and the kernel maps up to 64 KiB around each faulted page, so a batch
    of 4096 random 1 KiB rows costs ~256 MiB of resident memory until released.
    ``pread`` copies straight from the page cache into one batch buffer: resident
    memory is the buffer, whatever the file's size (measured in benchmarks/sae_memory.py).
    Arrays that are not file-backed are indexed directly.
    """

    def __init__(self, arr: np.ndarray, path: str = "activations"):
        self.arr, self.path = arr, path
        self.fd = None
        fn = getattr(arr, "filename", None)
        if fn and isinstance(arr, np.memmap) and arr.flags.c_contiguous and arr.ndim == 2:
            self.fd = os.open(fn, os.O_RDONLY)
            self.offset = int(arr.offset)
            self.row_bytes = arr.shape[1] * arr.itemsize

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), d) for sorted ``rows``."""
        if self.fd is None:
            block = np.asarray(self.arr[rows], dtype=np.float32)
        else:
            buf = np.empty((len(rows), self.arr.shape[1]), dtype=self.arr.dtype)
            mv = memoryview(buf).cast("B")
            rb = self.row_bytes
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            starts = np.concatenate([[0], breaks]).tolist()
            ends = np.concatenate([breaks, [len(rows)]]).tolist()
            first = rows[starts].tolist() if len(rows) else []
            for a, b, r in zip(starts, ends, first):
                n = os.preadv(self.fd, [mv[a * rb : b * rb]], self.offset + r * rb)
                if n != (b - a) * rb:
                    raise SaeflowError(f"{self.path}: short read at row {r} (file truncated?)")
            block = buf.astype(np.float32)
        if not np.isfinite(block).all():
            bad = np.asarray(rows)[~np.isfinite(block).all(axis=1)][:5]
            raise SaeflowError(f"{self.path}: NaN or inf in activation rows {bad.tolist()}")
        return block

    def range(self, a: int, b: int) -> np.ndarray:
        return self.rows(np.arange(a, b, dtype=np.int64))


class BatchStream:
    """Random batches of rows (without replacement within an epoch), float32 tensors on ``device``.

    ``shuffle=False`` streams positions in order (used by benchmarks to feed every
    trainer the same samples). ``state_dict``/``load_state_dict`` make it resumable.
    """

    def __init__(
        self,
        arr: np.ndarray,
        rowset: RowSet,
        batch_size: int,
        seed: int,
        max_vectors: int = 0,
        shuffle: bool = True,
        scale: float = 1.0,
        outlier_norm: float | None = None,
        path: str = "activations",
    ):
        self.arr, self.rowset, self.bs, self.seed = arr, rowset, int(batch_size), int(seed)
        self.shuffle, self.scale, self.outlier_norm = shuffle, scale, outlier_norm
        self.path = path
        self.n = rowset.n if not max_vectors else min(rowset.n, int(max_vectors))
        if self.n == 0:
            raise SaeflowError(f"{path}: no training rows")
        self._subset = FeistelPermutation(rowset.n, seed ^ 0x5EED) if self.n < rowset.n else None
        self.epoch, self.pos, self.batches = 0, 0, 0
        self.n_outliers = 0
        self._perm = None
        self.reader = RowReader(arr, path)

    def _epoch_perm(self):
        if self._perm is None or self._perm[0] != self.epoch:
            self._perm = (
                self.epoch,
                FeistelPermutation(self.n, self.seed * 1_000_003 + self.epoch),
            )
        return self._perm[1]

    def next_positions(self) -> np.ndarray:
        """Positions of the next batch; a batch that crosses an epoch end continues into the next epoch."""
        out, need = [], self.bs
        while need:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
            take = min(need, self.n - self.pos)
            idx = np.arange(self.pos, self.pos + take, dtype=np.int64)
            out.append(self._epoch_perm()(idx) if self.shuffle else idx)
            self.pos += take
            need -= take
        pos = np.concatenate(out)
        return pos if self._subset is None else self._subset(pos)

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.reader.rows(np.sort(rows))

    def __next__(self) -> torch.Tensor:
        x = torch.from_numpy(self.read(self.rowset.rows(self.next_positions())))
        self.batches += 1
        if self.scale != 1.0:
            x.mul_(self.scale)
        if self.outlier_norm:
            keep = x.norm(dim=1) <= self.outlier_norm
            if not bool(keep.all()):
                self.n_outliers += int((~keep).sum())
                x = x[keep]
        return x

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "batches": self.batches,
            "n_outliers": self.n_outliers,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.batches, self.n_outliers = int(state["batches"]), int(state["n_outliers"])
