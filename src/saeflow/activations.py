"""Activation stores: one forward pass writes every layer to memory-mapped float16 arrays.

Layout of ``results/{model}/{dataset}/activations/``::

    layer{L}.npy      float16 (N, d), one row per non-special token, memory-mappable
                      (float32 where the model's ``activation_dtype`` says so: values beyond
                      float16's range, |x| > 65504, stop the extraction with an error)
    tokens.parquet    the token index shared by all layers: seq (row of the sequence
                      table), pos (token position), token_id, start, end (bases)
    seq_offsets.npy   int64 (n_sequences + 1): rows of sequence i are offsets[i]:offsets[i+1]
    manifest.json     model, dataset, dtype, shapes, layers, checksums

Readers never load a whole layer: :class:`ActivationStore` hands out
memory-mapped views and random batches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError, atomic_path, read_json, sha256, write_json

log = logging.getLogger(__name__)


#: the dtypes an activation store may have (``models.<name>.activation_dtype``)
STORE_DTYPES = ("float16", "float32")
_F16_MAX = float(np.finfo(np.float16).max)


def storable(h: np.ndarray, dtype: str, what: str, first: int, last: int) -> np.ndarray:
    """``h`` (float32 activations of ``what``, from sequences ``first``..``last``) cast to the
    store's ``dtype``, after checking that every value is finite and (float16) within float16's
    range; a clear error otherwise, naming the layer, the sequences and how many values.

    One pass in the common case: the cast, then a finiteness check of its result (a float16
    overflow becomes inf there); the counts are only worked out for the error."""
    out = h.astype(dtype, copy=False)
    if np.isfinite(out).all():
        return out
    n_nan = int(np.isnan(h).sum())
    n_inf = int(np.isinf(h).sum())
    if n_nan or n_inf:
        raise SaeflowError(
            f"{what}: the model's output has {n_nan} NaN and {n_inf} inf values (of {h.size}) for "
            f"sequences {first}..{last}; check the model's weights and inputs (a float16/bfloat16 "
            "overflow on the GPU? extract in float32)"
        )
    big = np.abs(h) > _F16_MAX
    raise SaeflowError(
        f"{what}: {int(big.sum())} values (of {h.size}) for sequences {first}..{last} "
        f"exceed float16's range (|x| > 65504; largest {float(np.abs(h).max()):.6g}); "
        "store this model's activations as float32 (models.<name>.activation_dtype: float32)"
    )


def sample_tokens(keep: np.ndarray, n: int, seed: int, first_item: int) -> np.ndarray:
    """``keep`` (B, T bool: the tokens that would be stored) thinned to at most ``n`` per row: row
    b keeps a uniform sample drawn by ``default_rng([seed, first_item + b])``."""
    out = keep.copy()
    for b in np.flatnonzero(keep.sum(axis=1) > n):
        pos = np.flatnonzero(keep[b])
        rng = np.random.default_rng([int(seed), int(first_item) + int(b)])
        out[b] = False
        out[b, rng.choice(pos, size=n, replace=False)] = True
    return out


def sampled_rows(seq_offsets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The rows of a full store (every token; ``seq_offsets`` its per-item row offsets) that
    extraction with ``tokens_per_item=n`` and ``sample_seed=seed`` stores, in order: the sampled
    store is the full store's layer arrays at these rows (the draw depends on an item's token
    count and index only)."""
    out = []
    for j, (lo, hi) in enumerate(zip(seq_offsets[:-1], seq_offsets[1:])):
        keep = sample_tokens(np.ones((1, int(hi - lo)), bool), n, seed, j)[0]
        out.append(int(lo) + np.flatnonzero(keep))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def extract_activations(
    adapter,
    sequences,
    layers: list[int],
    out_dir,
    batch_size: int = 16,
    max_length: int | None = None,
    meta: dict | None = None,
    seq_start: int = 0,
    dtype: str = "float16",
    tokens_per_item: int = 0,
    sample_seed: int = 0,
) -> dict:
    """Run the model once per batch and stream every requested layer to disk.

    ``dtype``: the stores' dtype, ``float16`` (half the disk) or ``float32``. A NaN/inf in the
    model's output, or (float16) a value beyond float16's range, stops the extraction with an
    error naming the layer, the batch and how many values; nothing is left on disk.

    ``tokens_per_item``: keep at most this many tokens of each sequence or cell (0: all), a
    uniform sample of its non-special tokens drawn by ``default_rng([sample_seed, item])`` (item:
    the row in the whole table), so the sample does not depend on batching or sharding, and two
    models that tokenise an item alike keep the same positions. Rows stay in position order.

    ``sequences`` is the sequence table (a DataFrame with a ``sequence`` column) for DNA models,
    or a :class:`saeflow.models.base.CellMatrix` for cell models (``adapter.kind == "cells"``;
    then each "sequence" is a cell and the token index gains a ``gene`` column, the gene id of
    each token, with ``start``/``end`` 0). It may be one shard of a larger table: ``seq_start``
    is the row of its first sequence in the whole table, so the ``seq`` column stays global.
    """
    from tqdm.auto import tqdm

    if dtype not in STORE_DTYPES:
        raise SaeflowError(f"activation dtype {dtype!r}: expected one of {', '.join(STORE_DTYPES)}")
    bad = [lyr for lyr in layers if not 0 <= lyr <= adapter.n_layers]
    if bad:
        raise SaeflowError(f"layers {bad} out of range: the model has layers 0..{adapter.n_layers}")
    cells = getattr(adapter, "kind", "dna") == "cells"
    seqs = sequences if cells else sequences.sequence.tolist()
    # Pass 1 (cheap, tokeniser only): count tokens so the arrays are allocated once, at full size.
    counts, n_all = [], 0
    for i in range(0, len(seqs), 256):
        tb = adapter.tokenize(seqs[i : i + 256], max_length=max_length)
        n = (~tb.special).sum(axis=1)
        n_all += int(n.sum())
        counts.extend((np.minimum(n, tokens_per_item) if tokens_per_item else n).tolist())
    n_tokens = int(sum(counts))
    d = adapter.d_model
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        arrays = {
            lyr: np.lib.format.open_memmap(
                tmp / f"layer{lyr}.npy", mode="w+", dtype=dtype, shape=(n_tokens, d)
            )
            for lyr in layers
        }
        index = {
            k: np.empty(n_tokens, dtype=np.int32)
            for k in ("seq", "pos", "token_id", "start", "end")
        }
        if cells:
            index["gene"] = np.empty(n_tokens, dtype=object)
        row = 0
        for i in tqdm(range(0, len(seqs), batch_size), desc="extract", mininterval=5):
            tb = adapter.tokenize(seqs[i : i + batch_size], max_length=max_length)
            hs = adapter.hidden_states(tb, layers)
            keep = ~tb.special
            if tokens_per_item:
                keep = sample_tokens(keep, tokens_per_item, sample_seed, i + seq_start)
            b_idx, t_idx = np.nonzero(keep)
            n = len(b_idx)
            first, last = i + seq_start, i + seq_start + len(tb.input_ids) - 1
            for lyr in layers:
                h = hs[lyr].float().cpu().numpy()[b_idx, t_idx]
                arrays[lyr][row : row + n] = storable(h, dtype, f"layer {lyr}", first, last)
            index["seq"][row : row + n] = b_idx + i + seq_start
            index["pos"][row : row + n] = t_idx
            index["token_id"][row : row + n] = tb.input_ids.numpy()[b_idx, t_idx]
            index["start"][row : row + n] = tb.offsets[b_idx, t_idx, 0]
            index["end"][row : row + n] = tb.offsets[b_idx, t_idx, 1]
            if cells:
                index["gene"][row : row + n] = tb.genes[b_idx, t_idx]
            row += n
        if row != n_tokens:
            raise SaeflowError(f"token count changed between passes ({row} != {n_tokens})")
        for a in arrays.values():
            a.flush()
        del arrays
        pd.DataFrame(index).to_parquet(tmp / "tokens.parquet", index=False)
        np.save(tmp / "seq_offsets.npy", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        manifest = dict(
            meta or {},
            dtype=dtype,
            n_tokens=n_tokens,
            d_model=d,
            n_sequences=len(seqs),
            seq_start=int(seq_start),
            tokens_per_item=int(tokens_per_item),
            sample_seed=int(sample_seed),
            n_tokens_unsampled=n_all,
            layers=list(layers),
            files={f"layer{lyr}.npy": sha256(tmp / f"layer{lyr}.npy") for lyr in layers},
        )
        write_json(tmp / "manifest.json", manifest)
    log.info("wrote %d tokens x %d dims for layers %s", n_tokens, d, layers)
    return manifest


def shard_bounds(n_sequences: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) sequence ranges of ``n_shards`` near-equal shards.

    The workflow fixes the number of shard jobs before the sequence table exists, so a
    table shorter than ``n_shards`` gives some empty shards (valid, zero-token stores).
    """
    if n_shards < 1:
        raise SaeflowError(f"shards must be >= 1 (got {n_shards})")
    edges = np.linspace(0, n_sequences, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def merge_activation_shards(shard_dirs: list, out_dir, chunk_rows: int = 1 << 16) -> dict:
    """Concatenate shard directories (in sequence order) into one activation directory.

    Layers are streamed chunk by chunk (memory stays at one chunk);
    a single shard is hard-linked instead of copied when the filesystem allows it. The shards
    must tile the sequence table: each one starts where the previous one ended.
    """
    import shutil

    shard_dirs = [Path(d) for d in shard_dirs]
    if not shard_dirs:
        raise SaeflowError("no activation shards to merge")
    mans = []
    for d in shard_dirs:
        if not (d / "manifest.json").exists():
            raise SaeflowError(f"{d}: no manifest.json; not an activation shard")
        mans.append(read_json(d / "manifest.json"))
    first = mans[0]
    expect = 0
    for d, m in zip(shard_dirs, mans):
        for key in ("layers", "d_model", "dtype", "tokens_per_item", "sample_seed"):
            if m.get(key) != first.get(key):
                raise SaeflowError(
                    f"{d}: {key} {m[key]!r} differs from {shard_dirs[0]}'s {first[key]!r}"
                )
        if m.get("seq_start", 0) != expect:
            raise SaeflowError(
                f"{d}: starts at sequence {m.get('seq_start', 0)}, expected {expect} (missing or "
                "reordered shard)"
            )
        expect += m["n_sequences"]
    layers, d = first["layers"], first["d_model"]
    n_tokens = sum(m["n_tokens"] for m in mans)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        files = {}
        for lyr in layers:
            name = f"layer{lyr}.npy"
            if len(shard_dirs) == 1:
                try:
                    os.link(shard_dirs[0] / name, tmp / name)
                except OSError:
                    shutil.copyfile(shard_dirs[0] / name, tmp / name)
                files[name] = first["files"][name]
                continue
            out = np.lib.format.open_memmap(
                tmp / name, mode="w+", dtype=first.get("dtype", "float16"), shape=(n_tokens, d)
            )
            row = 0
            for sd, m in zip(shard_dirs, mans):
                src = np.load(sd / name, mmap_mode="r")
                if src.shape != (m["n_tokens"], d):
                    raise SaeflowError(
                        f"{sd / name}: shape {src.shape} does not match its manifest"
                    )
                for i in range(0, len(src), chunk_rows):
                    block = np.asarray(src[i : i + chunk_rows])
                    out[row : row + len(block)] = block
                    row += len(block)
                del src
            out.flush()
            del out
            files[name] = sha256(tmp / name)
        tokens = pd.concat(
            [pd.read_parquet(sd / "tokens.parquet") for sd in shard_dirs], ignore_index=True
        )
        tokens.to_parquet(tmp / "tokens.parquet", index=False)
        offsets, base = [np.zeros(1, np.int64)], 0
        for sd in shard_dirs:
            o = ActivationStore(sd).seq_offsets
            offsets.append(o[1:] + base)
            base += int(o[-1])
        np.save(tmp / "seq_offsets.npy", np.concatenate(offsets).astype(np.int64))
        manifest = {
            k: v
            for k, v in first.items()
            if k not in ("files", "n_tokens", "n_sequences", "seq_start", "n_tokens_unsampled")
        }
        manifest.update(
            n_tokens=n_tokens, n_sequences=expect, seq_start=0, shards=len(shard_dirs), files=files
        )
        if all("n_tokens_unsampled" in m for m in mans):
            manifest["n_tokens_unsampled"] = sum(m["n_tokens_unsampled"] for m in mans)
        write_json(tmp / "manifest.json", manifest)
    log.info("merged %d shard(s): %d sequences, %d tokens", len(shard_dirs), expect, n_tokens)
    return manifest


class ActivationStore:
    """Read side of an activation directory: memory-mapped layers + the token index."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        mpath = self.dir / "manifest.json"
        if not mpath.exists():
            raise SaeflowError(f"{self.dir}: no manifest.json; not an activation directory")
        self.manifest = read_json(mpath)
        self._tokens: pd.DataFrame | None = None

    @property
    def tokens(self) -> pd.DataFrame:
        if self._tokens is None:
            self._tokens = pd.read_parquet(self.dir / "tokens.parquet")
        return self._tokens

    @property
    def seq_offsets(self) -> np.ndarray:
        """Row offsets of each sequence (rows are grouped by sequence, in sequence order)."""
        path = self.dir / "seq_offsets.npy"
        if path.exists():
            return np.load(path)
        counts = np.bincount(
            self.tokens.seq.to_numpy(), minlength=int(self.manifest["n_sequences"])
        )
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def layer(self, layer: int) -> np.ndarray:
        path = self.dir / f"layer{layer}.npy"
        if not path.exists():
            raise SaeflowError(
                f"{path}: layer {layer} was not extracted (have {self.manifest['layers']})"
            )
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (self.manifest["n_tokens"], self.manifest["d_model"]):
            raise SaeflowError(f"{path}: shape {arr.shape} does not match the manifest")
        return arr

    def iter_chunks(self, layer: int, rows: np.ndarray | None = None, chunk: int = 65536):
        """Yield (row_indices, float32 block) over ``rows`` (sorted) or all rows, one chunk in RAM
        at a time."""
        arr = self.layer(layer)
        rows = np.arange(arr.shape[0]) if rows is None else np.asarray(rows)
        for i in range(0, len(rows), chunk):
            r = rows[i : i + chunk]
            block = (
                np.asarray(arr[r[0] : r[-1] + 1], dtype=np.float32)[r - r[0]]
                if len(r)
                else np.empty((0, arr.shape[1]), np.float32)
            )
            if not np.isfinite(block).all():
                raise SaeflowError(
                    f"{self.dir}/layer{layer}.npy: NaN or inf in rows {r[0]}..{r[-1]}"
                )
            yield r, block


def split_rows(tokens: pd.DataFrame, sequences: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Train/test token rows by the sequence table's ``split`` (held out by sequence, never by
    token).

    Other splits (``perturbed`` cells of a Perturb-seq dataset) are in neither."""
    split = sequences.split.to_numpy()[tokens.seq.to_numpy()]
    return np.flatnonzero(split == "train"), np.flatnonzero(split == "test")


def split_ranges(offsets: np.ndarray, sequences: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Train/test row ranges, (n, 2) arrays with one [start, end) per sequence, by the ``split``
    column.

    Memory is O(number of sequences), whatever the number of tokens. Sequences of any other split
    (``perturbed`` cells) are in neither.
    """
    if "split" not in sequences.columns:
        raise SaeflowError("sequence table has no 'split' column")
    n = len(offsets) - 1
    if len(sequences) != n:
        raise SaeflowError(
            f"sequence table has {len(sequences)} rows but the activations cover {n} sequences"
        )
    ranges = np.stack([offsets[:-1], offsets[1:]], axis=1)
    split = sequences.split.to_numpy()
    return ranges[split == "train"], ranges[split == "test"]
