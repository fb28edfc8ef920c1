"""The hand-written sparse training step gives the same loss and gradients as autograd on the dense
model."""

import pytest
import torch

from saeflow.sae import build_sae, kernels
from saeflow.sae.kernels import SparseCodes


@pytest.fixture(params=["sparse", "dense"])
def weight_grad_path(request, monkeypatch):
    """Run a test once with the embedding-bag weight gradient and once with the dense one."""
    if request.param == "sparse":
        monkeypatch.setattr(kernels, "DENSE_MAX_MACS", -1)
    else:
        monkeypatch.setattr(kernels, "DENSE_MAX_MACS", 1 << 62)
        monkeypatch.setattr(kernels, "DENSE_MIN_DENSITY", 0.0)
    return request.param


class _Step(torch.autograd.Function):
    """Heaviside with the rectangle-kernel STE for the threshold only (DeepMind's JumpReLU)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        k = ((pre - theta).abs() < ctx.eps / 2).to(pre) / ctx.eps
        return None, -(k * g).sum(0), None


class _Jump(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        k = ((pre - theta).abs() < ctx.eps / 2).to(pre) / ctx.eps
        return g * (pre > theta), -(theta * k * g).sum(0), None


def dense_loss(sae, x, dead):
    """The training objective written densely, for autograd."""
    b = x.shape[0]
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    arch = sae.architecture
    if arch == "topk":
        vals, idx = pre.topk(sae.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    elif arch == "batchtopk":
        cutoff = pre.detach().reshape(-1).topk(sae.k * b).values.min()
        z = pre * ((pre >= cutoff) & (pre > 0))
    elif arch == "relu_l1":
        z = pre.relu()
    else:
        z = _Jump.apply(pre, sae.threshold, sae.bandwidth)
    x_hat = z @ sae.W_dec + sae.b_dec
    var = (x - x.mean(0)).pow(2).sum(-1).mean()
    loss = (x_hat - x).pow(2).sum() / (b * var)
    if arch in ("topk", "batchtopk") and dead is not None:
        dead_idx = dead.nonzero().squeeze(1)
        vals, j = pre[:, dead_idx].topk(min(sae.aux_k, len(dead_idx)), dim=1)
        za = torch.zeros_like(pre).scatter(1, dead_idx[j], vals.relu())
        resid = (x - x_hat).detach()
        var_r = (resid - resid.mean(0)).pow(2).sum(-1).mean()
        loss = loss + sae.aux_coef * ((za @ sae.W_dec) - resid).pow(2).sum() / (b * var_r)
    if arch == "relu_l1":
        loss = loss + sae.coef * z.sum() / b
    if arch == "jumprelu":
        h = _Step.apply(pre, sae.threshold, sae.bandwidth)
        if sae.target_l0:
            t = sae.target_l0
            loss = loss + sae.coef * ((2.0 / t) * (h.sum(1) - t).pow(2)).mean()
        else:
            loss = loss + sae.coef * h.sum() / b
    return loss


RECIPES = {
    "topk": dict(arch="topk", expansion=4, k=5, aux_k=6, aux_coef=0.5),
    "batchtopk": dict(arch="batchtopk", expansion=4, k=5, aux_k=6, aux_coef=0.5),
    "relu_l1": dict(arch="relu_l1", expansion=4, sparsity_coef=0.3),
    "jumprelu": dict(
        arch="jumprelu", expansion=4, sparsity_coef=0.3, init_threshold=0.3, bandwidth=0.2
    ),
    "jumprelu_target": dict(
        arch="jumprelu",
        expansion=4,
        sparsity_coef=0.3,
        init_threshold=0.3,
        bandwidth=0.2,
        target_l0=4,
    ),
}


@pytest.mark.parametrize("arch", sorted(RECIPES))
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_step_matches_autograd(arch, with_dead, weight_grad_path):
    torch.manual_seed(0)
    d = 12
    sae = build_sae(dict(RECIPES[arch], seed=1), d).double()
    arch = sae.architecture
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.3)
        sae.W_enc.add_(torch.randn_like(sae.W_enc) * 0.3)
    x = torch.randn(64, d, dtype=torch.float64) * 1.5 + 0.5
    dead = None
    if with_dead:
        dead = torch.zeros(sae.d_sae, dtype=torch.bool)
        dead[::3] = True
    params = dict(sae.named_parameters())
    ref = dense_loss(sae, x, dead)
    ref_value = float(ref.detach())
    ref_grads = torch.autograd.grad(ref, list(params.values()))
    for p in params.values():
        p.grad = None
    losses = sae.train_step(x, {"dead": dead})
    total = losses["fvu"] + sae.aux_coef * losses.get("aux", 0)
    if arch == "relu_l1":
        total = total + sae.coef * losses["l1"]
    if arch.startswith("jumprelu"):
        total = total + sae.coef * losses["l0_loss"]
    assert float(total) == pytest.approx(ref_value, rel=1e-9)
    # entries within the bandwidth exist, so the STE path is exercised
    if arch.startswith("jumprelu"):
        assert float(sae.threshold.grad.abs().sum()) > 0
    if with_dead and arch in ("topk", "batchtopk"):
        assert float(losses["aux"]) > 0
    for (name, p), g in zip(params.items(), ref_grads):
        assert p.grad is not None, name
        assert p.grad.shape == p.shape, name
        torch.testing.assert_close(
            p.grad, g, rtol=1e-7, atol=1e-10, msg=f"{arch}: gradient of {name}"
        )


def test_sparse_codes_primitives(weight_grad_path):
    torch.manual_seed(0)
    b, s, d = 7, 9, 5
    mask = torch.rand(b, s) < 0.4
    mask[3] = False  # an empty row
    dense = torch.randn(b, s, dtype=torch.float64)
    codes = SparseCodes.from_mask(mask, dense)
    z = dense * mask
    w = torch.randn(s, d, dtype=torch.float64)
    g = torch.randn(b, d, dtype=torch.float64)
    torch.testing.assert_close(codes.matmul(w), z @ w)
    torch.testing.assert_close(codes.weight_grad(g, codes.values, s), z.t() @ g)
    torch.testing.assert_close(codes.sampled_dot(g, w), (g @ w.t())[mask])
    assert torch.equal(codes.rows, mask.nonzero()[:, 0])
    # a latent twice in one row (never made by the SAEs, but the embedding bag sums them)
    twice = SparseCodes(torch.tensor([2, 2, 0]), torch.tensor([0, 2]), dense.new_ones(3), 2)
    expect = torch.zeros(s, d, dtype=torch.float64)
    expect[2] = 2 * g[0]
    expect[0] = g[1]
    torch.testing.assert_close(twice.weight_grad(g[:2], twice.values, s), expect)


def test_default_sized_sae_takes_the_dense_weight_gradient_and_large_ones_do_not():
    small = SparseCodes.from_topk(torch.zeros(256, 16, dtype=torch.long), torch.ones(256, 16))
    assert 256 * 256 * 64 <= kernels.DENSE_MAX_MACS and small.nnz >= kernels.DENSE_MIN_DENSITY * (
        256 * 256
    )
    assert 4096 * 2048 * 512 > kernels.DENSE_MAX_MACS  # the benchmark's shape stays sparse


def test_bf16_encoder_product_path_runs_and_stays_close():
    """The CUDA path (bf16 autocast of the encoder product) exercised on CPU: same codes, close
    gradients."""
    torch.manual_seed(0)
    sae = build_sae(dict(RECIPES["topk"], seed=0), 32)
    x = torch.randn(256, 32)
    sae.train_step(x, {"dead": None})
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.amp = True
    losses = sae.train_step(x, {"dead": None})
    assert torch.isfinite(losses["fvu"])
    for n, p in sae.named_parameters():
        assert (
            torch.nn.functional.cosine_similarity(p.grad.flatten(), ref[n].flatten(), dim=0) > 0.9
        ), n
