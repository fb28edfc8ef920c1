"""Cross-model feature matching over shared inputs.

Two SAEs (of two models, or two seeds, or two layers) can only be compared feature by feature
where their inputs coincide: the same genes (per-gene mean activations of two single-cell models
over the genes both vocabularies hold), the same cells, the same tokens. Given activation
matrices A (rows x Fa) and B (rows x Fb) over the same rows, :func:`match_features` finds for
each feature (column) of A the feature of B whose activation pattern is most correlated:

* **Pearson correlation** of the two columns over the shared rows (population moments),
  r = (mean(a b) - mean(a) mean(b)) / (sd(a) sd(b)). *Signed*: SAE codes are non-negative, so a
  feature that fires where another is silent is a different feature, not the same one flipped.
* The Fa x Fb correlation matrix is never held: A is processed in blocks of ``chunk`` columns
  (one chunk x Fb float64 block in memory at a time); A and B may be dense arrays (memory maps
  included) or scipy sparse matrices (never densified as a whole). A dense B is held once as a
  centred float64 copy (rows x Fb x 8 bytes): pass B sparse, or as the smaller side, when that
  matters.
* **Dead / constant columns** (variance <= 1e-12 mean^2, e.g. all zero) have no correlation:
  a dead feature of A gets ``match`` -1 and ``corr`` NaN and is left out of the matched fraction;
  a dead feature of B is never a match. No division by zero happens, so no warnings.
* **matched fraction**: the fraction of A's alive features whose best correlation is >=
  ``threshold``.
* **null**: the rows of B are permuted (one permutation of all rows per repeat, so B keeps its
  own feature distribution and feature-feature structure but loses its alignment to A) and the
  best correlations recomputed; ``n_null`` repeats give null matched fractions, their mean, and an
  empirical one-sided p = (1 + #{null fraction >= observed}) / (1 + n_null) (at least
  1 / (1 + n_null): with 5 repeats the smallest p is 0.167; use >= 19 repeats for p < 0.05).
* **mutual best matches**: pairs (i, j) where j is i's best match in B and i is j's best match in
  A (both alive); counted overall and with correlation >= ``threshold``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

#: relative variance under which a column counts as constant (dead)
CONST_TOL = 1e-12


def _as_matrix(X, name: str):
    import scipy.sparse as sp

    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        if not np.isfinite(X.data).all():
            raise SaeflowError(f"{name}: {int((~np.isfinite(X.data)).sum())} NaN/inf activations")
        return X
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    X = np.asarray(X) if not isinstance(X, np.memmap) else X
    if X.ndim != 2:
        raise SaeflowError(
            f"{name}: activations must be a 2-D (rows x features) matrix (got shape {X.shape})"
        )
    if not np.issubdtype(X.dtype, np.number):
        raise SaeflowError(f"{name}: activations must be numeric (got dtype {X.dtype})")
    return X


def _column_moments(X, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations (float64), in column blocks for dense X."""
    import scipy.sparse as sp

    n = X.shape[0]
    if sp.issparse(X):
        mu = np.asarray(X.sum(axis=0)).ravel() / n
        ex2 = np.asarray(X.multiply(X).sum(axis=0)).ravel() / n
        var = np.maximum(ex2 - mu**2, 0.0)
    else:
        mu, var = np.empty(X.shape[1]), np.empty(X.shape[1])
        for j in range(0, X.shape[1], block):
            x = np.asarray(X[:, j : j + block], dtype=np.float64)
            if not np.isfinite(x).all():
                raise SaeflowError(
                    f"activations hold NaN/inf values (columns {j}..{j + x.shape[1] - 1})"
                )
            mu[j : j + block] = x.mean(axis=0)
            var[j : j + block] = x.var(axis=0)
    return mu, np.sqrt(var), var <= CONST_TOL * mu**2


def _cross(A_blk, B) -> np.ndarray:
    """A_blk^T B as a dense float64 array, for any mix of dense/sparse operands."""
    import scipy.sparse as sp

    if sp.issparse(A_blk):
        out = A_blk.T @ B
    elif sp.issparse(B):
        out = (B.T @ A_blk).T
    else:
        out = A_blk.T @ B
    return out.toarray() if sp.issparse(out) else np.asarray(out, dtype=np.float64)


