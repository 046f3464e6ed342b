"""The pruning metric and masks: pure functions on tensors, no hooks, no models.

Wanda (Sun et al., arXiv 2306.11695) scores each weight by |W_ij| * ||X_j||_2, where ||X_j|| is the
L2 norm of input feature j over the calibration tokens, and removes the lowest-scoring weights of each
output row. Comparing within a row (not across the whole matrix) is what makes it work without
retraining. Magnitude pruning (|W_ij| alone) is the baseline.

Masks are boolean with True = weight kept, shaped like the weight (out_features, in_features).
"""

from __future__ import annotations

import torch

from .config import Pattern
from .errors import ConfigError


class NormAccumulator:
    """Streaming sum of squared inputs per input feature, in fp32, over real tokens only.

    Activations are never stored: each batch adds its column sums of x**2. Padding tokens are
    excluded through `token_mask` because they carry no information about the language.
    """

    def __init__(self, in_features: int, device="cpu"):
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)  # (in_features,)
        self.tokens = 0

    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, x.shape[-1])  # (tokens, in_features)
        if token_mask is not None:
            x = x[token_mask.reshape(-1).to(x.device)]
        x = x.float()
        self.sq_sum += (x * x).sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def sq_norms(self) -> torch.Tensor:
        """||X_j||_2^2 per input feature."""
        return self.sq_sum


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X||_2 per weight, in fp32. weight: (out, in); sq_norms: (in,)."""
    if sq_norms.shape != (weight.shape[-1],):  # a (1,) vector would broadcast silently
        raise ValueError(f"input norms of shape {tuple(sq_norms.shape)} do not fit a weight of shape {tuple(weight.shape)}")
    return weight.detach().float().abs() * sq_norms.float().sqrt().unsqueeze(0)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern | None = None) -> torch.Tensor:
    """Boolean keep-mask removing the lowest scores of each row (or N of each M-block of a row).

    Unstructured: exactly floor(in * sparsity) weights are removed from every row. Ties are broken by
    column index (stable sort), so the result is deterministic.
    """
    pattern = pattern or Pattern()
    out_features, in_features = scores.shape
    if pattern.structured:
        n, m = pattern.n, pattern.m
        if in_features % m:
            raise ConfigError(f"{pattern} needs in_features divisible by {m}; a layer has {in_features}")
        blocks = scores.reshape(out_features, in_features // m, m)  # (out, blocks, m)
        order = torch.argsort(blocks, dim=-1, stable=True)
        keep = torch.ones_like(blocks, dtype=torch.bool)
        keep.scatter_(-1, order[..., :n], False)
        return keep.reshape(out_features, in_features)
    n_prune = int(in_features * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        order = torch.argsort(scores, dim=1, stable=True)  # (out, in), ascending
        keep.scatter_(1, order[:, :n_prune], False)
    return keep


def apply_mask(weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the pruned weights in place (keeps dtype, device and any tying intact)."""
    with torch.no_grad():
        weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))
