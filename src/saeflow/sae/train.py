"""Train an SAE on one layer of an activation store, streaming batches from the memory map.

Practice taken from the SAE libraries people use: unit-norm decoder rows with
the parallel gradient removed, b_dec initialised at the geometric median of a
sample, inputs scaled so E||x|| = sqrt(d) (folded into the weights at save
time, so the saved SAE acts on raw activations), AuxK for dead latents
(TopK/BatchTopK), linear warmup and cosine decay, optional dropping of
outlier high-norm tokens, a held-out split by sequence, fixed seeds.

Speed: each step is one dense matmul (the encoder's forward) plus sparse
embedding-bag kernels for everything else (see :mod:`saeflow.sae.kernels`),
hand-written gradients, and the fused Adam. On CUDA the encoder product runs
in bf16 autocast (``amp``).

Checkpoints (``checkpoint_every`` steps) hold the weights, the optimiser and
scheduler, the batch stream's position and the dead-latent counters, written
atomically; a killed run resumes from the last one and ends at exactly the
weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saeflow.sae import build_sae
from saeflow.sae.base import RECIPE_DEFAULTS
from saeflow.sae.data import BatchStream, ReadAhead, RowReader, RowSet, read_ahead_depth
from saeflow.utils import SaeflowError, atomic_path, seed_everything, write_json

log = logging.getLogger(__name__)


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < eps * (1 + m.norm()):
            return new
        m = new
    return m


@torch.no_grad()
def evaluate(
    sae,
    arr: np.ndarray,
    rowset: RowSet,
    scale: float = 1.0,
    block: int = 16384,
    path: str = "activations",
) -> dict:
    """Explained variance, L0, dead/dense latents and firing
    frequencies on the rows of ``rowset``."""
    sae.eval()
    n = rowset.n
    if n == 0:
        return {}
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_x2 = 0.0
    sse = 0.0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    l0 = 0.0
    reader = RowReader(arr, path)
    for a, b in rowset.iter_blocks(block):
        x = torch.from_numpy(reader.range(a, b)) * scale
        z = sae.encode(x)
        x_hat = sae.decode(z)
        sse += float((x - x_hat).double().pow(2).sum())
        sum_x += x.double().sum(0)
        sum_x2 += float(x.double().pow(2).sum())
        active = z > 0
        fires += active.double().sum(0)
        l0 += float(active.sum())
    total_var = sum_x2 - float((sum_x**2).sum()) / n
    freq = (fires / n).numpy()
    return {
        "explained_variance": 1.0 - sse / max(total_var, 1e-12),
        "fvu": sse / max(total_var, 1e-12),
        "l0": l0 / n,
        "dead_fraction": float((freq == 0).mean()),
        "dense_fraction": float((freq > 0.1).mean()),
        "n_tokens": n,
        "frequency": freq,
    }


#: Below this many multiply-adds in a step's one dense product (batch x d_in x d_sae), an SAE trains
#: on one thread whatever ``threads`` says: its kernels are too small to split, and two OpenMP
#: threads on a shared 2-core machine spend their time waiting for each other (64 -> 256 latents at
#: batch 256, 4.2M multiply-adds: ~7 ms per step on one thread, ~47 ms on two with another job on
#: the cores; benchmarks/README.md, "Small SAEs: per-step overhead"). The result differs from a
#: two-thread run only by float summation order; a fixed seed still gives the same weights.
SMALL_STEP_MACS = 1 << 25


def step_threads(threads: int, batch_size: int, d_in: int, d_sae: int) -> int:
    """Torch threads for training an SAE of this size (see :data:`SMALL_STEP_MACS`)."""
    if batch_size * d_in * d_sae < SMALL_STEP_MACS:
        return 1
    return max(1, int(threads))


def _lr_lambda(steps: int, warm: int):
    def f(s: int) -> float:
        return min(1.0, (s + 1) / warm) * (
            0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))) * 0.9 + 0.1
        )

    return f


def make_optimizer(params, lr: float, device: torch.device):
    """Adam; the fused implementation when this torch has it for the device (it is ~4x cheaper on
    CPU)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (
        RuntimeError,
        TypeError,
        ValueError,
    ):  # pragma: no cover - old torch / unsupported device
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), foreach=True)