def _best(A, B, ma, mb, *, chunk: int):
    """Best B match of each A column and best A match of each B column (signed Pearson)."""
    import scipy.sparse as sp

    mu_a, sd_a, dead_a = ma
    mu_b, sd_b, dead_b = mb
    n = A.shape[0]
    inv_a = np.divide(1.0, sd_a, out=np.zeros_like(sd_a), where=~dead_a)
    inv_b = np.divide(1.0, sd_b, out=np.zeros_like(sd_b), where=~dead_b)
    Fa, Fb = A.shape[1], B.shape[1]
    a_idx, a_cor = np.full(Fa, -1, np.int64), np.full(Fa, np.nan)
    b_idx, b_cor = np.full(Fb, -1, np.int64), np.full(Fb, -np.inf)
    Ac = A.tocsc() if sp.issparse(A) else A
    for s in range(0, Fa, chunk):
        e = min(Fa, s + chunk)
        blk = Ac[:, s:e] if sp.issparse(Ac) else np.asarray(Ac[:, s:e], dtype=np.float64)
        c = _cross(blk, B) / n
        c -= np.outer(mu_a[s:e], mu_b)
        c *= inv_a[s:e, None]
        c *= inv_b[None, :]
        np.clip(c, -1.0, 1.0, out=c)
        c[:, dead_b] = -np.inf
        c[dead_a[s:e], :] = -np.inf
        if Fb and not dead_b.all():
            j = c.argmax(axis=1)
            a_idx[s:e] = j
            a_cor[s:e] = c[np.arange(e - s), j]
        i = c.argmax(axis=0)
        v = c[i, np.arange(Fb)]
        better = v > b_cor
        b_idx[better], b_cor[better] = i[better] + s, v[better]
    a_idx[dead_a] = -1
    a_cor[dead_a | ~np.isfinite(a_cor)] = np.nan
    a_idx[~np.isfinite(a_cor)] = -1
    b_cor[~np.isfinite(b_cor)] = np.nan
    b_idx[~np.isfinite(b_cor)] = -1
    return a_idx, a_cor, b_idx, b_cor


def _mutual(a_idx, b_idx) -> np.ndarray:
    """Mask over A: feature i's best match j has i as its own best match."""
    ok = a_idx >= 0
    m = np.zeros(len(a_idx), bool)
    m[ok] = b_idx[a_idx[ok]] == np.flatnonzero(ok)
    return m


