import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.dna.differential import differential_features, volcano
from saeflow.dna.evidence import feature_pass
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
# Label 1 vs label 0 sequences (e.g. peaks vs background, promoters vs not), per-sequence mean activation.
diff = differential_features(means, sequences.label.to_numpy(), 1, 0, test=ev["differential_test"])
diff.insert(1, "frequency", feats.frequency.to_numpy())
write_table(diff, snakemake.output.differential)
volcano(diff, snakemake.output.volcano, alpha=ev["alpha"])
