"""Saved SAEs load in SAELens (installed from PyPI) and give the same encodings and reconstructions.

Without sae-lens these tests skip, unless SAEFLOW_REQUIRE_SAELENS=1 (CI sets it, see .ci/run):
then a missing sae-lens is a failure, so the round trip cannot silently stop being checked.
"""

import os

import numpy as np
import pytest
import torch
from conftest import make_store, split

from saeflow.sae.base import load_sae
from saeflow.sae.train import train_sae

try:
    import sae_lens as _sae_lens
except ImportError as e:  # pragma: no cover - depends on the environment
    _sae_lens, _why = None, f"sae-lens is not importable ({e}); install the 'saelens' extra"


@pytest.fixture(scope="module")
def sae_lens():
    if _sae_lens is None:
        if os.environ.get("SAEFLOW_REQUIRE_SAELENS") == "1":
            pytest.fail(f"SAEFLOW_REQUIRE_SAELENS=1 but {_why}")
        pytest.skip(_why)
    return _sae_lens


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu_l1"])
def test_saelens_loads_saved_sae_with_same_encodings(tmp_path, arch, sae_lens):
    store, _ = make_store(tmp_path, n=3000)
    tr, te = split(store)
    recipe = dict(
        arch=arch,
        expansion=2,
        k=3,
        target_l0=3,
        lr=1e-2,
        batch_size=128,
        epochs=3,
        max_vectors=0,
        seed=0,
        warmup_fraction=0.05,
        dead_window=5000,
        aux_k=0,
        aux_coef=1 / 32,
    )
    train_sae(store, 1, recipe, tr, te, tmp_path / "sae", threads=1)
    ours = load_sae(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    expected = {
        "topk": "TopKSAE",
        "batchtopk": "JumpReLUSAE",
        "jumprelu": "JumpReLUSAE",
        "relu_l1": "StandardSAE",
    }
    assert type(theirs).__name__ == expected[arch]
    x = torch.from_numpy(np.asarray(store.layer(1)[:500], dtype=np.float32))  # raw activations
    with torch.no_grad():
        z_ours, z_theirs = ours.encode(x), theirs.encode(x)
        if z_theirs.is_sparse:
            z_theirs = z_theirs.to_dense()
        assert (z_ours > 0).sum() > 0
        torch.testing.assert_close(z_theirs, z_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            theirs.decode(z_theirs), ours.decode(z_ours), rtol=1e-5, atol=1e-4
        )
