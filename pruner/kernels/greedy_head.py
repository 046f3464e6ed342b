"""The greedy next token through the vocabulary projection, without reading all of it in bf16.

Greedy decoding (what completion and speculative verification run) needs the argmax of the
lm_head product, never its logits. On qwen2.5-coder-0.5b that product reads a 272 MB bf16 matrix
(151,936 x 896) per pass, 40% of a decode step's bytes. `GreedyHead` keeps an int8 copy of it
(one scale per row, +136 MB of memory): the kernel's `greedy_head` op scores every row from the
int8 copy with a guaranteed error bound, then recomputes exactly -- with the bf16 kernel's own
per-row arithmetic -- only the rows whose upper bound reaches the best lower bound. The index it
returns is therefore exactly `DenseBF16Linear(x).argmax(-1)`, ties included (csrc/greedy_head.cpp explains
the bound). Where the op cannot run (no AVX-512 VNNI, no kernel, a head that is not a bf16
`DenseBF16Linear`) or when the caller turns the screen off (EngineOptions.head_screen, env
`SUBCODER_HEAD_SCREEN=0`), the logits are computed and their argmax taken.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from . import native
from .linear import DENSE_KERNEL_MAX_BATCH, DenseBF16Linear

log = logging.getLogger("subcoder.pruner.kernels")

_ROWS_PER_CHUNK = 8192  # quantize in chunks: a whole fp32 copy of the head would be 545 MB


@dataclass(frozen=True)
class Int8Rows:
    """W ~ scale[:, None] * q, row by row; columns zero-padded to a multiple of 64."""

    q: torch.Tensor  # int8 (V, in padded to 64)
    scale: torch.Tensor  # fp32 (V,): max|W_r| / 127 (1 for an all-zero row)
    qsum: torch.Tensor  # int32 (V,): sum of q_r
    qabs: torch.Tensor  # fp32 (V,): sum of |q_r|

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.qsum, self.qabs))


def quantize_rows(weight: torch.Tensor) -> Int8Rows:
    """Symmetric per-row int8 quantization of a 2-D weight, round to nearest (|W - s q| <= s / 2).
    In row chunks: ~0.45 s for the 0.5B head, against ~4 s through whole-matrix fp32/int32 copies."""
    rows, cols = weight.shape
    padded = -(-cols // 64) * 64
    q = torch.zeros(rows, padded, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    qsum = torch.empty(rows, dtype=torch.int32)
    qabs = torch.empty(rows, dtype=torch.float32)
    for r0 in range(0, rows, _ROWS_PER_CHUNK):
        w = weight[r0:r0 + _ROWS_PER_CHUNK].float()
        amax = w.abs().amax(dim=1)
        s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        chunk = torch.round(w / s[:, None]).clamp_(-127, 127)
        q[r0:r0 + len(w), :cols] = chunk.to(torch.int8)
        scale[r0:r0 + len(w)] = s
        qsum[r0:r0 + len(w)] = chunk.sum(1).to(torch.int32)
        qabs[r0:r0 + len(w)] = chunk.abs().sum(1)
    return Int8Rows(q, scale, qsum, qabs)


class GreedyHead:
    """`head(x)` -> the argmax row of `lm_head(x)` for each row of x (B, hidden), as int64 (B,)."""

    def __init__(self, lm_head: nn.Module, rows: Int8Rows | None):
        self.lm_head = lm_head
        self.rows = rows
        # The ops are looked up once: `rows` exist only where for_head found the kernel's screen.
        self._ops = native.get_ops() if rows is not None else None
        if rows is not None and self._ops is None:
            raise ValueError("an int8 screen needs the kernel, which is not available here")

    @classmethod
    def for_head(cls, lm_head: nn.Module, *, screen: bool = True) -> GreedyHead:
        """The screened head where the kernel can run it and `screen` allows, else plain argmax of the logits."""
        reason = "turned off by the caller" if not screen else _why_not(lm_head)
        if reason is not None:
            log.info("greedy head: full logits (%s)", reason)
            return cls(lm_head, None)
        rows = quantize_rows(lm_head.weight.detach())
        log.info("greedy head: int8 screen of the %d x %d lm_head (+%.0f MiB), exact re-check of candidates",
                 *lm_head.weight.shape, rows.nbytes / 2**20)
        return cls(lm_head, rows)

    @property
    def screened(self) -> bool:
        return self.rows is not None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ops = self._ops
        # Batches DenseBF16Linear sends to torch's matmul round differently: those take the logits.
        if (ops is not None and x2.dtype in (torch.bfloat16, torch.float32)
                and len(x2) < DENSE_KERNEL_MAX_BATCH):
            r = self.rows
            return ops.greedy_head(x2, self.lm_head.weight, self.lm_head.bias, r.q, r.scale, r.qsum, r.qabs)
        return self.lm_head(x2).argmax(-1)


def _why_not(lm_head: nn.Module) -> str | None:
    if not isinstance(lm_head, DenseBF16Linear):
        return f"the lm_head is a {type(lm_head).__name__}, not the kernel's DenseBF16Linear"
    if not lm_head.use_kernel:
        return "the lm_head computes with torch (use_kernel=False)"
    w = lm_head.weight
    if w.dtype != torch.bfloat16 or w.device.type != "cpu" or not w.is_contiguous():
        return "the lm_head weight is not a contiguous CPU bf16 tensor"
    ops = native.get_ops()
    if ops is None or not hasattr(ops, "greedy_head") or not int(ops.head_screen_available()):
        return "needs the kernel's AVX-512 VNNI path"
    return None
