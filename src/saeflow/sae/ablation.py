"""SAE feature ablation with the error term kept, and its specificity against a frequency-matched
null.

Ablating feature f at a layer replaces the residual stream x by

    x' = x - z_f(x) * W_dec[f]

i.e. the SAE reconstruction without f's contribution *plus the SAE's error term* (x - x_hat), so
the only change is the feature's own write: the model does not also lose what the SAE fails to
reconstruct (splicing in x_hat alone would confound the feature's effect with reconstruction error).
:func:`ablate` computes x'; callers run the rest of the model on it (the adapters' ``Patch``).

Specificity: the effect of ablating f, measured per token (e.g. the change of the masked-LM loss or
of a probe's logit), should concentrate at the tokens where f fires. :func:`specificity` is the mean
absolute effect at f's active tokens minus the mean absolute effect at the other tokens. A feature
that fires often has a bigger footprint whatever it means, so the null is features with a matched
firing frequency (:func:`matched_null_features`: within a factor ``tol`` on the log scale, seeded),
ablated the same way; :func:`null_p` gives the +1 empirical p of the observed specificity among
them."""

from __future__ import annotations

import numpy as np
import torch

from saeflow.utils import SaeflowError


@torch.no_grad()
def ablate(sae, x: torch.Tensor, features) -> torch.Tensor:
    """x with the contribution of ``features`` (an index or a list) removed, the error term kept."""
    if x.shape[-1] != sae.W_dec.shape[1]:
        raise SaeflowError(
            f"activations have width {x.shape[-1]}, the SAE reads {sae.W_dec.shape[1]}"
        )
    if not torch.isfinite(x).all():
        raise SaeflowError("NaN or inf in the activations to ablate")
    f = torch.as_tensor(np.atleast_1d(features), dtype=torch.long)
    if (f < 0).any() or (f >= sae.W_dec.shape[0]).any():
        raise SaeflowError(f"feature index out of range 0..{sae.W_dec.shape[0] - 1}")
    flat = x.reshape(-1, x.shape[-1])
    z = sae.encode(flat.to(sae.W_dec.dtype))[:, f]  # (N, k)
    out = flat - (z @ sae.W_dec[f]).to(flat.dtype)
    return out.reshape(x.shape)


def matched_null_features(
    freq, feature: int, n: int, *, tol: float = 1.5, seed: int = 0, exclude=(), fill: bool = False
) -> np.ndarray:
    """Up to ``n`` other features whose firing frequency is within a factor ``tol`` of ``feature``'s
    (dead features never qualify), drawn without replacement (seeded).

    ``fill``: when fewer than ``n`` lie within ``tol`` (dense or rare features have few peers), add
    the live features next closest in log frequency until there are ``n`` (the nearest-frequency
    null); the caller reports how far the matching had to reach."""
    freq = np.asarray(freq, dtype=np.float64)
    if not 0 <= feature < len(freq):
        raise SaeflowError(f"feature {feature} out of range 0..{len(freq) - 1}")
    if freq[feature] <= 0:
        raise SaeflowError(f"feature {feature} never fires: nothing to ablate")
    with np.errstate(divide="ignore"):
        ratio = np.abs(np.log(freq) - np.log(freq[feature]))
    ok = (freq > 0) & (ratio <= np.log(tol))
    ok[feature] = False
    ok[np.asarray(list(exclude), dtype=np.int64)] = False
    cand = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    pick = rng.choice(cand, min(n, len(cand)), replace=False) if len(cand) else cand
    if fill and len(pick) < n:
        rest = (freq > 0) & ~ok
        rest[feature] = False
        rest[np.asarray(list(exclude), dtype=np.int64)] = False
        others = np.flatnonzero(rest)
        others = others[np.argsort(ratio[others], kind="stable")][: n - len(pick)]
        pick = np.concatenate([pick, others])
    return np.sort(pick)


def specificity(effect, active) -> float:
    """Mean |effect| at active tokens minus mean |effect| elsewhere (NaN if either set is empty)."""
    effect = np.abs(np.asarray(effect, dtype=np.float64))
    active = np.asarray(active, dtype=bool)
    if effect.shape != active.shape:
        raise SaeflowError(f"effect {effect.shape} and active mask {active.shape} differ in shape")
    if not np.isfinite(effect).all():
        raise SaeflowError("NaN or inf in the ablation effects")
    if not active.any() or active.all():
        return float("nan")
    return float(effect[active].mean() - effect[~active].mean())


def null_p(observed: float, null) -> tuple[float, int]:
    """(1 + #null >= observed) / (1 + n) over the finite null values; returns (p, n)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed):
        return float("nan"), len(null)
    return (1.0 + float((null >= observed).sum())) / (1.0 + len(null)), len(null)
