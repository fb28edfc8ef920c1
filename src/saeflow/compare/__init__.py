"""Comparisons across runs (models, datasets, seeds): the library layer of the comparison rules.

* :mod:`.depth`: relative depth (layer / n_layers) and per-layer tables of several runs on one grid;
* :mod:`.paired`: AUROC deltas of two runs on the same test items (paired bootstrap, DeLong);
* :mod:`.matching`: feature matching by activation correlation over shared inputs, row-shuffle null;
* :mod:`.circuits`: OV / QK audits of attention heads against probe or SAE decoder directions;
* :mod:`.organisation`: module fraction, superposition share, cross-layer persistence per layer;
"""

from saeflow.compare.circuits import audit_head, audit_heads, audit_heatmap, check_head
from saeflow.compare.depth import (
    add_depth,
    align_depth,
    plot_by_depth,
    relative_depth,
    side_by_side,
)
from saeflow.compare.matching import match_features, shared_rows
from saeflow.compare.organisation import layer_organisation, organisation_table, run_organisation
from saeflow.compare.paired import (
    align_predictions,
    auroc_comparison,
    bootstrap_p,
    delong_components,
    delong_test,
    paired_auroc_delta,
    unpaired_bootstrap_delta,
)

__all__ = [
    "add_depth",
    "align_depth",
    "align_predictions",
    "audit_head",
    "audit_heads",
    "audit_heatmap",
    "auroc_comparison",
    "bootstrap_p",
    "check_head",
    "delong_components",
    "delong_test",
    "layer_organisation",
    "match_features",
    "organisation_table",
    "paired_auroc_delta",
    "plot_by_depth",
    "relative_depth",
    "run_organisation",
    "shared_rows",
    "side_by_side",
    "unpaired_bootstrap_delta",
]
