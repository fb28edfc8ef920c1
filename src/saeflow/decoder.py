"""Reading an SAE's decoder: the one way (:func:`decoder_rows`), free of torch.

It lives in the core, not in :mod:`saeflow.sae` (which re-exports it), because importing anything
under ``saeflow.sae`` imports torch, and rules such as the atlas read decoders in an environment
without torch: a saved SAE directory is read straight from its ``sae_weights.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from saeflow.utils import SaeflowError

#: the weights file of a saved SAE (SAELens layout)
WEIGHTS_FILE = "sae_weights.safetensors"


def decoder_rows(obj, *, unit_norm: bool = False) -> np.ndarray:
    """The decoder ``W_dec`` as a float32 (d_sae, d_in) array, one row per feature.

    ``obj``: an SAE (anything with ``W_dec``), a torch tensor, an array, or a saved SAE directory.
    ``unit_norm``: scale every row to unit L2 norm (rows of norm 0 stay 0), for cosines.
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj) / WEIGHTS_FILE
        if not path.exists():
            raise SaeflowError(f"{path}: no such file; not a saved SAE")
        from safetensors.numpy import load_file

        try:
            obj = load_file(str(path))["W_dec"]
        except Exception as e:
            raise SaeflowError(f"{path}: cannot read W_dec ({e})") from None
    if hasattr(obj, "W_dec"):
        obj = obj.W_dec
    if hasattr(obj, "detach"):
        obj = obj.detach().float().cpu().numpy()
    w = np.asarray(obj, dtype=np.float32)
    if w.ndim != 2:
        raise SaeflowError(f"decoder must be a 2-D (d_sae, d_in) matrix (got shape {w.shape})")
    if unit_norm:
        w = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
    return w
