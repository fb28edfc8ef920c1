"""The shared SAE parameterisation: x_hat = f((x - b_dec) W_enc + b_enc) W_dec + b_dec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..utils import SaeflowError, atomic_path, write_json


class SAE(nn.Module):
    architecture = "base"

    def __init__(self, d_in: int, d_sae: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.t().clone())  # tied init, as in the OpenAI TopK paper
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.d_in, self.d_sae = d_in, d_sae

    # --- architecture-specific -------------------------------------------------
    def activation(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def cfg_extra(self) -> dict:
        return {}

    # --- shared -----------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

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
        """Make an SAE trained on ``scale * x`` act on raw ``x`` (same codes)."""
        self.W_enc.data *= scale
        self.W_dec.data /= scale
        self.b_dec.data /= scale

    # --- SAELens layout ---------------------------------------------------------
    def cfg(self) -> dict:
        return {
            "architecture": self.architecture,
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
            tensors = {k: v.detach().cpu().contiguous().float() for k, v in self.state_dict().items()}
            save_file(tensors, str(tmp / "sae_weights.safetensors"))
            write_json(tmp / "cfg.json", cfg)


def load_sae(directory: str | os.PathLike) -> SAE:
    from safetensors.torch import load_file

    from . import ARCHITECTURES

    directory = Path(directory)
    cfg_path = directory / "cfg.json"
    if not cfg_path.exists():
        raise SaeflowError(f"{directory}: no cfg.json; not a saved SAE")
    cfg = json.loads(cfg_path.read_text())
    cls = ARCHITECTURES.get(cfg["architecture"])
    if cls is None:
        raise SaeflowError(f"{cfg_path}: unknown architecture {cfg['architecture']!r}")
    sae = cls.from_cfg(cfg)
    sae.load_state_dict(load_file(str(directory / "sae_weights.safetensors")))
    return sae.eval()
