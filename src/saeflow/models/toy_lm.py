"""Train the embedded toy masked LM on the toy genome.

Architecture choice (measured, see README "Why a rotary toy model"): an
``EsmForMaskedLM`` (the Nucleotide Transformer v2 family) with rotary position
embeddings and single-nucleotide tokens. On 2 CPU cores a BERT-sized model
with learned absolute positions did not pick up the planted CTCF motif in
minutes; rotary attention sees relative offsets from the first step, which is
what a motif is.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.models.tokenizer import build_nucleotide_tokenizer
from saeflow.utils import atomic_path, seed_everything, write_json

log = logging.getLogger(__name__)


def _load_genome(fasta) -> dict[str, str]:
    import pysam

    with pysam.FastaFile(str(fasta)) as fa:
        return {c: fa.fetch(c).upper() for c in fa.references}


def build_model(params: dict, tokenizer):
    from transformers import EsmConfig, EsmForMaskedLM

    cfg = EsmConfig(
        vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=params["hidden_size"],
        num_hidden_layers=params["num_layers"],
        num_attention_heads=params["num_heads"],
        intermediate_size=params["intermediate_size"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=params["seq_len"] + 8,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=False,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return EsmForMaskedLM(cfg)


def mask_tokens(input_ids, special, mask_id: int, vocab_lo: int, vocab_hi: int, prob: float, gen):
    """BERT masking: of the chosen positions 80% -> [MASK], 10% random base, 10% unchanged."""
    import torch

    labels = input_ids.clone()
    choose = (torch.rand(input_ids.shape, generator=gen) < prob) & ~special
    labels[~choose] = -100
    ids = input_ids.clone()
    r = torch.rand(input_ids.shape, generator=gen)
    ids[choose & (r < 0.8)] = mask_id
    rand = choose & (r >= 0.8) & (r < 0.9)
    ids[rand] = torch.randint(vocab_lo, vocab_hi, (int(rand.sum()),), generator=gen)
    return ids, labels


def _crops(
    genome: dict[str, str],
    rng,
    n: int,
    length: int,
    sites: pd.DataFrame | None = None,
    site_fraction: float = 0.0,
) -> tuple[list[str], list[tuple[str, int]]]:
    """``n`` random crops; a ``site_fraction`` of them placed to cover a random planted site."""
    names = list(genome)
    sizes = np.array([len(genome[c]) for c in names], dtype=float)
    chroms = rng.choice(len(names), size=n, p=sizes / sizes.sum())
    on_site = (
        rng.random(n) < site_fraction if sites is not None and len(sites) else np.zeros(n, bool)
    )
    out, where = [], []
    for ci, hit in zip(chroms, on_site):
        if hit:
            r = sites.iloc[int(rng.integers(len(sites)))]
            c = r.chrom
            lo = max(0, int(r.end) - length)
            hi = min(len(genome[c]) - length, int(r.start))
            s = int(rng.integers(lo, max(lo, hi) + 1))
        else:
            c = names[ci]
            s = int(rng.integers(0, len(genome[c]) - length))
        out.append(genome[c][s : s + length])
        where.append((c, s))
    return out, where


def motif_mask(planted: pd.DataFrame, where, length: int) -> np.ndarray:
    """(n, length) array of planted-motif indices (-1 = background) for crops at ``where``."""
    ids = {m: i for i, m in enumerate(sorted(planted.motif_id.unique()))}
    out = np.full((len(where), length), -1, dtype=np.int32)
    by_chrom = {c: g for c, g in planted.groupby("chrom")}
    for j, (c, s) in enumerate(where):
        g = by_chrom.get(c)
        if g is None:
            continue
        hit = g[(g.end > s) & (g.start < s + length)]
        for h in hit.itertuples():
            out[j, max(0, h.start - s) : min(length, h.end - s)] = ids[h.motif_id]
    return out


def evaluate_motif_accuracy(
    model, tokenizer, genome, planted, params, rng, n_rounds: int = 8
) -> dict:
    """Masked-token accuracy at planted-motif bases (per motif) vs background bases."""
    import torch

    L = params["seq_len"]
    # Windows centred on planted sites, so motif bases are plentiful.
    sites = planted.sample(
        n=min(len(planted), params["eval_windows"]), random_state=int(rng.integers(1 << 30))
    )
    where = []
    for s in sites.itertuples():
        start = int(
            np.clip(
                (s.start + s.end) // 2 - L // 2 + rng.integers(-L // 4, L // 4),
                0,
                len(genome[s.chrom]) - L,
            )
        )
        where.append((s.chrom, start))
    seqs = [genome[c][s : s + L] for c, s in where]
    mm = motif_mask(planted, where, L)
    enc = tokenizer(seqs, return_tensors="pt", return_special_tokens_mask=True)
    special = enc["special_tokens_mask"].bool()
    names = sorted(planted.motif_id.unique())
    correct = np.zeros(len(names) + 1)
    total = np.zeros(len(names) + 1)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    lo = tokenizer.convert_tokens_to_ids("A")
    model.eval()
    with torch.inference_mode():
        for _ in range(n_rounds):
            ids, labels = mask_tokens(
                enc["input_ids"], special, tokenizer.mask_token_id, lo, lo + 4, 0.15, gen
            )
            pred = model(input_ids=ids, attention_mask=enc["attention_mask"]).logits.argmax(-1)
            sel = labels[:, 1:-1] != -100
            ok = (pred[:, 1:-1] == labels[:, 1:-1]).numpy()
            cls = mm.copy()
            cls[cls < 0] = len(names)
            s = sel.numpy()
            np.add.at(correct, cls[s], ok[s])
            np.add.at(total, cls[s], 1)
    acc = correct / np.maximum(total, 1)
    res = {f"masked_acc_{m}": float(acc[i]) for i, m in enumerate(names)}
    res["masked_acc_background"] = float(acc[-1])
    res["masked_acc_motif_all"] = float(correct[:-1].sum() / max(1, total[:-1].sum()))
    res["n_masked_motif"] = int(total[:-1].sum())
    res["n_masked_background"] = int(total[-1])
    return res


def train_toy_lm(fasta, planted_path, params: dict, out_dir, threads: int = 1) -> dict:
    """Train, evaluate, and ``save_pretrained`` model + tokenizer to ``out_dir``."""
    import torch
    from tqdm.auto import tqdm

    from saeflow.utils import read_table

    torch.set_num_threads(max(1, threads))
    rng = seed_everything(params["seed"])
    genome = _load_genome(fasta)
    planted = read_table(planted_path)
    tokenizer = build_nucleotide_tokenizer(model_max_length=params["seq_len"] + 2)
    model = build_model(params, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "toy LM: %d parameters, %s",
        n_params,
        {k: params[k] for k in ("hidden_size", "num_layers", "num_heads")},
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=params["lr"], weight_decay=0.01, betas=(0.9, 0.98)
    )
    steps, warm = params["steps"], max(1, params["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    gen = torch.Generator().manual_seed(params["seed"])
    lo = tokenizer.convert_tokens_to_ids("A")
    curve, start = [], 0
    t0 = time.time()
    # Preemption: every `checkpoint_every` steps the whole training state (weights, optimiser,
    # schedule, every RNG) goes to <out_dir>.ckpt, atomically; a retried job resumes there and
    # ends at the same weights as an uninterrupted run.
    ckpt = Path(str(out_dir).rstrip("/") + ".ckpt")
    every = int(params.get("checkpoint_every") or 0)
    fingerprint = json.dumps(params, sort_keys=True)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.bit_generator.state = state["rng"]
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            curve, start = state["curve"], state["step"]
            t0 -= state["seconds"]
            log.info("resumed from %s at step %d of %d", ckpt, start, steps)
        else:
            log.warning("ignoring checkpoint %s: it belongs to other training parameters", ckpt)
    model.train()
    for step in tqdm(range(start, steps), desc="toy LM", mininterval=5, initial=start, total=steps):
        seqs, _ = _crops(
            genome, rng, params["batch_size"], params["seq_len"], planted, params["site_fraction"]
        )
        enc = tokenizer(seqs, return_tensors="pt", return_special_tokens_mask=True)
        ids, labels = mask_tokens(
            enc["input_ids"],
            enc["special_tokens_mask"].bool(),
            tokenizer.mask_token_id,
            lo,
            lo + 4,
            params["mask_prob"],
            gen,
        )
        loss = model(input_ids=ids, attention_mask=enc["attention_mask"], labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            curve.append({"step": step, "loss": loss.item(), "seconds": round(time.time() - t0, 2)})
        if every and (step + 1) % every == 0 and step + 1 < steps:
            state = {
                "fingerprint": fingerprint,
                "step": step + 1,
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": rng.bit_generator.state,
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "curve": curve,
                "seconds": time.time() - t0,
            }
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
    metrics = evaluate_motif_accuracy(model, tokenizer, genome, planted, params, rng)
    metrics.update(
        n_parameters=n_params,
        train_seconds=round(time.time() - t0, 1),
        final_loss=curve[-1]["loss"],
    )
    log.info("toy LM metrics: %s", metrics)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "saeflow_metrics.json", {"metrics": metrics, "curve": curve, "params": params}
        )
    ckpt.unlink(missing_ok=True)
    return metrics