def shared_rows(names_a, names_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the rows both runs hold, matched by name: (rows of A, rows of B, names), in A's
    order.

    For per-gene activations of two models with different vocabularies (or cells of two datasets).
    Raises when a run lists a name twice or when the runs share no rows.
    """
    a = pd.Index(pd.Series(names_a).astype(str))
    b = pd.Index(pd.Series(names_b).astype(str))
    for nm, ix in (("A", a), ("B", b)):
        if ix.has_duplicates:
            raise SaeflowError(
                f"shared_rows: row names of {nm} repeat (e.g. {ix[ix.duplicated()][:3].tolist()})"
            )
    pos_b = b.get_indexer(a)
    keep = np.flatnonzero(pos_b >= 0)
    if keep.size == 0:
        raise SaeflowError(
            f"shared_rows: the two runs share no rows ({len(a)} vs {len(b)} names, e.g. "
            f"{a[:3].tolist()} vs {b[:3].tolist()}); are the gene identifiers of the same kind?"
        )
    return keep, pos_b[keep], a[keep].to_numpy()


def match_features(
    A, B, *, threshold: float = 0.5, n_null: int = 5, seed: int = 0, chunk: int = 512
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Match each feature of A to its best-correlated feature of B over the same rows (module doc).

    Returns (features_a, features_b, summary):

    * features_a: feature, alive, match (B feature, -1 when none), corr, matched (corr >=
      threshold), mutual (a mutual best pair), null_corr_mean / null_corr_max (the feature's best
      correlation in the row-shuffled nulls: mean and max over the repeats);
    * features_b: feature, alive, match (A feature), corr;
    * summary: n_rows, n_a, n_b, alive_a, alive_b, threshold, matched, matched_fraction (over alive
      A features), null_fractions (list), null_fraction_mean, null_fraction_sd, p_empirical,
      mutual_best, mutual_above (mutual and corr >= threshold), null_mutual_above_mean, n_null,
      seed.
    """
    A = _as_matrix(A, "match_features (A)")
    B = _as_matrix(B, "match_features (B)")
    if A.shape[0] != B.shape[0]:
        raise SaeflowError(
            f"match_features: A has {A.shape[0]} rows but B has {B.shape[0]}; the rows must be the "
            "same items in the same order (see shared_rows)"
        )
    if A.shape[0] < 3:
        raise SaeflowError(
            f"match_features: {A.shape[0]} shared rows; correlations need at least 3"
        )
    if A.shape[1] == 0 or B.shape[1] == 0:
        raise SaeflowError(f"match_features: no features (A {A.shape}, B {B.shape})")
    if not -1.0 <= float(threshold) <= 1.0:
        raise SaeflowError(
            f"match_features: threshold is a correlation in [-1, 1] (got {threshold})"
        )
    if int(n_null) < 0 or int(chunk) < 1:
        raise SaeflowError(
            f"match_features: n_null must be >= 0 and chunk >= 1 (got {n_null}, {chunk})"
        )
    import scipy.sparse as sp

    ma, mb = _column_moments(A), _column_moments(B)
    alive_a, alive_b = ~ma[2], ~mb[2]
    if not sp.issparse(B):
        # a dense B is held once as centred float64 (exact covariances, no per-block upcast of a
        # float16 memory map); its mean is then 0 in the cross-product correction
        B = np.asarray(B, dtype=np.float64) - mb[0]
        mb = (np.zeros_like(mb[0]), mb[1], mb[2])
    a_idx, a_cor, b_idx, b_cor = _best(A, B, ma, mb, chunk=int(chunk))
    mutual = _mutual(a_idx, b_idx)
    matched = np.nan_to_num(a_cor, nan=-np.inf) >= threshold
    rng = np.random.default_rng(seed)
    n_alive = int(alive_a.sum())
    frac = float(matched[alive_a].mean()) if n_alive else float("nan")
    null_fr, null_mut, null_cor = [], [], []
    for _ in range(int(n_null)):
        perm = rng.permutation(B.shape[0])
        pa, pc, pb, _pbc = _best(A, B[perm], ma, mb, chunk=int(chunk))
        pm = np.nan_to_num(pc, nan=-np.inf) >= threshold
        null_fr.append(float(pm[alive_a].mean()) if n_alive else float("nan"))
        null_mut.append(int((_mutual(pa, pb) & pm).sum()))
        null_cor.append(pc)
    null_fr = np.array(null_fr)
    if null_cor:
        nc = np.vstack(null_cor)
        with np.errstate(all="ignore"):
            ncm = np.where(alive_a, np.nanmean(np.where(np.isnan(nc), 0, nc), axis=0), np.nan)
            ncx = np.where(alive_a, np.nanmax(np.where(np.isnan(nc), -np.inf, nc), axis=0), np.nan)
    else:
        ncm = ncx = np.full(A.shape[1], np.nan)
    fa = pd.DataFrame(
        {
            "feature": np.arange(A.shape[1]),
            "alive": alive_a,
            "match": a_idx,
            "corr": a_cor,
            "matched": matched,
            "mutual": mutual,
            "null_corr_mean": ncm,
            "null_corr_max": ncx,
        }
    )
    fb = pd.DataFrame(
        {"feature": np.arange(B.shape[1]), "alive": alive_b, "match": b_idx, "corr": b_cor}
    )
    summary = {
        "n_rows": int(A.shape[0]),
        "n_a": int(A.shape[1]),
        "n_b": int(B.shape[1]),
        "alive_a": n_alive,
        "alive_b": int(alive_b.sum()),
        "threshold": float(threshold),
        "matched": int(matched.sum()),
        "matched_fraction": frac,
        "null_fractions": null_fr.tolist(),
        "null_fraction_mean": float(null_fr.mean()) if null_fr.size else float("nan"),
        "null_fraction_sd": float(null_fr.std(ddof=1)) if null_fr.size > 1 else float("nan"),
        "p_empirical": float((1 + (null_fr >= frac).sum()) / (1 + null_fr.size))
        if null_fr.size
        else float("nan"),
        "mutual_best": int(mutual.sum()),
        "mutual_above": int((mutual & matched).sum()),
        "null_mutual_above_mean": float(np.mean(null_mut)) if null_mut else float("nan"),
        "n_null": int(n_null),
        "seed": int(seed),
    }
    log.info(
        "feature matching: %d/%d alive A features matched at r >= %g (null %.3f), %d mutual best",
        summary["matched"],
        n_alive,
        threshold,
        summary["null_fraction_mean"],
        summary["mutual_best"],
    )
    return fa, fb, summary
