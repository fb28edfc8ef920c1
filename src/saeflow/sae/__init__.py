"""Sparse autoencoders: architectures, training, saving in the SAELens layout.

``ARCHITECTURES`` maps a recipe's ``arch`` to its class. Each class shares the
encoder/decoder parameterisation of :class:`~saeflow.sae.base.SAE` and adds
only its activation function and sparsity loss, so new families (BatchTopK,
JumpReLU, ReLU+L1) slot in beside TopK.
"""

from .base import SAE  # noqa: F401
from .topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {"topk": TopKSAE}


def build_sae(recipe: dict, d_in: int) -> SAE:
    from ..utils import SaeflowError

    arch = recipe.get("arch", "topk")
    if arch not in ARCHITECTURES:
        raise SaeflowError(f"unknown SAE architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch].from_recipe(recipe, d_in)
