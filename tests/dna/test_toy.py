import signal
import subprocess
import sys

import numpy as np
import pyBigWig
import pysam
import torch
from conftest import TOY

from saeflow.dna.motifs import load_jaspar, revcomp
from saeflow.dna.toy import build_toy_genome, build_toy_task, gc_content


def test_planted_sites_are_in_the_fasta(toy_genome):
    d, planted = toy_genome
    with pysam.FastaFile(str(d / "genome.fa.gz")) as fa:
        for r in planted.itertuples():
            assert fa.fetch(r.chrom, r.start, r.end) == r.sequence
    assert set(planted.motif_id) == {"MA0139.1", "MA0108.1", "MA0095.1"}
    assert set(planted.strand) == {"+", "-"}
    # no two sites overlap
    for _, g in planted.groupby("chrom"):
        assert (g.start.to_numpy()[1:] >= g.end.to_numpy()[:-1]).all()


def test_planted_instances_follow_the_matrix(toy_genome):
    _, planted = toy_genome
    m = load_jaspar("MA0139.1")
    inst = [
        s if st == "+" else revcomp(s)
        for s, st, mid in zip(planted.sequence, planted.strand, planted.motif_id)
        if mid == "MA0139.1"
    ]
    # the sampled consensus equals the matrix consensus at high-information columns
    ic = m.information_content()
    cons = "".join("ACGT"[i] for i in m.counts.argmax(1))
    for j in np.flatnonzero(ic > 1.0):
        col = [s[j] for s in inst]
        assert max(set(col), key=col.count) == cons[j]


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        build_toy_genome(TOY, d / "g.fa", d / "p.bed", d / "s.bw", d / "planted.tsv")
    assert (a / "g.fa").read_bytes() == (b / "g.fa").read_bytes()
    assert (a / "planted.tsv").read_bytes() == (b / "planted.tsv").read_bytes()
    assert (a / "p.bed").read_bytes() == (b / "p.bed").read_bytes()


def test_signal_is_high_at_peaks(toy_genome):
    d, _ = toy_genome
    bw = pyBigWig.open(str(d / "signal.bw"))
    peaks = [line.split("\t") for line in (d / "peaks.bed").read_text().splitlines()]
    at = np.mean(
        [bw.stats(p[0], int(p[1]) + int(p[9]) - 10, int(p[1]) + int(p[9]) + 10)[0] for p in peaks]
    )
    bg = bw.stats("chr1", 0, bw.chroms("chr1"))[0]
    assert at > 5 * bg


def test_toy_task_is_gc_matched_with_motif_at_offset(toy_genome, tmp_path):
    d, planted = toy_genome
    params = dict(
        motif_id="MA0108.1",
        length=64,
        motif_offset=20,
        negative_pool=500,
        test_fraction=0.3,
        seed=0,
    )
    t = build_toy_task(d / "genome.fa.gz", planted, params, tmp_path / "task.parquet")
    assert {"name", "sequence", "label", "split"} <= set(t.columns)
    pos, neg = t[t.label == 1], t[t.label == 0]
    assert len(pos) == len(neg) > 20
    tbp = planted[planted.motif_id == "MA0108.1"].set_index(["chrom", "start"]).sequence
    for r in pos.itertuples():
        assert (
            r.sequence[20 : 20 + len(tbp[(r.chrom, r.start + 20)])] == tbp[(r.chrom, r.start + 20)]
        )
    assert abs(gc_content(pos.sequence).mean() - gc_content(neg.sequence).mean()) < 0.02


TOY_LM_RUN = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
import saeflow.models.toy_lm as t
calls, kill_at = [0], int(sys.argv[2])
orig = t.mask_tokens
def counting(*a, **k):  # called once per training step
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(*a, **k)
t.mask_tokens = counting
params = dict(seed=3, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seq_len=32,
steps=30,
              batch_size=4, lr=1e-3, mask_prob=0.15, site_fraction=1.0, eval_windows=10,
              checkpoint_every=10)
t.train_toy_lm(sys.argv[3], sys.argv[4], params, sys.argv[1], threads=1)
"""


def test_killed_toy_lm_training_resumes_to_the_same_weights(toy_genome, tmp_path):
    from safetensors.torch import load_file

    d, _ = toy_genome
    script = tmp_path / "run.py"
    script.write_text(TOY_LM_RUN)

    def run(out, kill_at):
        return subprocess.run(
            [
                sys.executable,
                str(script),
                str(out),
                str(kill_at),
                str(d / "genome.fa.gz"),
                str(d / "planted.tsv"),
            ],
            capture_output=True,
            text=True,
        )

    killed = run(tmp_path / "resumed", 25)  # step 24: after the checkpoint at step 20
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "resumed.ckpt").exists() and not (tmp_path / "resumed").exists()
    done = run(tmp_path / "resumed", -1)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr and "at step 20 of 30" in done.stderr
    assert not (tmp_path / "resumed.ckpt").exists()
    assert run(tmp_path / "straight", -1).returncode == 0
    a = load_file(tmp_path / "resumed" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
