"""The input embedding of an fp32 model, read from its tied head's bf16 weight.

On CPUs without native bf16 a model computes in fp32 (`--dtype auto`), and where its weights are exactly
bf16 the kernel's AVX2 path takes its linears and its lm_head as bf16 (`loader._dense_on_kernel`). A tied
lm_head used to go there as a bf16 *copy*, leaving the fp32 input embedding beside it: for Qwen2.5 that
is 152k rows held twice, 519 MiB of fp32 at 0.5B and 890 MiB at 1.5B next to the head's bf16. This
embedding shares the head's bf16 Parameter instead (the pair stays tied) and widens the rows it looks up
to the model's compute dtype. Exact: every value was checked to be a bf16 before the copy was made, and
widening bf16 to fp32 is exact, so the model sees the very same fp32 vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BF16Embedding(nn.Module):
    """nn.Embedding's lookup from a bf16 `weight` (shared, not copied), returned in `dtype`."""

    def __init__(self, weight: nn.Parameter, dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        if weight.dim() != 2 or weight.dtype != torch.bfloat16:
            raise ValueError("weight must be a 2-D bf16 tensor (num_embeddings, embedding_dim)")
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bf16 read as {self.dtype}"
