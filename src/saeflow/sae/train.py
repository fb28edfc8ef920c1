"""Train an SAE on one layer of an activation store, streaming batches from the memory map.

Practice taken from the SAE libraries people use: unit-norm decoder rows with
the parallel gradient removed, b_dec initialised at the geometric median of a
sample, inputs scaled so E||x|| = sqrt(d) (folded into the weights at save
time, so the saved SAE acts on raw activations), AuxK for dead latents, linear
warmup and cosine decay, a held-out split by sequence.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import torch

from ..activations import ActivationStore
from ..utils import atomic_path, seed_everything, write_json
from . import build_sae

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


def _read_rows(arr: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    rows = np.sort(rows)
    return torch.from_numpy(np.asarray(arr[rows], dtype=np.float32))


@torch.no_grad()
def evaluate(sae, arr: np.ndarray, rows: np.ndarray, scale: float, chunk: int = 16384) -> dict:
    """Explained variance, L0, dead/dense latents and firing frequencies on ``rows``."""
    sae.eval()
    n = len(rows)
    if n == 0:
        return {}
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_x2 = 0.0
    sse = 0.0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    l0 = 0.0
    for i in range(0, n, chunk):
        x = _read_rows(arr, rows[i : i + chunk]) * scale
        z = sae.encode(x)
        x_hat = sae.decode(z)
        sse += float((x - x_hat).pow(2).sum())
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


def train_sae(store: ActivationStore, layer: int, recipe: dict, train_rows: np.ndarray, test_rows: np.ndarray,
              out_dir, threads: int = 1, device: str = "auto") -> dict:
    """Train, evaluate on the held-out rows and save (cfg.json, sae_weights.safetensors, metrics.json, log)."""
    from tqdm.auto import tqdm

    from ..utils import torch_device

    torch.set_num_threads(max(1, threads))
    rng = seed_everything(int(recipe["seed"]))
    dev = torch_device(device)
    arr = store.layer(layer)
    d = arr.shape[1]
    if recipe["max_vectors"] and len(train_rows) > recipe["max_vectors"]:
        train_rows = np.sort(rng.choice(train_rows, recipe["max_vectors"], replace=False))
    sample = _read_rows(arr, rng.choice(train_rows, min(len(train_rows), 20000), replace=False))
    scale = math.sqrt(d) / float(sample.norm(dim=1).mean().clamp_min(1e-8))
    sae = build_sae(recipe, d)
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(sample * scale))
    sae.to(dev)
    bs = int(recipe["batch_size"])
    steps = max(1, int(recipe["epochs"] * len(train_rows) / bs))
    warm = max(1, int(steps * recipe["warmup_fraction"]))
    opt = torch.optim.Adam(sae.parameters(), lr=recipe["lr"], betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))) * 0.9 + 0.1)
    )
    # A latent is "dead" for AuxK when it has not fired within the last `dead_window` tokens.
    last_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
    seen = 0
    dead_window = int(recipe["dead_window"])
    aux_k = int(recipe.get("aux_k") or max(1, d // 2))
    curve = []
    perm = rng.permutation(train_rows)
    pos = 0
    t0 = time.time()
    sae.train()
    for step in tqdm(range(steps), desc=f"SAE layer {layer}", mininterval=5):
        if pos + bs > len(perm):
            perm, pos = rng.permutation(train_rows), 0
        x = _read_rows(arr, perm[pos : pos + bs]).to(dev) * scale
        pos += bs
        pre = sae.pre_acts(x)
        z = sae.activation(pre)
        x_hat = sae.decode(z)
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        fvu = mse / (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        seen += len(x)
        fired = (z > 0).any(0)
        last_fired[fired] = seen
        dead = (seen - last_fired) > dead_window
        aux = sae.aux_loss(pre, err.detach(), dead, aux_k) if hasattr(sae, "aux_loss") else x.new_zeros(())
        loss = fvu + recipe["aux_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
        if step % max(1, steps // 100) == 0 or step == steps - 1:
            curve.append(dict(step=step, tokens=seen, fvu=fvu.item(), aux=aux.item(), dead=float(dead.float().mean()),
                              l0=float((z > 0).sum(-1).float().mean()), lr=sched.get_last_lr()[0]))
    sae.cpu()
    sae.fold_input_scale(scale)
    ev = evaluate(sae, arr, test_rows, 1.0)
    freq = ev.pop("frequency")
    metrics = dict(ev, layer=layer, steps=steps, train_tokens=len(train_rows), input_scale=scale,
                   train_seconds=round(time.time() - t0, 1), final_train_fvu=curve[-1]["fvu"])
    log.info("layer %d: %s", layer, {k: v for k, v in metrics.items()})
    meta = dict(layer=layer, recipe=recipe, **{k: store.manifest.get(k) for k in ("model", "dataset")})
    with atomic_path(out_dir) as tmp:
        sae.save(tmp, metadata=meta)
        write_json(tmp / "metrics.json", metrics)
        np.save(tmp / "feature_frequency.npy", freq)
        with open(tmp / "training_log.jsonl", "w") as fh:
            for row in curve:
                fh.write(json.dumps(row) + "\n")
    return metrics
