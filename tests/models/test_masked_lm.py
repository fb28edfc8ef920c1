"""The adapters' masked-LM passes (``HookedAdapter.masked_lm_losses``, read by the SAE
evaluation's loss recovered): which tokens are masked, and where the replacement goes."""

import numpy as np
import pytest
import torch

from saeflow.models import load_model
from saeflow.models.base import Capture, Patch, mask_positions
from saeflow.utils import SaeflowError

SEQS = ["ACGTACGTAACCGGTT", "GGGCCCATAT", "TTTTAAAACCCGGATC", "ACGT", "CATGCATGCATGAAAT"]


def test_masking_is_seeded_batch_independent_and_only_genuine(tiny_model_dir):
    ad = load_model(tiny_model_dir)
    tb = ad.tokenize(SEQS)
    m = mask_positions(tb.special, 0.15, seed=7, seq_ids=range(len(SEQS)))
    assert not (m & tb.special).any()
    n_genuine = (~tb.special).sum(1)
    assert (m.sum(1) == np.maximum(1, np.round(0.15 * n_genuine))).all()
    np.testing.assert_array_equal(
        m, mask_positions(tb.special, 0.15, seed=7, seq_ids=range(len(SEQS)))
    )
    assert not np.array_equal(m, mask_positions(tb.special, 0.5, seed=8, seq_ids=range(len(SEQS))))
    # one sequence at a time (no padding) masks the same bases
    for i, s in enumerate(SEQS):
        one = ad.tokenize([s])
        mi = mask_positions(one.special, 0.15, seed=7, seq_ids=[i])
        np.testing.assert_array_equal(mi[0], m[i, : mi.shape[1]])
    with pytest.raises(SaeflowError, match="mask_prob"):
        mask_positions(tb.special, 0.0, 0, range(len(SEQS)))


def test_last_layer_is_replaced_after_esms_final_layer_norm(tiny_model_dir):
    """Residual layer N of ESM is hidden_states[N], the final layer norm's output: halving it at
    genuine positions reaches the LM head as is (a replacement before that norm would be almost
    undone by it)."""
    ad = load_model(tiny_model_dir)
    tb = ad.tokenize(SEQS)
    N = ad.n_layers
    assert "emb_layer_norm_after" in ad.site_name(ad.resid_site(N))
    assert ad.site_name(ad.resid_site(1)).startswith("output of ")
    genuine = torch.from_numpy(~tb.special)
    with torch.no_grad():
        h = ad.model(
            input_ids=tb.input_ids, attention_mask=tb.attention_mask, output_hidden_states=True
        ).hidden_states[N]
        expected = ad.model.lm_head(torch.where(genuine[..., None], h * 0.5, h))
    got = ad.run(
        tb,
        Capture(resid=[N]),
        Patch(resid={N: lambda t: torch.where(genuine[..., None], t * 0.5, t)}),
    )
    torch.testing.assert_close(got.logits, expected)


def test_masked_lm_losses_count_the_masked_tokens_and_refuse_bad_layers(tiny_model_dir):
    ad = load_model(tiny_model_dir)
    out = ad.masked_lm_losses(SEQS, 1, {"same": lambda x: x}, mask_prob=0.3, seed=1)
    assert out["n_masked"] == sum(max(1, round(0.3 * len(s))) for s in SEQS)
    assert out["same"] == out["clean"] > 0
    with pytest.raises(SaeflowError, match="out of range"):
        ad.masked_lm_losses(SEQS, ad.n_layers + 1, {})
    with pytest.raises(SaeflowError, match="no sequences"):
        ad.masked_lm_losses([], 1, {})
