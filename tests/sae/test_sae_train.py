"""Trainer behaviour users rely on: streaming batches, resume after a kill, sparsity of every
architecture, metrics on the held-out rows."""

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import make_store, split
from torch.optim.optimizer import register_optimizer_step_pre_hook

from saeflow.sae.base import load_sae
from saeflow.sae.data import BatchStream, FeistelPermutation, RowSet
from saeflow.sae.topk import TopKSAE
from saeflow.sae.train import fit, train_sae
from saeflow.utils import SaeflowError

BASE = dict(
    expansion=2,
    k=3,
    lr=1e-2,
    batch_size=128,
    epochs=10,
    max_vectors=0,
    seed=0,
    warmup_fraction=0.05,
    dead_window=5000,
    aux_k=0,
    aux_coef=1 / 32,
    checkpoint_every=0,
)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_feistel_is_a_permutation(n):
    assert sorted(FeistelPermutation(n, seed=5)(np.arange(n)).tolist()) == list(range(n))


def test_stream_visits_each_training_row_once_per_epoch_and_never_a_test_row():
    arr = np.arange(1000, dtype=np.float32)[:, None].repeat(3, 1)
    rows = RowSet(np.array([[0, 100], [300, 650], [900, 1000]]))
    stream = BatchStream(arr, rows, batch_size=64, seed=1)
    seen = np.concatenate([next(stream)[:, 0].numpy() for _ in range(550 // 64)])
    assert len(np.unique(seen)) == len(seen)  # no repeats within the epoch
    allowed = set(range(0, 100)) | set(range(300, 650)) | set(range(900, 1000))
    assert set(seen.astype(int)) <= allowed
    # subsampling: a fixed subset of max_vectors rows, revisited every epoch
    sub = BatchStream(arr, rows, batch_size=50, seed=1, max_vectors=100)
    e1 = np.concatenate([next(sub)[:, 0].numpy() for _ in range(2)])
    e2 = np.concatenate([next(sub)[:, 0].numpy() for _ in range(2)])
    assert len(set(e1)) == 100 and set(e1) == set(e2)


def test_stream_state_round_trip_gives_the_same_batches():
    arr = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    a = BatchStream(arr, RowSet(np.array([[0, 500]])), batch_size=70, seed=3)
    for _ in range(9):
        next(a)
    b = BatchStream(arr, RowSet(np.array([[0, 500]])), batch_size=70, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        torch.testing.assert_close(next(a), next(b), rtol=0, atol=0)


def test_outlier_tokens_are_dropped():
    arr = np.ones((200, 4), dtype=np.float32)
    arr[::50] = 1000.0
    s = BatchStream(arr, RowSet(np.array([[0, 200]])), batch_size=200, seed=0, outlier_norm=10.0)
    assert len(next(s)) == 196 and s.n_outliers == 4


def test_nan_in_activations_is_a_clear_error(tmp_path):
    store, _ = make_store(tmp_path, n=500)
    arr = np.load(store.dir / "layer1.npy", mmap_mode="r+")
    arr[123, 2] = np.nan
    arr.flush()
    del arr
    tr, te = split(store)
    with pytest.raises(SaeflowError, match=r"layer1\.npy: NaN or inf"):
        train_sae(store, 1, BASE, tr, te, tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


RESUME = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import split
from saeflow.activations import ActivationStore
from saeflow.sae.train import train_sae
store = ActivationStore({acts!r})
tr, te = split(store)
kill_at = int(sys.argv[2])
def on_step(step, losses):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train_sae(store, 1, {recipe!r}, tr, te, sys.argv[1], threads=1, on_step=on_step)
"""


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path):
    for arch in ("topk", "jumprelu"):
        store, _ = make_store(tmp_path / arch, n=3000)
        recipe = dict(BASE, arch=arch, epochs=8, checkpoint_every=40, target_l0=3)
        script = tmp_path / f"run_{arch}.py"
        script.write_text(
            RESUME.format(
                tests=os.path.dirname(os.path.dirname(__file__)), acts=str(store.dir), recipe=recipe
            )
        )

        def run(out, kill, script=script):
            return subprocess.run(
                [sys.executable, str(script), str(out), str(kill)], capture_output=True, text=True
            )

        killed = run(tmp_path / arch / "resumed", 97)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        ckpt = tmp_path / arch / "resumed.ckpt"
        assert ckpt.exists() and not (tmp_path / arch / "resumed").exists()
        done = run(tmp_path / arch / "resumed", -1)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not ckpt.exists()
        metrics = json.loads((tmp_path / arch / "resumed" / "metrics.json").read_text())
        assert metrics["resumed_from_step"] == 80
        assert run(tmp_path / arch / "straight", -1).returncode == 0
        a, b = load_sae(tmp_path / arch / "resumed"), load_sae(tmp_path / arch / "straight")
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), f"{arch}: {k} differs after resume"


def test_checkpoint_of_another_recipe_is_ignored(tmp_path):
    store, _ = make_store(tmp_path, n=1000)
    tr, te = split(store)
    r = dict(BASE, epochs=2, checkpoint_every=5)
    ckpt = tmp_path / "sae.ckpt"
    torch.save({"fingerprint": "other", "steps": 1}, ckpt)
    m = train_sae(store, 1, r, tr, te, tmp_path / "sae")
    assert m["resumed_from_step"] == 0 and not ckpt.exists()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu_l1"])
def test_every_architecture_meets_its_sparsity(tmp_path, arch):
    store, _ = make_store(tmp_path, n=8000, d=16, n_atoms=48, k=4)
    tr, te = split(store)
    # ReLU+L1 shrinks codes: at L0 6 on this data its FVU is ~0.7 (0.37 at L0 12), so it gets a
    # looser target
    target = 12 if arch == "relu_l1" else 6
    recipe = dict(BASE, arch=arch, expansion=4, k=6, target_l0=target, epochs=30, lr=3e-3)
    m = train_sae(store, 1, recipe, tr, te, tmp_path / "sae", threads=1)
    sae = load_sae(tmp_path / "sae")
    x = torch.from_numpy(np.asarray(store.layer(1)[:2000], dtype=np.float32))
    z = sae.encode(x)
    if arch == "topk":
        assert ((z > 0).sum(1) <= 6).all() and m[
            "l0"
        ] > 5.5  # exactly k active unless a code is <= 0
    else:
        assert m["l0"] == pytest.approx(target, rel=0.2), m
    assert m["explained_variance"] > (0.5 if arch == "relu_l1" else 0.8), m
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["saeflow_architecture"] == arch


def test_metrics_are_computed_on_held_out_rows(tmp_path):
    """metrics.json describes the held-out rows: here they are drawn from another distribution
    (dense Gaussian, not sparse sums of atoms), so their FVU is far from the training rows'."""
    store, _ = make_store(tmp_path, n=2000)
    tr, te = split(store)
    arr = np.load(store.dir / "layer1.npy", mmap_mode="r+")
    rng = np.random.default_rng(1)
    for a, b in te:
        arr[a:b] = 5 * rng.normal(size=(b - a, arr.shape[1])) + 2.0
    arr.flush()
    del arr
    m = train_sae(store, 1, dict(BASE, epochs=10), tr, te, tmp_path / "sae", threads=1)
    sae = load_sae(tmp_path / "sae")
    x_all = torch.from_numpy(np.asarray(store.layer(1), dtype=np.float32))

    def fvu_l0(ranges):
        x = torch.cat([x_all[a:b] for a, b in ranges]).double()
        with torch.no_grad():
            z = sae.encode(x.float())
            err = (sae.decode(z).double() - x).pow(2).sum()
        return float(err / (x - x.mean(0)).pow(2).sum()), float((z > 0).sum(1).double().mean()), z

    fvu_te, l0_te, z_te = fvu_l0(te)
    fvu_tr, _, _ = fvu_l0(tr)
    assert fvu_te > 2 * fvu_tr  # the two splits are told apart by FVU
    assert m["fvu"] == pytest.approx(fvu_te, rel=1e-3)
    assert m["explained_variance"] == pytest.approx(1 - fvu_te, rel=1e-3)
    assert m["l0"] == pytest.approx(l0_te, abs=0.05)
    assert m["n_tokens"] == int((te[:, 1] - te[:, 0]).sum())
    freq = np.load(tmp_path / "sae" / "feature_frequency.npy")
    np.testing.assert_allclose(freq, (z_te > 0).double().mean(0).numpy(), atol=0.01)


def _fit_with_dead_latents(aux_coef):
    """TopK (k=2) on rows = 2 of 4 axis atoms (values 1-3) + Gaussian noise on 4 other axes.

    Latents 0-3 are the atoms (encoder = decoder row). Latents 4-11 point into the noise axes with
    encoders scaled by 0.05: their pre-activations stay far below the atoms' (>= 1), so they never
    enter the top k, i.e. they are dead; only AuxK (dead latents reconstructing the residual, here
    the noise) gives them a gradient. Returns (aux loss per step, |change| of each encoder column).
    """
    rng = np.random.default_rng(0)
    n, d, s = 4096, 8, 12
    x = np.zeros((n, d), np.float32)
    for i in range(n):
        x[i, rng.choice(4, 2, replace=False)] = rng.uniform(1, 3, 2)
    x[:, 4:] = rng.normal(0, 0.5, (n, 4))
    torch.manual_seed(0)
    sae = TopKSAE(d, s, k=2)
    with torch.no_grad():
        w = torch.zeros(s, d)
        w[:4, :4] = torch.eye(4)
        w[4:, 4:] = torch.randn(s - 4, 4)
        w /= w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.t() * torch.cat([torch.ones(4), torch.full((s - 4,), 0.05)]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.aux_k, sae.aux_coef = 4, aux_coef
    enc0 = sae.W_enc.detach().clone()
    aux = []
    stream = BatchStream(x, RowSet(np.array([[0, n]])), 64, 0)
    recipe = dict(lr=1e-2, warmup_fraction=0.05, dead_window=256)
    fit(
        sae,
        stream,
        recipe,
        60,
        device=torch.device("cpu"),
        on_step=lambda step, losses: aux.append(float(losses.get("aux", 0.0))),
    )
    with torch.no_grad():
        assert (sae.encode(torch.from_numpy(x[:1000]))[:, 4:] == 0).all()  # still dead
    return np.array(aux), (sae.W_enc.detach() - enc0).norm(dim=0).numpy()


@pytest.fixture
def one_thread():
    """Tiny models: one thread (more threads on a busy machine spin longer than they compute)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_auxk_trains_dead_latents_on_the_residual(one_thread):
    aux, moved = _fit_with_dead_latents(1 / 32)
    # dead after dead_window (256) tokens = 4 batches; from then on AuxK has a loss ...
    assert (aux[:4] == 0).all() and (aux[5:] > 0).all()
    # ... that the dead latents learn to lower (they reconstruct the noise residual) ...
    assert aux[-5:].mean() < 0.5 * aux[5:10].mean()
    # ... by moving their encoders (these get no other gradient: compare AuxK off)
    assert (moved[4:] > 0.05).all(), moved
    _, moved_off = _fit_with_dead_latents(0.0)
    assert (moved_off[4:] < 1e-6).all(), moved_off


def test_each_step_sees_unit_decoder_rows_and_an_orthogonal_decoder_gradient(tmp_path, one_thread):
    """Before every optimiser step of train_sae the decoder rows have unit norm (renormalised after
    the previous step) and the decoder gradient has no component along its row."""
    store, _ = make_store(tmp_path, n=2000)
    tr, te = split(store)
    recipe = dict(BASE, epochs=3)  # d_in 16, d_sae 32: W_dec is the optimiser's (32, 16) tensor
    seen = []

    def check(opt, args, kwargs):
        (w,) = [p for g in opt.param_groups for p in g["params"] if p.shape == (32, 16)]
        g = w.grad.detach()
        norm = w.detach().norm(dim=1)
        along = (g * w.detach()).sum(1).abs().max() / g.norm(dim=1).max().clamp_min(1e-30)
        seen.append(((norm - 1).abs().max().item(), along.item()))

    handle = register_optimizer_step_pre_hook(check)
    try:
        m = train_sae(store, 1, recipe, tr, te, tmp_path / "sae", threads=1)
    finally:
        handle.remove()
    off_norm, along = np.array(seen).T
    assert len(seen) == m["steps"] > 10
    assert off_norm.max() < 1e-5, off_norm
    assert along.max() < 1e-4, along
    # the saved decoder acts on raw activations: rows of norm 1 / input_scale
    norms = load_sae(tmp_path / "sae").W_dec.detach().norm(dim=1).numpy()
    np.testing.assert_allclose(norms, 1 / m["input_scale"], rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(max_vectors=300), dict(outlier_norm=6.0), dict(shuffle=False)],
    ids=["plain", "max_vectors", "outliers", "in_order"],
)
def test_reading_ahead_gives_the_batches_of_reading_one_at_a_time(tmp_path, kw):
    """Blocks of batches read at once (the default) are the batches read one by one, epoch ends,
    subsets and dropped outliers included, and a checkpoint taken mid-block resumes the same way."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 8)).astype(np.float16)
    x[rng.choice(2000, 30, replace=False)] *= 8  # a few high-norm rows for outlier_norm
    np.save(tmp_path / "l.npy", x)
    arr = np.load(tmp_path / "l.npy", mmap_mode="r")
    rows = RowSet(np.array([[0, 700], [900, 1500], [1600, 1990]]))
    ahead = BatchStream(arr, rows, batch_size=64, seed=2, **kw)
    one = BatchStream(arr, rows, batch_size=64, seed=2, block_bytes=1, **kw)
    assert ahead.ahead > 1 and one.ahead == 1
    for _ in range(40):  # past several epoch ends (~1690 rows / 64 per batch)
        torch.testing.assert_close(next(ahead), next(one), rtol=0, atol=0)
    resumed = BatchStream(arr, rows, batch_size=64, seed=2, block_bytes=1, **kw)
    resumed.load_state_dict(ahead.state_dict())
    for _ in range(10):
        torch.testing.assert_close(next(ahead), next(resumed), rtol=0, atol=0)


def test_background_read_ahead_hands_out_the_streams_batches_and_its_state(tmp_path):
    """ReadAhead (a reader thread a few batches ahead): the same batches in the same order, the
    state of the batches handed out (so a checkpoint resumes exactly), and a reader error raised
    in the consumer."""
    from saeflow.sae.data import ReadAhead

    rng = np.random.default_rng(6)
    np.save(tmp_path / "l.npy", rng.normal(size=(1500, 8)).astype(np.float16))
    arr = np.load(tmp_path / "l.npy", mmap_mode="r")
    rows = RowSet(np.array([[0, 1400]]))
    plain = BatchStream(arr, rows, batch_size=64, seed=4)
    with ReadAhead(BatchStream(arr, rows, batch_size=64, seed=4), depth=3) as feed:
        for _ in range(30):  # past an epoch end
            torch.testing.assert_close(next(feed), next(plain), rtol=0, atol=0)
            assert feed.state_dict() == plain.state_dict()
        state = feed.state_dict()
    with ReadAhead(BatchStream(arr, rows, batch_size=64, seed=4)) as resumed:
        resumed.load_state_dict(state)
        for _ in range(5):
            torch.testing.assert_close(next(resumed), next(plain), rtol=0, atol=0)
    assert not any(t.name == "saeflow-read-ahead" and t.is_alive() for t in threading.enumerate())

    class Broken:
        def state_dict(self):
            return {"n_outliers": 0}

        def __next__(self):
            raise SaeflowError("activations/layer1.npy: NaN or inf in rows 3..4")

    with ReadAhead(Broken()) as feed, pytest.raises(SaeflowError, match="NaN or inf in rows 3"):
        next(feed)


def test_read_ahead_only_where_a_cpu_is_free(tmp_path):
    """No reader thread where it would compete with the step's torch threads (on two cores it
    slowed training by 12%); depth 0 hands out the same batches and state."""
    from saeflow.sae.data import ReadAhead, read_ahead_depth

    before = torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    try:
        torch.set_num_threads(cpus)
        assert read_ahead_depth(torch.device("cpu")) == 0
        assert read_ahead_depth(torch.device("cuda")) == 2
        if cpus > 1:
            torch.set_num_threads(cpus - 1)
            assert read_ahead_depth(torch.device("cpu")) == 2
    finally:
        torch.set_num_threads(before)
    np.save(tmp_path / "l.npy", np.arange(800, dtype=np.float16).reshape(100, 8))
    arr = np.load(tmp_path / "l.npy", mmap_mode="r")
    plain = BatchStream(arr, RowSet(np.array([[0, 100]])), batch_size=16, seed=1)
    with ReadAhead(BatchStream(arr, RowSet(np.array([[0, 100]])), 16, 1), depth=0) as feed:
        for _ in range(9):
            torch.testing.assert_close(next(feed), next(plain), rtol=0, atol=0)
            assert feed.state_dict() == plain.state_dict()
