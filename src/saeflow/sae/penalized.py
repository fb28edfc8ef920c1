"""SAEs with a sparsity penalty: JumpReLU (Rajamanoharan et al. 2024) and ReLU + L1.

Both can calibrate their sparsity coefficient to a target L0 during training
(``target_l0``): after every step, log(coef) moves by ``gain * clip(log(L0 /
target), -1, 1)`` -- an integral controller in log space whose step is bounded
(at most a factor e^gain per step), so it settles where the batch L0 equals the
target. The bound matters: an unbounded multiplicative update overshoots by
orders of magnitude early in training, and a JumpReLU whose thresholds were
pushed far above every pre-activation gets no gradient to lower them again
(latents die for good). Without ``target_l0`` the coefficient stays at
``sparsity_coef``.
"""

from __future__ import annotations

import math

import torch

from saeflow.sae.base import RECIPE_DEFAULTS, SAE
from saeflow.sae.kernels import SparseCodes


class PenalizedSAE(SAE):
    def __init__(
        self,
        d_in: int,
        d_sae: int,
        seed: int = 0,
        coef: float = 1e-3,
        target_l0: float | None = None,
        gain: float = 0.03,
    ):
        super().__init__(d_in, d_sae, seed)
        self.register_buffer("coef", torch.tensor(float(coef)))
        self.target_l0 = target_l0
        self.gain = gain
        self.two_sided_penalty = False

    def export_tensors(self) -> dict[str, torch.Tensor]:
        t = super().export_tensors()
        t.pop("coef")
        return t

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(dict(tensors, coef=self.coef.clone()))

    @torch.no_grad()
    def after_step(self, state: dict, stats: dict) -> None:
        if self.target_l0:
            l0 = float(stats["l0"])
            err = min(1.0, max(-1.0, math.log((l0 + 0.5) / (self.target_l0 + 0.5))))
            if self.two_sided_penalty:
                # The quadratic penalty pulls L0 towards the target from both sides, so its
                # coefficient is how
                # tightly L0 is held there: it grows while L0 is more than 5% off the target, either
                # way, and
                # never shrinks (shrinking it when L0 is low would weaken the pull back up).
                err = max(0.0, abs(err) - 0.05)
            self.coef.mul_(math.exp(self.gain * err)).clamp_(1e-9, 1e3)
        stats["coef"] = float(self.coef)

    @staticmethod
    def _recipe_kwargs(recipe: dict) -> dict:
        return dict(
            coef=float(recipe.get("sparsity_coef", RECIPE_DEFAULTS["sparsity_coef"])),
            target_l0=recipe.get("target_l0"),
            gain=float(recipe.get("calibration_gain", RECIPE_DEFAULTS["calibration_gain"])),
        )


class ReluL1SAE(PenalizedSAE):
    """z = ReLU(pre); loss = FVU + coef * mean_rows sum_i z_i ||W_dec,i|| (decoder rows are unit
    norm)."""

    architecture = "relu_l1"
    saelens_architecture = "standard"

    @classmethod
    def from_recipe(cls, recipe: dict, d_in: int) -> "ReluL1SAE":
        return cls(
            d_in,
            int(recipe["expansion"] * d_in),
            int(recipe.get("seed", RECIPE_DEFAULTS["seed"])),
            **cls._recipe_kwargs(recipe),
        )

    @classmethod
    def from_cfg(cls, cfg: dict) -> "ReluL1SAE":
        return cls(cfg["d_in"], cfg["d_sae"])

    def cfg_extra(self) -> dict:
        return {}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def select(self, pre: torch.Tensor, state: dict) -> SparseCodes:
        return SparseCodes.from_mask(pre > 0, pre)

    def code_grad(self, codes, g_vals, state, losses):
        b = codes.n_rows
        losses["l1"] = codes.values.sum() / b
        return g_vals + self.coef / b


