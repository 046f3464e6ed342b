"""The input embedding of an fp32 model, kept as bf16.

On CPUs without native bf16 a model computes in fp32 (`--dtype auto`), and where its weights are exactly
bf16 the kernel's AVX2 path takes its linears and lm_head as bf16 (`loader._dense_on_kernel`). The input
embedding stayed fp32: 152k rows, 519 MiB at Qwen2.5's 0.5B and 890 MiB at its 1.5B. This module keeps
the rows as bf16 and widens the ones it looks up to the model's compute dtype; tied to lm_head, it
shares the head's bf16 copy (the pair stays one tensor). Exact: every value is checked to be a bf16
before the copy is made, and widening bf16 to fp32 is exact, so the model sees the same fp32 vectors.
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
