"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs, with AuxK for dead latents."""

from __future__ import annotations

import torch

from saeflow.sae.base import RECIPE_DEFAULTS, SAE
from saeflow.sae.kernels import SparseCodes


class AuxKMixin:
    """AuxK: the top ``aux_k`` dead latents reconstruct the main model's residual.

    The residual e = x - x_hat already has b_dec removed on both sides, so the
    auxiliary reconstruction is z_aux @ W_dec with no b_dec (adding it would
    count it twice). Normalised by the residual's variance, weighted by ``aux_coef``.
    """

    def extra_terms(self, pre, codes, x, xc, g, g_scale, state, losses, grads, enc_terms) -> None:
        dead = state.get("dead")
        if dead is None or self.aux_coef <= 0:
            return
        dead_idx = dead.nonzero().squeeze(1)
        if dead_idx.numel() == 0:
            losses["aux"] = pre.new_zeros(())
            return
        b = x.shape[0]
        k = min(self.aux_k, dead_idx.numel())
        vals, j = pre.index_select(1, dead_idx).topk(k, dim=1, sorted=False)
        aux = SparseCodes.from_topk(dead_idx[j], vals.relu())
        aux.pre = vals.reshape(-1)
        resid = g * (-1.0 / g_scale)  # x - x_hat
        e_hat = aux.matmul(self.W_dec)
        diff = e_hat - resid
        var = (resid - resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        losses["aux"] = diff.pow(2).sum() / (b * var)
        g_aux = diff.mul_(2.0 * self.aux_coef / (b * var))
        grads["W_dec"] += aux.weight_grad(g_aux, aux.values, self.d_sae)
        enc_terms.append((aux, aux.sampled_dot(g_aux, self.W_dec) * (aux.pre > 0)))


class TopKSAE(AuxKMixin, SAE):
    architecture = "topk"
    saelens_architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        super().__init__(d_in, d_sae, seed)
        self.k = k

    @classmethod
    def from_recipe(cls, recipe: dict, d_in: int) -> "TopKSAE":
        sae = cls(
            d_in,
            int(recipe["expansion"] * d_in),
            int(recipe["k"]),
            int(recipe.get("seed", RECIPE_DEFAULTS["seed"])),
        )
        sae.aux_k = int(recipe.get("aux_k") or max(1, d_in // 2))
        sae.aux_coef = float(recipe.get("aux_coef", RECIPE_DEFAULTS["aux_coef"]))
        return sae

    @classmethod
    def from_cfg(cls, cfg: dict) -> "TopKSAE":
        return cls(cfg["d_in"], cfg["d_sae"], cfg["k"])

    def cfg_extra(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def select(self, pre: torch.Tensor, state: dict) -> SparseCodes:
        vals, idx = pre.topk(self.k, dim=1, sorted=False)
        codes = SparseCodes.from_topk(idx, vals.relu())
        codes.pre = vals.reshape(-1)
        return codes


class BatchTopKSAE(AuxKMixin, SAE):
    """Training keeps the k * B largest activations of the whole batch; inference uses a threshold.

    The inference threshold is the running mean (EMA, ``threshold_momentum``) of
    the smallest activation kept in each training batch (Bussmann et al.). It is
    saved as a per-latent ``threshold`` vector in the JumpReLU layout, which is
    how SAELens stores BatchTopK SAEs for inference; codes at inference are
    ``pre * (pre > threshold)``.
    """

    architecture = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0, momentum: float = 0.99):
        super().__init__(d_in, d_sae, seed)
        self.k = k
        self.momentum = momentum
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_recipe(cls, recipe: dict, d_in: int) -> "BatchTopKSAE":
        sae = cls(
            d_in,
            int(recipe["expansion"] * d_in),
            int(recipe["k"]),
            int(recipe.get("seed", RECIPE_DEFAULTS["seed"])),
            float(recipe.get("threshold_momentum", RECIPE_DEFAULTS["threshold_momentum"])),
        )
        sae.aux_k = int(recipe.get("aux_k") or max(1, d_in // 2))
        sae.aux_coef = float(recipe.get("aux_coef", RECIPE_DEFAULTS["aux_coef"]))
        return sae

    @classmethod
    def from_cfg(cls, cfg: dict) -> "BatchTopKSAE":
        return cls(cfg["d_in"], cfg["d_sae"], cfg.get("k", 0))

    def cfg_extra(self) -> dict:
        return {"k": self.k}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        t = super().export_tensors()
        t.pop("threshold_updates")
        return t

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(dict(tensors, threshold_updates=torch.ones((), dtype=torch.long)))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def select(self, pre: torch.Tensor, state: dict) -> SparseCodes:
        b = pre.shape[0]
        flat = pre.reshape(-1)
        kk = min(self.k * b, flat.numel())
        cutoff = flat.topk(kk, sorted=False).values.min()
        mask = pre >= cutoff
        if cutoff <= 0:
            mask &= pre > 0
        codes = SparseCodes.from_mask(mask, pre)
        codes.pre = codes.values
        state["batch_min"] = codes.values.min() if codes.nnz else pre.new_zeros(())
        return codes

    @torch.no_grad()
    def after_step(self, state: dict, stats: dict) -> None:
        m = state.pop("batch_min", None)
        if m is None:
            return
        m = m.clamp_min(0)
        if int(self.threshold_updates) == 0:
            self.threshold.fill_(float(m))
        else:
            self.threshold.mul_(self.momentum).add_((1 - self.momentum) * m)
        self.threshold_updates += 1
        stats["threshold"] = float(self.threshold[0])