class JumpReLUSAE(PenalizedSAE):
    """z = pre * H(pre - theta), learned per-latent thresholds theta; loss = FVU + coef * L0.

    With ``target_l0`` the penalty is Gemma Scope 2's quadratic one around the
    target, coef * mean_rows (2/T) (L0_row - T)^2 (two-sided: it also lowers
    thresholds when L0 falls below T), and coef is calibrated as for ReLU+L1.

    The Heaviside step gets a straight-through estimator with a rectangle kernel
    of width ``bandwidth``: d z / d theta = -(theta / eps) K((pre - theta) / eps) and
    d L0 / d theta = -(1 / eps) K(...), non-zero only for entries within eps/2 of
    the threshold ("ste_to_input: False": pre-activations get no STE gradient,
    as in DeepMind's JumpReLU). theta is parameterised directly and projected to
    stay positive, as SAELens does: Adam moves a parameter by about lr per step,
    so a log parameterisation barely moves a small initial threshold.
    """

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        seed: int = 0,
        init_threshold: float = 0.1,
        bandwidth: float = 0.05,
        **kw,
    ):
        super().__init__(d_in, d_sae, seed, **kw)
        self.threshold = torch.nn.Parameter(torch.full((d_sae,), float(init_threshold)))
        self.bandwidth = bandwidth
        self.two_sided_penalty = bool(self.target_l0)

    @classmethod
    def from_recipe(cls, recipe: dict, d_in: int) -> "JumpReLUSAE":
        return cls(
            d_in,
            int(recipe["expansion"] * d_in),
            int(recipe.get("seed", RECIPE_DEFAULTS["seed"])),
            float(recipe.get("init_threshold", RECIPE_DEFAULTS["init_threshold"])),
            float(recipe.get("bandwidth", RECIPE_DEFAULTS["bandwidth"])),
            **cls._recipe_kwargs(recipe),
        )

    @classmethod
    def from_cfg(cls, cfg: dict) -> "JumpReLUSAE":
        return cls(cfg["d_in"], cfg["d_sae"])

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor) -> None:
        """With a target L0, start each threshold at the quantile where its latent fires on
        target/d_sae of the sample, so training starts at the target L0 instead of ~d_sae/2 (the
        coefficient controller then only has to hold it there, rather than drive L0 down by an order
        of magnitude and overshoot)."""
        if not self.target_l0:
            return
        x = x[:4096]
        q = 1.0 - min(1.0, float(self.target_l0) / self.d_sae)
        rank = max(1, min(len(x), int(round(q * len(x)))))
        for a in range(0, self.d_sae, 1024):
            pre = (x - self.b_dec) @ self.W_enc[:, a : a + 1024] + self.b_enc[a : a + 1024]
            self.threshold.data[a : a + 1024] = pre.kthvalue(rank, dim=0).values.clamp_min(1e-3)

    def select(self, pre: torch.Tensor, state: dict) -> SparseCodes:
        return SparseCodes.from_mask(pre > self.threshold, pre)

    def code_grad(self, codes, g_vals, state, losses):
        return g_vals

    def extra_terms(self, pre, codes, x, xc, g, err, state, losses, grads, enc_terms) -> None:
        b, eps = x.shape[0], self.bandwidth
        theta = self.threshold.detach()
        near = SparseCodes.from_mask((pre - theta).abs() < eps / 2, pre)
        # reconstruction: sum over near entries of dL/dz * (-(theta/eps)); dL/dz from the sampled
        # product
        g_z = near.sampled_dot(g, self.W_dec)
        g_theta = -near.latent_sum(g_z, self.d_sae) * theta / eps
        if self.target_l0:
            # Gemma Scope 2's quadratic penalty around the target: coef * mean_rows 2/T (L0_row -
            # T)^2.
            # Two-sided: rows below the target push their near-threshold latents' thresholds down.
            t = float(self.target_l0)
            row_l0 = torch.diff(codes.offsets, append=codes.offsets.new_tensor([codes.nnz])).to(
                pre.dtype
            )
            losses["l0_loss"] = (2.0 / t) * (row_l0 - t).pow(2).mean()
            per_entry = (4.0 / t) * (row_l0 - t)[near.rows]
            g_theta -= near.latent_sum(per_entry, self.d_sae) * (self.coef / (b * eps))
        else:
            # L0 penalty: coef * (1/B) sum H(pre - theta)
            losses["l0_loss"] = codes.nnz / b
            g_theta -= near.latent_sum(torch.ones_like(g_z), self.d_sae) * (self.coef / (b * eps))
        grads["threshold"] = g_theta

    @torch.no_grad()
    def after_step(self, state: dict, stats: dict) -> None:
        self.threshold.data.clamp_(min=1e-6)
        super().after_step(state, stats)
