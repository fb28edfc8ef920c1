"""Sparse autoencoders: architectures, training, saving in the SAELens layout.

``ARCHITECTURES`` maps a recipe's ``arch`` to its class (each registers itself in
:mod:`saeflow.sae.base` when defined; this package imports them all). Each class shares the
encoder/decoder parameterisation and the sparse training step of
:class:`~saeflow.sae.base.SAE` and adds only its activation function and
sparsity terms.

| arch        | codes                         | sparsity                             | SAELens class
|
|-------------|-------------------------------|--------------------------------------|---------------|
| topk        | top k per token               | exact k per token; AuxK for the dead | topk
|
| batchtopk   | top k*B per batch (training)  | k on average; threshold at inference | jumprelu
|
| jumprelu    | pre > learned threshold       | L0 penalty, coefficient to target L0 | jumprelu
|
| relu_l1     | ReLU                          | L1 penalty, optional target L0       | standard
|
"""

from saeflow.decoder import decoder_rows  # noqa: F401  (the one decoder reader, torch-free)
from saeflow.sae.base import ARCHITECTURES, RECIPE_DEFAULTS, SAE, load_sae  # noqa: F401
from saeflow.sae.penalized import JumpReLUSAE, ReluL1SAE  # noqa: F401
from saeflow.sae.topk import BatchTopKSAE, TopKSAE  # noqa: F401


def build_sae(recipe: dict, d_in: int) -> SAE:
    from saeflow.utils import SaeflowError

    arch = recipe.get("arch", RECIPE_DEFAULTS["arch"])
    if arch not in ARCHITECTURES:
        raise SaeflowError(f"unknown SAE architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch].from_recipe(recipe, d_in)
