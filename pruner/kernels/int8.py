"""int8 weights with per-row scales: the reference quantiser and dequantiser (pure torch, no kernel).

Symmetric, round to nearest: a row's scale is max|w| / 127 over the values it keeps, each value is
stored as round(w / scale) in [-127, 127], and stands for q * scale. -128 is never used, so negation
is exact and the kernel needs no saturation. A row that keeps nothing (or only zeros) gets scale 0.

The same code serves the packed format (kept values row by row, rows delimited by the mask's row
offsets) and dense weights (every value kept): storage writes what `quantise_rows` returns, the
kernel computes `scales[r] * (q_r . x)` from it, and tests compare the kernel with
`dequantise_rows` followed by an ordinary matmul.
"""

from __future__ import annotations

import torch

from ..config import VALUE_FORMATS as FORMATS  # one list of formats, kept where torch is not needed

QMAX = 127


def check_format(values: str) -> str:
    """`values` if it names a known value format, else ValueError with the choices."""
    if values not in FORMATS:
        raise ValueError(f"values must be one of {', '.join(FORMATS)}, not {values!r}")
    return values


def _row_ids(row_offsets: torch.Tensor) -> torch.Tensor:
    counts = row_offsets[1:] - row_offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def quantise_rows(values: torch.Tensor, row_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept values (nnz,) in row order, rows [row_offsets[r], row_offsets[r+1]) -> (int8 (nnz,),
    fp32 scales (rows,))."""
    rows = int(row_offsets.numel()) - 1
    nnz = int(row_offsets[-1])
    v = values.reshape(-1)[:nnz].float()
    ids = _row_ids(row_offsets)
    amax = torch.zeros(rows, dtype=torch.float32).scatter_reduce_(0, ids, v.abs(), "amax", include_self=True)
    scales = amax / QMAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # rows of zeros: q = 0 whatever the divisor
    q = torch.round(v / safe[ids]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scales.contiguous()


def dequantise_rows(q: torch.Tensor, scales: torch.Tensor, row_offsets: torch.Tensor) -> torch.Tensor:
    """The values the int8 ones stand for, fp32 (nnz,)."""
    nnz = int(row_offsets[-1])
    return q.reshape(-1)[:nnz].float() * scales[_row_ids(row_offsets)]


def quantise_dense(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense weight (out, in) -> (int8 (out, in), fp32 scales (out,)), every value kept."""
    out_features, in_features = weight.shape
    offsets = torch.arange(out_features + 1, dtype=torch.int64) * in_features
    q, scales = quantise_rows(weight.detach().cpu().reshape(-1), offsets)
    return q.view(out_features, in_features), scales


def dequantise_dense(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 (out, in) from an int8 weight and its per-row scales."""
    return q.float() * scales.float()[:, None]


# The input side of the VNNI route (csrc/q8_vnni.h): at decode batches on AVX-512 VNNI, int8 layers
# multiply int16 inputs, quantised per group of columns.
INPUT_QMAX = 32767


def quantise_input(x: torch.Tensor, group: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows (B, in) -> (int16 (B, in), fp32 scales (B, ceil(in / group))): group g of a row has
    scale max|x_g| / 32767 and stores round(x / scale) (fp32 division, ties to even), 0 in a group of
    zeros -- the kernel's arithmetic to the bit."""
    xf = x.float()
    rows, cols = xf.shape
    groups = -(-cols // group)
    padded = torch.nn.functional.pad(xf, (0, groups * group - cols)).view(rows, groups, group)
    scales = padded.abs().amax(dim=2) / INPUT_QMAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(padded / safe[:, :, None]).clamp_(-INPUT_QMAX, INPUT_QMAX).to(torch.int16)
    return q.view(rows, groups * group)[:, :cols].contiguous(), scales.contiguous()


def dequantise_input(q: torch.Tensor, scales: torch.Tensor, group: int = 256) -> torch.Tensor:
    """fp32 (B, in): what the int16 input stands for."""
    return q.float() * scales.repeat_interleave(group, dim=1)[:, : q.shape[1]]
