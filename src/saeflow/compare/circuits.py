"""OV / QK audits of attention heads against directions in the residual stream.

Convention (that of :meth:`saeflow.models.base.ModelAdapter.head_weights`): residual vectors are
rows; one head has W_Q, W_K, W_V of shape (d_model, d_head) and W_O of shape (d_head, d_model).
A token x (1 x d_model) attending to a token y writes (attention weight) * y W_V W_O into the
residual stream, and the attention score is x W_Q (y W_K)^T. So

* OV = W_V W_O  (d_model x d_model): what the head writes given what it reads;
* QK = W_Q W_K^T (d_model x d_model): the bilinear form of query and key residuals.

Biases, LayerNorm and the softmax are outside these matrices (the audit is of the weights). The
head of block L reads residual layer L - 1 and writes into residual layer L, so a probe direction
or an SAE decoder row is best taken from the layer the question is about (read side: L - 1,
write side: L).

For a direction u (unit vector û = u / |u|) and the SVD M = U S V^T (columns u_i of U: input
directions, read; columns v_i of V: output directions, written; s_1 >= s_2 >= ...), with k the
number of top singular directions considered:

``ov_in_cos`` / ``ov_out_cos``
    |cos(û, u_1)| and |cos(û, v_1)| for OV's top singular pair (absolute: a singular vector's sign
    is arbitrary).
``ov_in_max_cos`` / ``ov_out_max_cos`` (with ``*_argmax``)
    max over i <= k of |cos(û, u_i)| / |cos(û, v_i)|.
``ov_read_k`` = |P_{U_k} û| = sqrt(sum_{i<=k} (û . u_i)^2)
    how much of u lies in the span of the head's top-k read directions.
``write_cos`` (the top output-write cosine) = |P_{V_k} û| = sqrt(sum_{i<=k} (û . v_i)^2)
    = max over inputs x in span(u_1..u_k) of cos(u, x OV): the best alignment with u of anything
    the head can write through its top-k singular directions (x OV sweeps exactly span(v_1..v_k)).
    For a random head and direction it is about sqrt(k / d_model).
``write_cos_full``
    the same over all singular directions with s_i > 1e-10 s_1 (the whole image of OV, rank <=
    d_head): max over all x of cos(u, x OV).
``self_write_cos`` = cos(u, u OV)
    where the head sends u itself (NaN when u OV = 0).
``self_gain`` = u OV u^T / |u|^2
    the component along u of what the head writes when it reads u (scale-free in u: the same for u
    and 2u); positive: the head copies u forward, negative: it suppresses u.
``qk_query_cos`` / ``qk_key_cos``
    |cos| of û with QK's top left (query side) / right (key side) singular vectors.
``qk_self`` = u QK u^T / |u|^2
    the attention score between two tokens that both carry u (up to the 1 / sqrt(d_head) scale):
    positive when u-tokens attend to u-tokens.

Also ``ov_s1`` / ``qk_s1`` (top singular values) and ``ov_s1_share`` (s_1^2 / sum s_i^2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError

AUDIT_COLUMNS = [
    "layer",
    "head",
    "direction",
    "norm",
    "ov_in_cos",
    "ov_out_cos",
    "ov_in_max_cos",
    "ov_in_argmax",
    "ov_out_max_cos",
    "ov_out_argmax",
    "ov_read_k",
    "write_cos",
    "write_cos_full",
    "self_write_cos",
    "self_gain",
    "qk_query_cos",
    "qk_key_cos",
    "qk_self",
    "ov_s1",
    "ov_s1_share",
    "qk_s1",
    "k",
]


def _np(w, name: str) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().float().cpu().numpy()
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise SaeflowError(f"{name} must be a numeric array") from None
    if not np.isfinite(w).all():
        raise SaeflowError(f"{name} holds NaN/inf values")
    return w


def check_head(W_Q, W_K, W_V, W_O) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one head's weights (d_model x d_head, d_head x
    d_model) and return them as float64."""
    W_Q, W_K, W_V, W_O = (
        _np(w, n) for w, n in ((W_Q, "W_Q"), (W_K, "W_K"), (W_V, "W_V"), (W_O, "W_O"))
    )
    for n, w in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        if w.ndim != 2:
            raise SaeflowError(
                f"{n} of one head must be 2-D (got shape {w.shape}); for a layer's (heads, ...) "
                "arrays use audit_heads"
            )
    d = W_Q.shape[0]
    if W_K.shape != W_Q.shape:
        raise SaeflowError(
            f"W_Q {W_Q.shape} and W_K {W_K.shape} must have the same shape (d_model, d_head)"
        )
    if W_V.shape[0] != d:
        raise SaeflowError(
            f"W_V has {W_V.shape[0]} rows but W_Q has {d}: both are (d_model, d_head)"
        )
    if W_O.shape != (W_V.shape[1], d):
        hint = (
            " (W_O looks transposed: pass it as (d_head, d_model))"
            if W_O.shape == (d, W_V.shape[1])
            else ""
        )
        raise SaeflowError(
            f"W_O has shape {W_O.shape}; with W_V {W_V.shape} it must be "
            f"({W_V.shape[1]}, {d}){hint}"
        )
    return W_Q, W_K, W_V, W_O


