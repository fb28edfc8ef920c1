"""Feature ablation keeps the SAE error term; a feature the readout depends on is specific against a
frequency-matched null, one it does not depend on is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.sae import ReluL1SAE
from saeflow.sae.ablation import ablate, matched_null_features, null_p, specificity
from saeflow.utils import SaeflowError


def setup(seed=0, d=16, F=64, N=4000):
    torch.manual_seed(seed)
    sae = ReluL1SAE(d, F, seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # sparse codes
    x = torch.randn(N, d) * 0.7
    return sae, x


def test_ablation_removes_exactly_the_feature_write_and_keeps_the_error():
    sae, x = setup()
    z = sae.encode(x)
    f = int(torch.argmax((z > 0).float().mean(0)))
    xa = ablate(sae, x, f)
    torch.testing.assert_close(x - xa, z[:, f : f + 1] * sae.W_dec[f], rtol=1e-5, atol=1e-6)
    idle = z[:, f] == 0
    assert idle.any() and torch.equal(xa[idle], x[idle])  # where f is silent nothing changes
    # the error term (x - x_hat) survives: it is not replaced by the reconstruction
    err = x - sae(x)
    assert err.abs().max() > 0.1 and not torch.allclose(xa, sae(x))
    # several at once = the sum of their writes; shape kept for (batch, tokens, d)
    both = ablate(sae, x.reshape(40, 100, -1), [f, (f + 1) % 64]).reshape(x.shape)
    torch.testing.assert_close(
        x - both, z[:, [f, (f + 1) % 64]] @ sae.W_dec[[f, (f + 1) % 64]], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(SaeflowError, match="width"):
        ablate(sae, x[:, :5], f)
    with pytest.raises(SaeflowError, match="out of range"):
        ablate(sae, x, 64)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SaeflowError, match="NaN"):
        ablate(sae, bad, f)


def test_specific_feature_beats_its_matched_null_and_an_unused_one_does_not():
    sae, x = setup(seed=1)
    z = sae.encode(x).detach()
    freq = (z > 0).float().mean(0).numpy()
    alive = np.flatnonzero(freq > 0.02)
    f = int(alive[0])
    # a readout that depends on f's decoder direction only
    w = sae.W_dec[f].detach().clone()

    def readout(h):
        return (h @ w).numpy()

    base = readout(x)

    def spec(g):
        return specificity(readout(ablate(sae, x, g)) - base, (z[:, g] > 0).numpy())

    nulls = matched_null_features(freq, f, 30, seed=0)
    assert len(nulls) >= 10 and f not in nulls
    ratio = freq[nulls] / freq[f]
    assert (ratio <= 1.5 + 1e-9).all() and (ratio >= 1 / 1.5 - 1e-9).all()
    null_spec = [spec(int(g)) for g in nulls]
    p, n = null_p(spec(f), null_spec)
    assert n == len(nulls) and p == pytest.approx(1 / (1 + n))
    # a feature whose direction the readout ignores: its specificity sits inside its own null
    v = torch.linalg.svd(sae.W_dec.detach()[[f]], full_matrices=True).Vh[-1]  # orthogonal to w
    w.copy_(v)
    base = readout(x)
    g = int(alive[1])
    nulls_g = matched_null_features(freq, g, 30, seed=0, exclude=[f])
    p_g, _ = null_p(spec(g), [spec(int(h)) for h in nulls_g])
    assert p_g > 0.05


def test_null_and_specificity_edge_cases():
    with pytest.raises(SaeflowError, match="never fires"):
        matched_null_features([0.0, 0.1], 0, 5)
    assert np.isnan(specificity([1.0, 2.0], [False, False]))
    with pytest.raises(SaeflowError, match="differ in shape"):
        specificity([1.0, 2.0], [True])
    assert null_p(1.0, [0.5, 2.0, np.nan]) == (2 / 3, 2)


def test_matched_null_fills_with_the_nearest_frequencies_when_few_peers():
    freq = np.array([0.5, 0.45, 0.2, 0.1, 0.05, 0.0, 0.01])
    # within 1.5x of 0.5 only feature 1; fill takes the next closest in log frequency: 2, then 3
    assert matched_null_features(freq, 0, 3, seed=0).tolist() == [1]
    assert matched_null_features(freq, 0, 3, seed=0, fill=True).tolist() == [1, 2, 3]
    # dead features never, excluded ones never
    got = matched_null_features(freq, 0, 10, seed=0, fill=True, exclude=[2])
    assert 5 not in got and 2 not in got and 0 not in got and len(got) == 4
