"""Extraction's cost over a bare forward pass of the same batches, in one run.

A random-weight ESM masked LM (the toy family, loaded through saeflow's adapter: a fast tokenizer
with offsets) at a real-model width runs over random DNA sequences:

* ``forward``: tokenise each batch (outside the clock), then ``model(input_ids, attention_mask)``
  under ``torch.inference_mode()``: the model's own full forward pass, MLM head included;
* ``extract``: ``saeflow.activations.extract_activations`` of every residual layer, end to end
  (the token-counting pass, tokenising, the forward pass with capture hooks, the finite and
  float16-range checks, the casts and writes to the memory-mapped store, the token index).

The two alternate (``--repeats`` times each, after a warm-up) and the medians' ratio is printed:
the target is ``extract / forward <= 1.15``. ``--device cuda`` runs it on a GPU
(benchmarks/gpu_check.sh does).

    .venv/bin/python benchmarks/extraction_overhead.py [--hidden 512 --layers 8 --length 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from saeflow.activations import extract_activations
from saeflow.models import load_model
from saeflow.models.tokenizer import build_nucleotide_tokenizer
from saeflow.models.toy_lm import build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--length", type=int, default=500, help="bases per sequence (= tokens)")
    ap.add_argument("--sequences", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seqs = pd.DataFrame(
        {"sequence": ["".join(rng.choice(list("ACGT"), a.length)) for _ in range(a.sequences)]}
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_nucleotide_tokenizer(a.length + 8)
        params = dict(
            hidden_size=a.hidden,
            num_layers=a.layers,
            num_heads=max(1, a.hidden // 64),
            intermediate_size=4 * a.hidden,
            seq_len=a.length,
        )
        build_model(params, tok).save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        ad = load_model(tmp / "model", device=a.device, family="toy")
        layers = list(range(1, a.layers + 1))
        batches = [
            ad.tokenize(seqs.sequence[i : i + a.batch_size].tolist())
            for i in range(0, a.sequences, a.batch_size)
        ]

        def forward() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for tb in batches:
                    ad.model(
                        input_ids=tb.input_ids.to(a.device),
                        attention_mask=tb.attention_mask.to(a.device),
                    )
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        def extract(i) -> float:
            t0 = time.perf_counter()
            extract_activations(ad, seqs, layers, tmp / f"acts{i}", batch_size=a.batch_size)
            return time.perf_counter() - t0

        forward(), extract("warm")
        times = {"forward": [], "extract": []}
        for i in range(a.repeats):
            times["forward"].append(forward())
            times["extract"].append(extract(i))
    n_tokens = a.sequences * a.length
    print(
        f"model: ESM {a.layers} layers x {a.hidden}, {a.sequences} sequences x {a.length} tokens, "
        f"batch {a.batch_size}, {a.device}, {a.threads} threads; every layer stored (float16)"
    )
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<8} {med:8.3f} s   {n_tokens / med:10,.0f} tokens/s   (runs: {v})")
    ratio = statistics.median(times["extract"]) / statistics.median(times["forward"])
    verdict = "PASS" if ratio <= 1.15 else "FAIL"
    print(f"extract / forward: {ratio:.3f}  ({verdict}: target <= 1.15)")


if __name__ == "__main__":
    main()
