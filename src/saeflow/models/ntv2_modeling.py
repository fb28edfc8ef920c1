"""Nucleotide Transformer v2 as a ``transformers`` model, without the checkpoints' remote code.

This module imports torch and transformers at import time; saeflow imports it only when an NT v2
checkpoint is loaded (:func:`saeflow.models.nucleotide_transformer.load_nucleotide_transformer`).

Why it exists: the v2 checkpoints (``InstaDeepAI/nucleotide-transformer-v2-{50m,100m,250m,500m}-
multi-species``) are ESM-2-style encoders loaded with ``trust_remote_code`` (their ``config.json``
has an ``auto_map`` into ``esm_config.EsmConfig`` / ``modeling_esm.EsmForMaskedLM``). Their
``modeling_esm.py`` is the Hugging Face ESM code with one change, the feed-forward block:

* ``EsmIntermediate.dense``: ``Linear(hidden, 2 * intermediate_size, bias=config.add_bias_fnn)``;
  forward splits the output in two halves ``x1, x2`` and returns ``silu(x1) * x2`` (SwiGLU);
* ``EsmOutput.dense``: ``Linear(intermediate_size, hidden, bias=config.add_bias_fnn)``, plus
  dropout and the residual, as in ESM.

``add_bias_fnn`` is ``false`` in every released v2 config. Transformers' built-in
``EsmForMaskedLM`` has a GELU feed-forward with biases, so it cannot load these weights (the
shapes differ: ``intermediate.dense.weight`` is ``(2 * intermediate_size, hidden)``).
:class:`NTv2ForMaskedLM` is transformers' ``EsmForMaskedLM`` with those two modules replaced,
keeping the module names, so the published state-dict keys load unchanged:

* the SwiGLU modules keep the names ``intermediate.dense`` / ``output.dense`` (no ``.bias`` keys);
* the published code always creates ``embeddings.position_embeddings`` (unused with rotary
  embeddings); it is created here too, so the parameter set and count are the checkpoint's;
* the published code keeps one rotary ``inv_freq`` buffer per layer
  (``esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq``); transformers keeps one
  shared ``esm.rotary_embeddings.inv_freq`` and remaps the per-layer keys when loading (they are
  all the same ``1 / 10000 ** (arange(0, d_head, 2) / d_head)``).

Everything else (rotary attention with the query scaled before rotation, pre-layer-norm blocks, the
final ``emb_layer_norm_after``, the LM head with a separate ``lm_head.bias``, the contact head) is
transformers' ESM code, which the published code was copied from.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.esm import modeling_esm


class NTv2Intermediate(nn.Module):
    """SwiGLU: ``silu(x1) * x2`` of the two halves of one projection (the MLP activation site)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=_bias(config))
        self.activation_fn = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dense(hidden_states).chunk(2, dim=-1)
        return self.activation_fn(x1) * x2


class NTv2Output(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size, bias=_bias(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states)) + input_tensor


def _bias(config) -> bool:
    # The published esm_config.EsmConfig defaults add_bias_fnn to True; every v2 config sets False.
    return bool(getattr(config, "add_bias_fnn", True))


class NTv2ForMaskedLM(modeling_esm.EsmForMaskedLM):
    """transformers' ``EsmForMaskedLM`` with NT v2's SwiGLU
    feed-forward (see the module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.esm.encoder.layer:
            layer.intermediate = NTv2Intermediate(config)
            layer.output = NTv2Output(config)
        emb = self.esm.embeddings
        if getattr(emb, "position_embeddings", None) is None:
            emb.position_embeddings = nn.Embedding(
                config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
            )
        self.post_init()  # initialise the replaced modules and refresh the model's bookkeeping
