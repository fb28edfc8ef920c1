"""saeflow's scGPT against scGPT's own model code, the ``scgpt`` wheel from PyPI (0.2.4).

The wheel's dependencies (torchtext, scvi-tools, scib, orbax, ...) cannot be installed beside
torch 2.13, and its ``scgpt/__init__.py`` imports them all; ``run.sh test`` installs the wheel with
``--no-deps`` and :func:`scgpt_model` imports only ``scgpt/model/model.py`` (which needs torch,
numpy and tqdm) without running the package's ``__init__``. The model is built as
``scgpt.tasks.cell_emb.embed_data`` builds the whole-human model (``do_mvc=True``,
``pre_norm=False``, no batch labels), given random weights, saved in the released flash-attn
layout (``Wqkv``), and loaded by saeflow: hidden states after every block, and the expression
decoder's prediction, must equal scGPT's own forward pass.

Without the wheel these tests skip, unless SAEFLOW_REQUIRE_SCGPT=1 (CI sets it, see .ci/run).
"""

import importlib
import importlib.util
import os
import sys
import types
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tinymodels import SCGPT_ARGS as ARGS
from tinymodels import SCGPT_GENES as GENES
from tinymodels import SCGPT_VOCAB as VOCAB
from tinymodels import scgpt_to_layout as to_layout
from tinymodels import write_scgpt_checkpoint as write_checkpoint

from saeflow.models.base import Capture, CellMatrix
from saeflow.models.scgpt import load_scgpt


def scgpt_model():
    """``scgpt.model.model`` of the installed wheel, imported without ``scgpt/__init__.py``."""
    spec = importlib.util.find_spec("scgpt")
    if spec is None or not spec.submodule_search_locations:
        why = "the scgpt wheel is not installed (run.sh test installs it with --no-deps)"
        if os.environ.get("SAEFLOW_REQUIRE_SCGPT") == "1":
            pytest.fail(f"SAEFLOW_REQUIRE_SCGPT=1 but {why}")
        pytest.skip(why)
    root = spec.submodule_search_locations[0]
    saved = {k: sys.modules.get(k) for k in ("scgpt", "scgpt.model")}
    try:
        for name, path in (("scgpt", root), ("scgpt.model", os.path.join(root, "model"))):
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flash_attn is not installed"
            return importlib.import_module("scgpt.model.model")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(scGPT's TransformerModel with random weights, the checkpoint directory it was saved to)."""
    mm = scgpt_model()
    torch.manual_seed(3)
    model = mm.TransformerModel(
        ntoken=len(VOCAB),
        d_model=ARGS["embsize"],
        nhead=ARGS["nheads"],
        d_hid=ARGS["d_hid"],
        nlayers=ARGS["nlayers"],
        nlayers_cls=3,
        n_cls=1,
        vocab=VOCAB,
        dropout=ARGS["dropout"],
        pad_token=ARGS["pad_token"],
        pad_value=ARGS["pad_value"],
        do_mvc=True,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        use_fast_transformer=False,  # no flash-attn on CPU; the released weights are flash layout
        fast_transformer_backend="flash",
        pre_norm=False,
    ).eval()
    with torch.no_grad():  # layer norms away from 1 / 0 too, so that a skipped norm shows
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("scgpt_pkg")
    write_checkpoint(d, to_layout(model.state_dict(), "flash"))
    return model, d


def test_hidden_states_and_expression_prediction_equal_scgpts(published):
    model, d = published
    ad = load_scgpt(d)
    assert ad.checkpoint_keys["unused"]  # the MVC decoder, cls decoder... are not needed
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (5, len(GENES))).astype(np.float32)
    X[np.arange(5)[:, None] < rng.integers(0, 5, len(GENES))[None, :]] = 0  # ragged: padding
    cells = CellMatrix(
        sp.csr_matrix(X), None, np.array(GENES, dtype=object), np.arange(5).astype(str)
    )
    tb = ad.tokenize(cells)
    ids, values, real = tb.input_ids, tb.extra["values"], tb.attention_mask.bool()
    blocks = []

    def keep(module, inputs, output):  # in eval, torch's encoder runs blocks on nested tensors
        blocks.append(
            output.to_padded_tensor(0.0, (*ids.shape, ARGS["embsize"]))
            if output.is_nested
            else output
        )

    hooks = [layer.register_forward_hook(keep) for layer in model.transformer_encoder.layers]
    try:
        with torch.no_grad():
            out = model._encode(ids, values, src_key_padding_mask=~real)
            pred = model.decoder(out)["pred"]
            embedded = model.encoder(ids) + model.value_encoder(values)
    finally:
        for h in hooks:
            h.remove()
    theirs = [embedded] + blocks
    n = ARGS["nlayers"]
    assert len(theirs) == n + 1
    ours = ad.run(tb, Capture(resid=list(range(n + 1)))).resid
    for layer in range(n + 1):
        torch.testing.assert_close(ours[layer][real], theirs[layer][real], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        logits = ad.model(ids, values, tb.attention_mask).logits
    torch.testing.assert_close(logits[real], pred[real], atol=1e-5, rtol=1e-4)
    assert not np.allclose(pred[real].numpy(), 0)
