"""Sparse kernels for SAE training: the decoder and the encoder's backward touch only active
latents.

A batch of codes is held as a ragged list of (latent index, value) pairs per row
(:class:`SparseCodes`). Three primitives, all ``torch.ops.aten`` embedding-bag
kernels (CPU and CUDA), do every sparse product a training step needs:

* :meth:`SparseCodes.matmul` — ``Z @ W`` for ``W`` of shape (d_sae, d): the decoder;
  cost proportional to nnz * d instead of B * d_sae * d.
* :meth:`SparseCodes.weight_grad` — ``Z_g^T @ G``: the gradient of a (d_sae, d)
  matrix whose rows were gathered with per-entry weights ``g`` (decoder rows
  from the reconstruction error; encoder rows from the input).
* :meth:`SparseCodes.sampled_dot` — ``(G @ W^T)[row, latent]`` at the active
  entries only (sampled dense-dense product): the gradient of the loss with
  respect to each active code.

With these, the one dense product per step is the encoder's forward
``(x - b_dec) @ W_enc``. The embedding-bag bookkeeping (``offset2bag``, bag sizes)
is computed once per batch and reused by every backward.

Small SAEs: the embedding-bag weight gradient sorts its nnz indices and scatters row by row,
which costs more than a dense ``Z^T @ G`` when the product is small and the codes not very
sparse. So :meth:`SparseCodes.weight_grad` scatters the codes into a dense (B, d_sae) matrix
and does one dense product when B * d_sae * d <= :data:`DENSE_MAX_MACS` and
nnz >= :data:`DENSE_MIN_DENSITY` * B * d_sae (64 -> 256 latents at batch 256, k = 16: ~3x
faster; the benchmark's 512 -> 2048 at batch 4096 never qualifies). Same sums in another
order: equal up to float rounding.
"""

from __future__ import annotations

import torch

_aten = torch.ops.aten

#: Dense weight gradient only for products up to this many multiply-adds (B * d_sae * d) ...
DENSE_MAX_MACS = 1 << 26
#: ... and codes at least this dense (nnz / (B * d_sae)); tests set these to force either path.
DENSE_MIN_DENSITY = 1 / 32


class SparseCodes:
    """Active codes of a batch: ``latents[nnz]`` grouped by row, ``offsets[B]`` where each row
    starts."""

    __slots__ = ("latents", "offsets", "values", "pre", "n_rows", "_o2b", "_bag_size", "_max_idx")

    def __init__(
        self, latents: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, n_rows: int
    ):
        self.latents = latents
        self.offsets = offsets
        self.values = values
        self.pre = values  # pre-activations at the entries (architectures set it when they differ)
        self.n_rows = n_rows
        self._o2b = self._bag_size = self._max_idx = None

    @classmethod
    def from_topk(cls, idx: torch.Tensor, values: torch.Tensor) -> "SparseCodes":
        """From (B, k) indices and values, e.g. ``torch.topk`` output."""
        b, k = idx.shape
        offsets = torch.arange(0, b * k, k, device=idx.device)
        return cls(idx.reshape(-1), offsets, values.reshape(-1), b)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, dense: torch.Tensor) -> "SparseCodes":
        """From a (B, d_sae) boolean mask; values taken from ``dense`` at the mask."""
        rows, cols = mask.nonzero(as_tuple=True)  # row-major order: grouped by row
        counts = torch.bincount(rows, minlength=mask.shape[0])
        offsets = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        offsets[1:] = counts.cumsum(0)[:-1]
        return cls(cols, offsets, dense[rows, cols], mask.shape[0])

    @property
    def rows(self) -> torch.Tensor:
        """Row of each entry (the embedding bag's ``offset2bag``)."""
        self._bookkeeping()
        return self._o2b

    @property
    def nnz(self) -> int:
        return self.latents.numel()

    def _bookkeeping(self) -> None:
        # Computed here, not taken from the forward kernel: its CPU fast path skips
        # offset2bag when nothing requires grad.
        if self._o2b is None:
            counts = torch.diff(self.offsets, append=self.offsets.new_tensor([self.nnz]))
            self._o2b = torch.repeat_interleave(
                torch.arange(self.n_rows, device=self.latents.device), counts
            )
            self._bag_size = counts
            self._max_idx = self.offsets.new_empty(0)

    def matmul(self, weight: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) = Z @ weight, Z the sparse (B, d_sae) matrix
        with ``values`` (default: the codes)."""
        vals = self.values if values is None else values
        if self.nnz == 0:
            return weight.new_zeros(self.n_rows, weight.shape[1])
        return _aten._embedding_bag_forward_only(
            weight, self.latents, self.offsets, False, 0, False, vals.to(weight.dtype), False, -1
        )[0]

    def weight_grad(
        self, grad_rows: torch.Tensor, weights: torch.Tensor, n_latents: int
    ) -> torch.Tensor:
        """(d_sae, d) = Z_w^T @ grad_rows: entry (b, s) with weight w adds w * grad_rows[b] to row
        s."""
        if self.nnz == 0:
            return grad_rows.new_zeros(n_latents, grad_rows.shape[1])
        self._bookkeeping()
        cells = self.n_rows * n_latents
        if cells * grad_rows.shape[1] <= DENSE_MAX_MACS and self.nnz >= DENSE_MIN_DENSITY * cells:
            flat = self._o2b * n_latents + self.latents
            z = grad_rows.new_zeros(cells).index_add_(0, flat, weights.to(grad_rows.dtype))
            return torch.mm(z.view(self.n_rows, n_latents).t(), grad_rows)
        return _aten._embedding_bag_dense_backward(
            grad_rows,
            self.latents,
            self._o2b,
            self._bag_size,
            self._max_idx,
            n_latents,
            False,
            0,
            weights.to(grad_rows.dtype),
            -1,
        )

    def sampled_dot(self, grad_rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(nnz,) = <grad_rows[row], weight[latent]> at every active entry."""
        if self.nnz == 0:
            return grad_rows.new_zeros(0)
        self._bookkeeping()
        return _aten._embedding_bag_per_sample_weights_backward(
            grad_rows, weight, self.latents, self.offsets, self._o2b, 0, -1
        )

    def latent_sum(self, weights: torch.Tensor, n_latents: int) -> torch.Tensor:
        """(d_sae,) = sum of ``weights`` per latent."""
        return torch.zeros(n_latents, dtype=weights.dtype, device=weights.device).index_add_(
            0, self.latents, weights
        )