@dataclass
class FitResult:
    sae: object
    scale: float
    steps: int
    curve: list = field(default_factory=list)
    step_times: list = field(default_factory=list)
    resumed_from: int = 0
    n_outliers: int = 0


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(
    sae,
    stream: BatchStream,
    recipe: dict,
    steps: int,
    *,
    device: torch.device,
    scale: float = 1.0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    fingerprint: str = "",
    on_step=None,
    desc: str = "SAE",
    log_every: int | None = None,
    amp: bool | None = None,
) -> FitResult:
    """The training loop. ``stream`` yields (scaled) batches; returns the SAE still in the scaled
    space."""
    from tqdm.auto import tqdm

    sae.to(device)
    if not sae.W_enc.t().is_contiguous():
        sae.W_enc.data = sae.W_enc.data.t().contiguous().t()
    sae.amp = (device.type == "cuda") if amp is None else amp
    opt = make_optimizer(sae.parameters(), float(recipe["lr"]), device)
    warm = max(
        1, int(steps * float(recipe.get("warmup_fraction", RECIPE_DEFAULTS["warmup_fraction"])))
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warm))
    # A latent is "dead" for AuxK when it has not fired within the last `dead_window` tokens.
    last_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    seen = 0
    dead_window = int(recipe.get("dead_window", RECIPE_DEFAULTS["dead_window"]))
    result = FitResult(sae, scale, steps)
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint and state.get("steps") == steps:
            sae.load_state_dict(state["sae"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            stream.load_state_dict(state["stream"])
            last_fired, seen = state["last_fired"].to(device), state["seen"]
            result.curve = state["curve"]
            start = result.resumed_from = state["step"]
            log.info("resumed from %s at step %d of %d", ckpt, start, steps)
        else:
            log.warning("ignoring checkpoint %s: it belongs to a different recipe or data", ckpt)
    log_every = log_every or max(1, steps // 100)
    sae.train()
    bar = tqdm(range(start, steps), desc=desc, mininterval=5, initial=start, total=steps)
    # the next batches are read while this step runs, where a CPU is free for it
    with ReadAhead(stream, read_ahead_depth(device)) as batches:
        for step in bar:
            x = next(batches).to(device, non_blocking=True)
            t0 = time.perf_counter()
            state = {"dead": (seen - last_fired) > dead_window if seen > dead_window else None}
            losses = sae.train_step(x, state)
            sae.remove_parallel_grad()
            opt.step()
            sched.step()
            sae.normalize_decoder()
            seen += len(x)
            last_fired[losses.pop("fired")] = seen
            stats = {"step": step, "tokens": seen}
            sae.after_step(state, losses)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.step_times.append(time.perf_counter() - t0)
            if step % log_every == 0 or step == steps - 1:
                dead = (seen - last_fired) > dead_window
                stats.update({k: float(v) for k, v in losses.items()})
                stats.update(dead=float(dead.float().mean()), lr=sched.get_last_lr()[0])
                if not math.isfinite(stats["fvu"]):
                    raise SaeflowError(
                        f"{desc}: training diverged at step {step} (loss {stats['fvu']}); "
                        "lower the lr"
                    )
                result.curve.append(stats)
            if on_step is not None:
                on_step(step, losses)
            if (
                ckpt is not None
                and checkpoint_every
                and (step + 1) % checkpoint_every == 0
                and step + 1 < steps
            ):
                _atomic_torch_save(
                    {
                        "fingerprint": fingerprint,
                        "steps": steps,
                        "step": step + 1,
                        "sae": sae.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "stream": batches.state_dict(),
                        "last_fired": last_fired.cpu(),
                        "seen": seen,
                        "curve": result.curve,
                    },
                    ckpt,
                )
        result.n_outliers = batches.n_outliers
    return result


def input_scale_and_init(sae, sample: torch.Tensor, recipe: dict) -> float:
    """Scale so that E||x * s|| = sqrt(d); b_dec at the geometric median (or mean) of the scaled
    sample."""
    d = sample.shape[1]
    scale = math.sqrt(d) / float(sample.norm(dim=1).mean().clamp_min(1e-8))
    init = recipe.get("b_dec_init", RECIPE_DEFAULTS["b_dec_init"])
    with torch.no_grad():
        if init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample * scale))
        elif init == "mean":
            sae.b_dec.copy_((sample * scale).mean(0))
    sae.init_from_sample(sample * scale)
    return scale


def fit_array(
    x: np.ndarray,
    recipe: dict,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    threads: int = 2,
    device: str = "cpu",
    on_step=None,
) -> FitResult:
    """Train on a plain (N, d) array (used by benchmarks). ``recipe["shuffle"]=False`` keeps row
    order."""
    seed_everything(seed)
    dev = torch.device(device)
    recipe = dict(recipe, seed=seed)
    sae = build_sae(recipe, x.shape[1])
    torch.set_num_threads(step_threads(threads, batch_size, sae.d_in, sae.d_sae))
    rows = RowSet(np.array([[0, len(x)]]))
    sample = torch.from_numpy(np.asarray(x[: min(len(x), 20000)], dtype=np.float32))
    scale = input_scale_and_init(sae, sample, recipe)
    stream = BatchStream(
        x, rows, batch_size, seed, shuffle=recipe.get("shuffle", True), scale=scale
    )
    res = fit(
        sae,
        stream,
        recipe,
        steps,
        device=dev,
        scale=scale,
        on_step=on_step,
        desc=recipe.get("arch", RECIPE_DEFAULTS["arch"]),
    )
    sae.cpu()
    sae.fold_input_scale(scale)
    sae.eval()
    return res


def _fingerprint(recipe: dict, store_manifest: dict, layer: int) -> str:
    key = json.dumps(
        {"recipe": recipe, "layer": layer, "files": store_manifest.get("files", {})}, sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()


def train_sae(
    store,
    layer: int,
    recipe: dict,
    train_ranges: np.ndarray,
    test_ranges: np.ndarray,
    out_dir,
    threads: int = 1,
    device: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    on_step=None,
) -> dict:
    """Train, evaluate on the held-out rows and save (cfg.json, sae_weights.safetensors,
    metrics.json, log).

    ``train_ranges``/``test_ranges``: (n, 2) row ranges, one per sequence. A checkpoint file
    (default: ``<out_dir>.ckpt``) is written every ``recipe["checkpoint_every"]`` steps and removed
    at the end. ``threads``: torch threads, except that small SAEs train on one
    (:func:`step_threads`).
    """
    from saeflow.utils import torch_device

    seed = int(recipe.get("seed", RECIPE_DEFAULTS["seed"]))
    rng = seed_everything(seed)
    dev = torch_device(recipe.get("device") or device)
    arr = store.layer(layer)
    path = str(store.dir / f"layer{layer}.npy")
    d = arr.shape[1]
    train, test = RowSet(train_ranges), RowSet(test_ranges)
    if train.n == 0:
        raise SaeflowError(f"{path}: no training tokens (is every sequence in the test split?)")
    sae = build_sae(recipe, d)
    torch.set_num_threads(step_threads(threads, int(recipe["batch_size"]), d, sae.d_sae))
    n_sample = min(train.n, 20000)
    sample_rows = train.rows(np.sort(rng.choice(train.n, n_sample, replace=False)))
    sample = torch.from_numpy(RowReader(arr, path).rows(sample_rows))
    scale = input_scale_and_init(sae, sample, recipe)
    outlier = recipe.get("outlier_norm_factor")
    outlier_norm = (
        float(outlier) * float((sample * scale).norm(dim=1).median()) if outlier else None
    )
    del sample
    bs = int(recipe["batch_size"])
    n_vec = min(train.n, int(recipe.get("max_vectors") or train.n))
    steps = int(recipe.get("steps") or 0) or max(1, int(float(recipe["epochs"]) * n_vec / bs))
    stream = BatchStream(
        arr, train, bs, seed, max_vectors=n_vec, scale=scale, outlier_norm=outlier_norm, path=path
    )
    ckpt = Path(checkpoint) if checkpoint else Path(str(out_dir).rstrip("/") + ".ckpt")
    fp = _fingerprint(recipe, store.manifest, layer)
    t0 = time.time()
    res = fit(
        sae,
        stream,
        recipe,
        steps,
        device=dev,
        scale=scale,
        checkpoint=ckpt,
        checkpoint_every=int(recipe.get("checkpoint_every") or 0),
        fingerprint=fp,
        desc=f"SAE layer {layer}",
        on_step=on_step,
    )
    sae.cpu()
    sae.fold_input_scale(scale)
    ev = evaluate(sae, arr, test, 1.0, path=path)
    freq = ev.pop("frequency", np.zeros(sae.d_sae))
    times = np.array(res.step_times[5:] or res.step_times)
    metrics = dict(
        ev,
        layer=layer,
        arch=sae.architecture,
        steps=steps,
        train_tokens=n_vec,
        input_scale=scale,
        train_seconds=round(time.time() - t0, 1),
        step_ms=round(1e3 * float(np.median(times)), 3),
        final_train_fvu=res.curve[-1]["fvu"],
        resumed_from_step=res.resumed_from,
        outliers_dropped=res.n_outliers,
        device=str(dev),
        amp_bf16=bool(sae.amp),
    )
    if getattr(sae, "target_l0", None):
        metrics["target_l0"] = float(sae.target_l0)
    if hasattr(sae, "coef"):
        metrics["sparsity_coef"] = float(sae.coef)
    log.info("layer %d: %s", layer, metrics)
    meta = dict(
        layer=layer,
        recipe=recipe,
        input_scale=scale,
        **{k: store.manifest.get(k) for k in ("model", "dataset")},
    )
    with atomic_path(out_dir) as tmp:
        sae.save(tmp, metadata=meta)
        write_json(tmp / "metrics.json", metrics)
        np.save(tmp / "feature_frequency.npy", freq)
        with open(tmp / "training_log.jsonl", "w") as fh:
            for row in res.curve:
                fh.write(json.dumps(row) + "\n")
    if ckpt.exists():
        ckpt.unlink()
    return metrics
