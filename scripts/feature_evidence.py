import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.dna.differential import volcano
from saeflow.dna.evidence import feature_pass
from saeflow.dna.feature_evidence import label_differential
from saeflow.sae.base import load_sae
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, ev, w = snakemake.input, snakemake.params.evidence, snakemake.wildcards
sequences = pd.read_parquet(i.sequences)
feats, means = feature_pass(
    load_sae(i.sae),
    ActivationStore(i.acts),
    int(w.layer),
    sequences,
    pd.read_parquet(i.motif_tokens),
    max_tokens=ev["probe_max_tokens"],
    seed=ev["seed"],
)
write_table(feats, snakemake.output.features)
diff = label_differential(
    means, sequences.label.to_numpy(), feats.frequency.to_numpy(), test=ev["differential_test"]
)
write_table(diff, snakemake.output.differential)
volcano(diff, snakemake.output.volcano, alpha=ev["alpha"])
