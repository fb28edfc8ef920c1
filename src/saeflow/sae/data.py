"""Streaming training batches from a memory-mapped activation layer in O(batch) memory.

Training rows are a set of row ranges (one per training sequence, so the
held-out split is by sequence). Random order comes from a keyed Feistel
permutation of the positions 0..n-1 (cycle walking for n not a power of two):
a true pseudo-random permutation computed on the fly, so no index array of the
size of the file is ever held, one epoch visits every row once, and the stream's
whole state is (epoch, position). ``max_vectors`` subsampling takes the first
``max_vectors`` positions of a fixed permutation, also without an index array.

Rows are read with ``pread`` (:class:`RowReader`), not through the memory map,
so the process's resident memory stays flat however large the file is. :class:`ReadAhead` reads
the next batches in a background thread while the training step runs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from itertools import groupby

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
    """A seeded bijection of range(n) evaluated element-wise (4-round balanced Feistel + cycle
    walking)."""

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
    """Read rows of a memory-mapped .npy layer with ``pread`` (one call per run of nearby rows).

    Reading through the memory map would make every touched page resident in this
    process -- and the kernel maps up to 64 KiB around each faulted page, so a batch
    of 4096 random 1 KiB rows costs ~256 MiB of resident memory until released.
    ``pread`` copies straight from the page cache into one batch buffer: resident
    memory is the buffer, whatever the file's size (measured in benchmarks/sae_memory.py).
    Arrays that are not file-backed are indexed directly.
    """

    #: Rows at most this many bytes apart are fetched in one read (the gap read and dropped).
    GAP_BYTES = 4096
    #: A merged read stays inside one aligned chunk of the file this size (its scratch buffer).
    CHUNK_BYTES = 1 << 20

    def __init__(self, arr: np.ndarray, path: str = "activations"):
        self.arr, self.path = arr, path
        self.fd = None
        fn = getattr(arr, "filename", None)
        if fn and isinstance(arr, np.memmap) and arr.flags.c_contiguous and arr.ndim == 2:
            self.fd = os.open(fn, os.O_RDONLY)
            self.offset = int(arr.offset)
            self.row_bytes = arr.shape[1] * arr.itemsize

    def __del__(self, _close=os.close):  # os.close bound now: module globals may be gone at exit
        if getattr(self, "fd", None) is not None:
            _close(self.fd)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), d) for sorted, distinct ``rows``.

        Runs of rows closer than :attr:`GAP_BYTES` apart are read with one ``pread`` each, the rows
        in between read and dropped (one system call per row costs more than copying a page from
        the page cache); a merged read never crosses a :attr:`CHUNK_BYTES`-aligned boundary of the
        file, so its scratch buffer stays that small.
        """
        if self.fd is None:
            block = np.asarray(self.arr[rows], dtype=np.float32)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            buf = np.empty((len(rows), self.arr.shape[1]), dtype=self.arr.dtype)
            rb = self.row_bytes
            gap = max(1, self.GAP_BYTES // rb)
            chunk = max(1, self.CHUNK_BYTES // rb)
            step = np.diff(rows)
            breaks = np.flatnonzero((step > gap) | (rows[1:] // chunk != rows[:-1] // chunk)) + 1
            starts = np.concatenate([[0], breaks]).tolist()
            ends = np.concatenate([breaks, [len(rows)]]).tolist()
            first = rows[starts].tolist() if len(rows) else []
            last = rows[np.asarray(ends, dtype=np.int64) - 1].tolist() if len(rows) else []
            for a, b, r, r1 in zip(starts, ends, first, last):
                span = r1 - r + 1
                if span == b - a:  # consecutive rows: straight into the batch buffer
                    self._pread(buf[a:b], r)
                else:
                    scratch = np.empty((span, buf.shape[1]), dtype=buf.dtype)
                    self._pread(scratch, r)
                    buf[a:b] = scratch[rows[a:b] - r]
            block = buf.astype(np.float32)
        if not np.isfinite(block).all():
            bad = np.asarray(rows)[~np.isfinite(block).all(axis=1)][:5]
            raise SaeflowError(f"{self.path}: NaN or inf in activation rows {bad.tolist()}")
        return block

    def _pread(self, out: np.ndarray, row: int) -> None:
        n = os.preadv(self.fd, [memoryview(out).cast("B")], self.offset + row * self.row_bytes)
        if n != out.nbytes:
            raise SaeflowError(f"{self.path}: short read at row {row} (file truncated?)")

    def range(self, a: int, b: int) -> np.ndarray:
        return self.rows(np.arange(a, b, dtype=np.int64))


class BatchStream:
    """Random batches of rows (without replacement within an epoch), float32 tensors on ``device``.

    ``shuffle=False`` streams positions in order (used by benchmarks to feed every
    trainer the same samples). ``state_dict``/``load_state_dict`` make it resumable.

    Batches are prepared ahead in blocks of up to ``block_bytes`` of stored rows (at most
    :attr:`MAX_AHEAD` batches): one vectorised permutation call and one sorted, coalesced read
    (:meth:`RowReader.rows`) per block instead of per batch -- for small rows the per-call
    costs, not the bytes, are what a batch costs. Each batch holds exactly the rows, in the
    same order, that reading it alone would give; the state (``epoch``, ``pos``) is that of
    the batches handed out, so a checkpoint taken mid-block resumes at the next batch.
    """

    #: The most batches prepared ahead in one block.
    MAX_AHEAD = 64

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
        block_bytes: int = 4 << 20,
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
        row_bytes = max(1, int(np.prod(arr.shape[1:])) * arr.dtype.itemsize)
        self.ahead = int(max(1, min(self.MAX_AHEAD, block_bytes // (self.bs * row_bytes))))
        self._gen = (0, 0)  # (epoch, pos) after the last batch prepared
        self._queue: deque = deque()

    def _epoch_perm(self, epoch: int):
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, FeistelPermutation(self.n, self.seed * 1_000_003 + epoch))
        return self._perm[1]

    def _fill(self) -> None:
        """Prepare the next ``ahead`` batches: positions, one read of their rows, per-batch gathers.

        A batch that crosses an epoch end continues into the next epoch.
        """
        segs, states = [], []
        epoch, pos = self._gen
        for _ in range(self.ahead):
            need = self.bs
            while need:
                if pos >= self.n:
                    epoch, pos = epoch + 1, 0
                take = min(need, self.n - pos)
                segs.append((epoch, pos, pos + take))
                pos += take
                need -= take
            states.append((epoch, pos))
        self._gen = (epoch, pos)
        parts = []
        for e, group in groupby(segs, key=lambda seg: seg[0]):  # consecutive spans of one epoch
            group = list(group)
            idx = np.arange(group[0][1], group[-1][2], dtype=np.int64)
            parts.append(self._epoch_perm(e)(idx) if self.shuffle else idx)
        positions = np.concatenate(parts)
        if self._subset is not None:
            positions = self._subset(positions)
        rows = np.sort(self.rowset.rows(positions).reshape(self.ahead, self.bs), axis=1)
        uniq, inv = np.unique(rows, return_inverse=True)
        data = self.reader.rows(uniq)
        if self.scale != 1.0:
            data *= np.float32(self.scale)
        if self.ahead == 1 and len(uniq) == self.bs:  # one batch of distinct rows: already in order
            self._queue.append((data, None, states[0]))
            return
        inv = inv.reshape(self.ahead, self.bs)
        self._queue.extend((data, inv[j], states[j]) for j in range(self.ahead))

    def __next__(self) -> torch.Tensor:
        if not self._queue:
            self._fill()
        data, idx, (self.epoch, self.pos) = self._queue.popleft()
        x = torch.from_numpy(data if idx is None else data[idx])
        self.batches += 1
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
        self._gen = (self.epoch, self.pos)
        self._queue.clear()


class ReadAhead:
    """The batches of a :class:`BatchStream`, read ``depth`` ahead in a background thread, so
    that reading a batch overlaps the training step instead of adding to it (reads are ``pread``
    and numpy gathers, which release the GIL).

    Same batches in the same order as the stream alone; :meth:`state_dict` is the state after the
    last batch handed *out* (not the last one read ahead), so checkpoints resume exactly. Call
    :meth:`close` when done (also used as a context manager); an error in the reader is raised
    by the next ``next()``. ``depth=0``: no thread, each batch read when asked for (where no core
    is spare for the reader, it would only slow the step down: :func:`read_ahead_depth`).
    """

    def __init__(self, stream: BatchStream, depth: int = 2):
        self.stream, self.depth = stream, int(depth)
        self._state = stream.state_dict()
        self._thread = None
        self._start()

    def _start(self) -> None:
        if not self.depth:
            return
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="saeflow-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                x = next(self.stream)
                if not self._put((x, self.stream.state_dict())):
                    return
        except BaseException as e:  # handed to the consumer
            self._put((e, None))

    def __next__(self) -> torch.Tensor:
        if not self.depth:
            x = next(self.stream)
            self._state = self.stream.state_dict()
            return x
        x, state = self._queue.get()
        if isinstance(x, BaseException):
            raise x
        self._state = state
        return x

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._state = self.stream.state_dict()
        self._start()

    @property
    def n_outliers(self) -> int:
        return int(self._state["n_outliers"])

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_ahead_depth(device: torch.device) -> int:
    """Batches to read ahead: 2 when the step leaves a CPU free for the reader (it runs on a GPU,
    or torch uses fewer threads than the CPUs this process may run on), else 0. Measured on two
    cores (benchmarks/sae_read_ahead.py): with one torch thread, reading ahead cut the wall time
    per step by 16-21%; with two, it competed with the step (-2% to +12% over three runs)."""
    if device.type == "cuda":
        return 2
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus > torch.get_num_threads() else 0
