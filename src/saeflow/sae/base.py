"""The shared SAE parameterisation and its hand-written sparse training step.

    pre   = (x - b_dec) @ W_enc + b_enc          (the one dense product)
    z     = f(pre)                                (architecture: TopK, BatchTopK, JumpReLU, ReLU)
    x_hat = z @ W_dec + b_dec                     (sparse: only active latents)

Parameters use SAELens names and shapes (``W_enc`` (d_in, d_sae), ``W_dec``
(d_sae, d_in)), so a saved SAE loads in SAELens. ``W_enc`` is stored as the
transpose of a contiguous (d_sae, d_in) matrix: its rows per latent are then
contiguous, which the sparse encoder gradient (an embedding-bag backward) needs.

:meth:`SAE.train_step` computes the loss and writes every parameter's gradient
by hand (no autograd graph): the decoder and the encoder's backward touch only
the active (row, latent) pairs, through :mod:`saeflow.sae.kernels`. Tests check
these gradients against autograd on the dense formulation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from saeflow.sae.kernels import SparseCodes
from saeflow.utils import SaeflowError, atomic_path, write_json

#: Defaults of the ``saes`` recipe keys the library reads when a recipe leaves them out. The config
#: schema (``definitions.sae`` of workflow/schemas/config.schema.yaml) is where defaults are set;
#: these are its values, for library callers that build recipes by hand, and
#: tests/core/test_one_implementation.py checks that they agree. Read them as
#: ``recipe.get(key, RECIPE_DEFAULTS[key])``, never with a literal.
RECIPE_DEFAULTS = {
    "arch": "topk",
    "seed": 0,
    "aux_coef": 0.03125,
    "threshold_momentum": 0.99,
    "sparsity_coef": 0.001,
    "calibration_gain": 0.03,
    "init_threshold": 0.1,
    "bandwidth": 0.05,
    "warmup_fraction": 0.05,
    "dead_window": 20000,
    "b_dec_init": "geometric_median",
}

#: recipe ``arch`` -> SAE class. A subclass that names its ``architecture`` registers itself when
#: it is defined; ``saeflow.sae`` imports every architecture's module, so importing anything from
#: the package (this module included) fills it.
ARCHITECTURES: dict[str, type[SAE]] = {}


class SAE(nn.Module):
    architecture = "base"  # saeflow's name (the recipe's ``arch``)
    saelens_architecture = "standard"  # the class SAELens instantiates from cfg.json

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "architecture" in cls.__dict__:
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, d_in: int, d_sae: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        # tied init (Gao et al.); rows contiguous, see module doc
        self.W_enc = nn.Parameter(w.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.d_in, self.d_sae = d_in, d_sae
        self.aux_k = 0
        self.aux_coef = 0.0
        self.amp = False  # bf16 autocast of the encoder product (set by the trainer on CUDA)

    # --- architecture-specific -------------------------------------------------
    def activation(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select(self, pre: torch.Tensor, state: dict) -> SparseCodes:  # pragma: no cover - abstract
        """Active codes of a training batch; ``codes.pre`` holds their pre-activations."""
        raise NotImplementedError

    def code_grad(
        self, codes: SparseCodes, g_vals: torch.Tensor, state: dict, losses: dict
    ) -> torch.Tensor:
        """d loss / d pre at the active entries, given d loss / d z there (adds sparsity terms)."""
        return g_vals * (codes.pre > 0)

    def extra_terms(self, pre, codes, x, xc, g, g_scale, state, losses, grads, enc_terms) -> None:
        """Architecture losses beyond reconstruction (AuxK, threshold STE, ...); ``g / g_scale`` =
        x_hat - x."""

    def after_step(self, state: dict, stats: dict) -> None:
        """Per-step bookkeeping after the optimiser step (thresholds, coefficient calibration)."""

    def init_from_sample(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation from a sample of (scaled) training inputs, after b_dec is
        set."""

    def cfg_extra(self) -> dict:
        return {}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors written to sae_weights.safetensors (SAELens names)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors)

    # --- inference (dense, autograd-friendly) -------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # --- training ------------------------------------------------------------------
    @torch.no_grad()
    def train_step(self, x: torch.Tensor, state: dict) -> dict:
        """One step's loss terms; sets ``.grad`` of every parameter. ``state`` carries dead masks
        etc."""
        b, s = x.shape[0], self.d_sae
        w_rows = self.W_enc.t()  # (d_sae, d_in), contiguous
        xc = x - self.b_dec
        if self.amp:  # the one dense product in bf16 (tensor cores); everything after it in float32
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                pre = torch.addmm(self.b_enc, xc, self.W_enc)
            pre = pre.float()
        else:
            # Into a reused buffer: a fresh (B, d_sae) float32 result is >= glibc's largest mmap
            # threshold
            # (32 MiB at B=4096, d_sae=2048), so allocating it anew page-faults on every step (~20%
            # of the
            # matmul's time on CPU).
            pre = self._workspace("pre", (b, s), x)
            torch.addmm(self.b_enc, xc, self.W_enc, out=pre)
        codes = self.select(pre, state)
        err = codes.matmul(self.W_dec)  # x_hat, then err = x_hat - x in place
        err.add_(self.b_dec).sub_(x)
        flat = x.reshape(-1)
        mean = x.mean(0)
        # E||x - mean||^2
        var = ((torch.dot(flat, flat) - b * torch.dot(mean, mean)) / b).clamp_min(1e-8)
        e = err.reshape(-1)
        fvu = torch.dot(e, e) / (b * var)
        losses = {"fvu": fvu}
        g_scale = 2.0 / (b * var)
        g = err.mul_(g_scale)  # d loss / d x_hat (err itself is g / g_scale)
        grads = {
            "W_dec": codes.weight_grad(g, codes.values, s),
            "b_dec": g.sum(0),
            "b_enc": None,
        }
        g_vals = codes.sampled_dot(g, self.W_dec)
        enc_terms = [(codes, self.code_grad(codes, g_vals, state, losses))]
        self.extra_terms(pre, codes, x, xc, g, g_scale, state, losses, grads, enc_terms)
        g_rows = None
        h = torch.zeros(s, dtype=x.dtype, device=x.device)
        for c, gp in enc_terms:
            gr = c.weight_grad(xc, gp, s)
            g_rows = gr if g_rows is None else g_rows.add_(gr)
            h.index_add_(0, c.latents, gp)
        grads["b_enc"] = h
        grads["b_dec"] -= h @ w_rows  # pre depends on -b_dec through the encoder
        self.W_dec.grad = grads.pop("W_dec")
        self.W_enc.grad = g_rows.t()
        self.b_enc.grad = grads.pop("b_enc")
        self.b_dec.grad = grads.pop("b_dec")
        for name, gr in grads.items():
            getattr(self, name).grad = gr
        active = codes.values > 0
        fired = torch.zeros(s, dtype=torch.bool, device=x.device)
        fired[codes.latents[active]] = True
        losses["l0"] = active.sum() / b
        losses["fired"] = fired
        return losses

    def _workspace(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        ws = self.__dict__.setdefault("_ws", {})
        buf = ws.get(name)
        if (
            buf is None
            or buf.shape != shape
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = ws[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec.data
        g = self.W_dec.grad
        g -= (g * w).sum(dim=1, keepdim=True) * w

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` act on raw ``x``
        (same pre-activations, same codes)."""
        self.W_enc.data *= scale
        self.W_dec.data /= scale
        self.b_dec.data /= scale

    # --- SAELens layout ---------------------------------------------------------
    def cfg(self) -> dict:
        return {
            "architecture": self.saelens_architecture,
            "saeflow_architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **self.cfg_extra(),
        }

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        cfg = self.cfg()
        cfg["metadata"] = metadata or {}
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            tensors = {k: v.cpu().contiguous().float() for k, v in self.export_tensors().items()}
            save_file(tensors, str(tmp / "sae_weights.safetensors"))
            write_json(tmp / "cfg.json", cfg)


def load_sae(directory: str | os.PathLike) -> SAE:
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / "cfg.json"
    if not cfg_path.exists():
        raise SaeflowError(f"{directory}: no cfg.json; not a saved SAE")
    cfg = json.loads(cfg_path.read_text())
    arch = cfg.get("saeflow_architecture", cfg["architecture"])
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise SaeflowError(f"{cfg_path}: unknown architecture {arch!r}")
    sae = cls.from_cfg(cfg)
    try:
        sae.import_tensors(load_file(str(directory / "sae_weights.safetensors")))
    except (RuntimeError, OSError, KeyError) as e:
        raise SaeflowError(f"{directory / 'sae_weights.safetensors'}: cannot load ({e})") from None
    return sae.eval()