def _directions(directions, d: int) -> tuple[list[str], np.ndarray]:
    if isinstance(directions, Mapping):
        names = [str(k) for k in directions]
        vecs = [_np(v, f"direction {k!r}").reshape(-1) for k, v in directions.items()]
        for n, v in zip(names, vecs):
            if v.size != d:
                raise SaeflowError(
                    f"direction {n!r} has {v.size} entries but the model's d_model is {d}"
                )
        D = np.vstack(vecs) if vecs else np.zeros((0, d))
    elif isinstance(directions, pd.DataFrame):
        names, D = [str(i) for i in directions.index], _np(directions.to_numpy(), "directions")
    else:
        D = _np(directions, "directions")
        if D.ndim == 1:
            D = D[None, :]
        names = [str(i) for i in range(len(D))]
    if D.ndim != 2 or D.shape[1] != d:
        raise SaeflowError(f"directions must be (n, d_model = {d}) (got shape {D.shape})")
    if len(D) == 0:
        raise SaeflowError("no directions to audit")
    norms = np.linalg.norm(D, axis=1)
    if (norms == 0).any():
        raise SaeflowError(
            f"directions {[n for n, z in zip(names, norms == 0) if z][:3]} are zero vectors"
        )
    return names, D


def _svd_lowrank(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of A @ B (A: d x h, B: h x d) without forming the d x d product: QR of A and B^T, SVD of
    h x h."""
    qa, ra = np.linalg.qr(A)
    qb, rb = np.linalg.qr(B.T)
    u, s, vt = np.linalg.svd(ra @ rb.T)
    return qa @ u, s, qb @ vt.T  # U (d x h), s, V (d x h)


def audit_head(
    W_Q, W_K, W_V, W_O, directions, *, k: int = 5, layer=None, head=None
) -> pd.DataFrame:
    """OV/QK audit of one head against one or more directions: one row per direction (module doc).

    ``directions``: a vector (d_model,), an (n, d_model) array, a mapping name -> vector, or a
    DataFrame (index: names). ``k``: the number of top singular directions (capped at d_head).
    """
    W_Q, W_K, W_V, W_O = check_head(W_Q, W_K, W_V, W_O)
    d = W_Q.shape[0]
    names, D = _directions(directions, d)
    if int(k) < 1:
        raise SaeflowError(f"audit_head: k must be >= 1 (got {k})")
    U, s, V = _svd_lowrank(W_V, W_O)
    Uq, sq, Vq = _svd_lowrank(W_Q, W_K.T)
    kk = min(int(k), len(s))
    rank = int((s > 1e-10 * max(s[0], 1e-300)).sum()) if s.size and s[0] > 0 else 0
    norms = np.linalg.norm(D, axis=1)
    Dh = D / norms[:, None]
    ci = Dh @ U  # (n, h): cosines with the input singular vectors
    co = Dh @ V
    uov = (Dh @ W_V) @ W_O  # û OV  (n, d)
    gain = np.einsum("nd,nd->n", uov, Dh)  # û OV û^T = u OV u^T / |u|^2
    nrm = np.linalg.norm(uov, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        self_cos = np.where(nrm > 0, gain / np.where(nrm > 0, nrm, 1.0), np.nan)
    qk_self = np.einsum("nd,nd->n", (Dh @ W_Q), (Dh @ W_K))
    tot = float((s**2).sum())
    return pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "direction": names,
            "norm": norms,
            "ov_in_cos": np.abs(ci[:, 0]),
            "ov_out_cos": np.abs(co[:, 0]),
            "ov_in_max_cos": np.abs(ci[:, :kk]).max(axis=1),
            "ov_in_argmax": np.abs(ci[:, :kk]).argmax(axis=1),
            "ov_out_max_cos": np.abs(co[:, :kk]).max(axis=1),
            "ov_out_argmax": np.abs(co[:, :kk]).argmax(axis=1),
            "ov_read_k": np.sqrt((ci[:, :kk] ** 2).sum(axis=1)),
            "write_cos": np.sqrt((co[:, :kk] ** 2).sum(axis=1)),
            "write_cos_full": np.sqrt((co[:, :rank] ** 2).sum(axis=1)),
            "self_write_cos": self_cos,
            "self_gain": gain,
            "qk_query_cos": np.abs(Dh @ Uq[:, 0]),
            "qk_key_cos": np.abs(Dh @ Vq[:, 0]),
            "qk_self": qk_self,
            "ov_s1": float(s[0]),
            "ov_s1_share": float(s[0] ** 2 / tot) if tot > 0 else np.nan,
            "qk_s1": float(sq[0]),
            "k": kk,
        },
        columns=AUDIT_COLUMNS,
    )


def audit_heads(
    weights: Mapping, directions, *, heads: Sequence | None = None, k: int = 5
) -> pd.DataFrame:
    """Audit many heads: ``weights`` maps layer -> the dict of :meth:`ModelAdapter.head_weights`
    (W_Q, W_K, W_V: (H, d_model, d_head), W_O: (H, d_head, d_model); tensors or arrays).
    ``heads``: (layer, head) pairs to audit (default: every head). One row per (layer, head,
    direction)."""
    frames = []
    want = None if heads is None else {(int(lyr), int(h)) for lyr, h in heads}
    for layer, w in weights.items():
        miss = [n for n in ("W_Q", "W_K", "W_V", "W_O") if n not in w]
        if miss:
            raise SaeflowError(
                f"audit_heads: the weights of layer {layer} have no {miss} "
                "(expected ModelAdapter.head_weights' dict)"
            )
        arr = {n: _np(w[n], f"layer {layer} {n}") for n in ("W_Q", "W_K", "W_V", "W_O")}
        for n, a in arr.items():
            if a.ndim != 3:
                raise SaeflowError(
                    f"audit_heads: layer {layer} {n} must be (heads, ...) 3-D (got shape {a.shape})"
                )
        H = arr["W_Q"].shape[0]
        if any(a.shape[0] != H for a in arr.values()):
            raise SaeflowError(
                f"audit_heads: layer {layer}: W_Q/W_K/W_V/W_O disagree on the number of heads "
                f"({[a.shape[0] for a in arr.values()]})"
            )
        for h in range(H):
            if want is not None and (int(layer), h) not in want:
                continue
            frames.append(
                audit_head(
                    arr["W_Q"][h],
                    arr["W_K"][h],
                    arr["W_V"][h],
                    arr["W_O"][h],
                    directions,
                    k=k,
                    layer=int(layer),
                    head=h,
                )
            )
    if not frames:
        raise SaeflowError(
            "audit_heads: no heads audited (empty weights, or none of the requested heads exist)"
        )
    return pd.concat(frames, ignore_index=True)


def audit_heatmap(
    audit: pd.DataFrame, path, *, value: str = "write_cos", title: str | None = None
) -> pd.DataFrame:
    """Heatmap of one audit column: rows (layer, head), columns directions. PNG written atomically;
    returns the pivoted table. Signed values (self_gain, qk_self) get a diverging colour map
    centred on 0."""
    import matplotlib.pyplot as plt

    from saeflow import plots  # Agg backend

    for c in ("layer", "head", "direction", value):
        if c not in audit.columns:
            raise SaeflowError(f"audit_heatmap: the audit table has no column {c!r}")
    tab = audit.pivot_table(
        index=["layer", "head"], columns="direction", values=value, aggfunc="first", sort=False
    )
    vals = tab.to_numpy(dtype=float)
    signed = value in ("self_gain", "qk_self", "self_write_cos")
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * tab.shape[1], 1.2 + 0.22 * tab.shape[0]))
    if signed:
        lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
        im = ax.imshow(vals, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        im = ax.imshow(vals, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(
        range(tab.shape[1]), [str(c) for c in tab.columns], rotation=60, ha="right", fontsize=7
    )
    ax.set_yticks(range(tab.shape[0]), [f"L{lyr}.H{h}" for lyr, h in tab.index], fontsize=6)
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title(title or value)
    plots.save_figure(fig, path)
    return tab
