import numpy as np
import pytest
import torch
from conftest import make_store, split

from saeflow.sae import build_sae
from saeflow.sae.base import load_sae
from saeflow.sae.topk import TopKSAE
from saeflow.sae.train import geometric_median, train_sae

RECIPE = dict(
    arch="topk",
    expansion=2,
    k=3,
    lr=1e-2,
    batch_size=128,
    epochs=30,
    max_vectors=0,
    seed=0,
    warmup_fraction=0.05,
    dead_window=5000,
    aux_k=0,
    aux_coef=1 / 32,
)


def test_topk_activation_has_exactly_k_nonnegative():
    sae = TopKSAE(8, 32, k=4)
    z = sae.encode(torch.randn(50, 8))
    assert ((z > 0).sum(-1) <= 4).all() and (z >= 0).all()


def test_fold_input_scale_keeps_codes_and_reconstruction():
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, k=4)
    sae.b_dec.data = torch.randn(8)
    x = torch.randn(20, 8)
    z = sae.encode(x * 3.0)
    xh = sae.decode(z) / 3.0
    sae.fold_input_scale(3.0)
    torch.testing.assert_close(sae.encode(x), z)
    torch.testing.assert_close(sae.decode(sae.encode(x)), xh)


def test_remove_parallel_grad_keeps_unit_norm_direction():
    sae = TopKSAE(8, 16, k=2)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.zeros(100, 3), torch.full((5, 3), 1000.0)])
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()


def test_train_recovers_planted_dictionary_and_saves_saelens_layout(tmp_path):
    store, atoms = make_store(tmp_path)
    tr, te = split(store)
    m = train_sae(store, 1, RECIPE, tr, te, tmp_path / "sae")
    assert m["explained_variance"] > 0.9 and m["l0"] <= 3
    out = tmp_path / "sae"
    for f in ("cfg.json", "sae_weights.safetensors", "metrics.json", "training_log.jsonl"):
        assert (out / f).exists()
    sae = load_sae(out)
    from safetensors.torch import load_file

    w = load_file(str(out / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (16, 32) and w["W_dec"].shape == (32, 16)
    # most planted atoms have a decoder row within cos 0.9
    dec = sae.W_dec.detach().numpy().copy()
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    best = np.abs(atoms @ dec.T).max(1)
    assert (best > 0.9).mean() >= 0.75
    # the saved SAE acts on raw (unscaled) activations
    x = torch.from_numpy(np.asarray(store.layer(1)[:200], dtype=np.float32))
    fvu = ((sae(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.15


def test_same_seed_same_weights(tmp_path):
    store, _ = make_store(tmp_path, n=2000)
    tr, te = split(store)
    r = dict(RECIPE, epochs=2)
    train_sae(store, 1, r, tr, te, tmp_path / "a")
    train_sae(store, 1, r, tr, te, tmp_path / "b")
    a, b = load_sae(tmp_path / "a"), load_sae(tmp_path / "b")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)


def test_unknown_architecture_is_a_clear_error():
    from saeflow.utils import SaeflowError

    with pytest.raises(SaeflowError, match="unknown SAE architecture 'nope'"):
        build_sae({"arch": "nope"}, 8)
