"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations (ReLU'd), AuxK for dead latents."""

from __future__ import annotations

import torch

from .base import SAE


class TopKSAE(SAE):
    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        super().__init__(d_in, d_sae, seed)
        self.k = k

    @classmethod
    def from_recipe(cls, recipe: dict, d_in: int) -> "TopKSAE":
        return cls(d_in, int(recipe["expansion"] * d_in), int(recipe["k"]), int(recipe.get("seed", 0)))

    @classmethod
    def from_cfg(cls, cfg: dict) -> "TopKSAE":
        return cls(cfg["d_in"], cfg["d_sae"], cfg["k"])

    def cfg_extra(self) -> dict:
        return {"k": self.k}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def aux_loss(self, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
        """AuxK: reconstruct the main model's error from the top ``aux_k`` dead latents.

        The error e = x - x_hat already has b_dec removed on both sides, so the
        auxiliary reconstruction is z_aux W_dec with no b_dec (adding it here
        would count it twice). Normalised by the error's variance.
        """
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k = min(aux_k, n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        vals, idx = masked.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        e_hat = z @ self.W_dec
        denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return (e_hat - residual).pow(2).sum(-1).mean() / denom
