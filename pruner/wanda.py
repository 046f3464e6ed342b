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
        self.add_sums(*column_sq_sums(x, token_mask))

    def add_sums(self, sq_sum: torch.Tensor, tokens: int) -> None:
        """Add a batch already reduced by `column_sq_sums` (linears fed the same input share one reduction)."""
        self.sq_sum += sq_sum
        self.tokens += tokens

    @property
    def sq_norms(self) -> torch.Tensor:
        """||X_j||_2^2 per input feature."""
        return self.sq_sum


def column_sq_sums(x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Sum of x**2 per feature over the real tokens of one batch, in fp32, and the number of those tokens."""
    x = x.reshape(-1, x.shape[-1])  # (tokens, in_features)
    if token_mask is not None:
        x = x[token_mask.reshape(-1).to(x.device)]
    if x.is_cuda:
        # one fused reduction instead of an fp32 copy of the activations, squared, then summed: the largest
        # cost of observing a layer there. Squaring the fp32 norm rounds differently in the last bit.
        return torch.linalg.vector_norm(x, 2, dim=0, dtype=torch.float32).square_(), x.shape[0]
    xf = x.float()
    # squared in place when the cast made a copy: one pass and one activation-sized buffer fewer (same bits)
    xf = xf.square_() if xf is not x else xf * xf
    return xf.sum(dim=0), xf.shape[0]


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X||_2 per weight, in fp32. weight: (out, in); sq_norms: (in,)."""
    if sq_norms.shape != (weight.shape[-1],):  # a (1,) vector would broadcast silently
        raise ValueError(f"input norms of shape {tuple(sq_norms.shape)} do not fit a weight of shape {tuple(weight.shape)}")
    return magnitude_scores(weight).mul_(sq_norms.float().sqrt().unsqueeze(0))


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in fp32, a fresh tensor (callers scale it in place); one weight-sized fp32 buffer, not three."""
    w = weight.detach()
    scores = w.float()
    return scores.abs_() if scores is not w else scores.abs()


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern | None = None) -> torch.Tensor:
    """Boolean keep-mask removing the lowest scores of each row (or N of each M-block of a row).

    Unstructured: exactly floor(in * sparsity) weights are removed from every row. Ties are broken by
    column index (the lower column goes first, as a stable sort would order them), so the result is
    deterministic. Scores are assumed finite (|W| * norm of real weights).
    """
    pattern = pattern or Pattern()
    out_features, in_features = scores.shape
    if pattern.structured:
        n, m = pattern.n, pattern.m
        if in_features % m:
            raise ConfigError(f"{pattern} needs in_features divisible by {m}; a layer has {in_features}")
        blocks = scores.reshape(out_features, in_features // m, m)  # (out, blocks, m)
        return (_stable_rank_in_blocks(blocks) >= n).reshape(out_features, in_features)
    return ~lowest_per_row(scores, int(in_features * sparsity))


def lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the k lowest scores of each row, ties taken from the left: the first k of a stable ascending
    sort, found with a selection (the k-th value) instead of sorting every row."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= scores.shape[1]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(k, dim=1, keepdim=True).values  # (out, 1)
    lowest = scores < kth
    tied = scores == kth
    # a row holds at least k values <= kth; of those equal to it, take the leftmost k - (count below)
    room = k - lowest.sum(dim=1, keepdim=True, dtype=torch.int32)
    lowest |= tied & (tied.cumsum(dim=1, dtype=torch.int32) <= room)
    return lowest


def _stable_rank_in_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Each entry's position in a stable ascending sort of its block (last dim, small): the number of
    entries below it plus the number of equal ones to its left. m passes of comparisons, no sort."""
    m = blocks.shape[-1]
    rank = torch.zeros_like(blocks, dtype=torch.uint8)
    for i in range(m):
        here = blocks[..., i:i + 1]
        rank[..., :i] += here < blocks[..., :i]  # equal entries to the right of j do not precede it
        rank[..., i + 1:] += here <= blocks[..., i + 1:]  # equal entries to its left do
    return rank


def apply_mask(weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the pruned weights in place (keeps dtype, device and any tying intact)."""
    with torch.no_grad():
        weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))
