"""Single-cell models' side: cells in, gene-level features, perturbations."""
