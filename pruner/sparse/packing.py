"""The packed sparse layout of docs/ARCHITECTURE.md, in plain torch (no kernel needed).

`mask` int32 (out, ceil(in/32)): bit j (LSB first) of word k in row r is set when W[r, 32k + j] is
kept, padding bits are 0. `values` bf16 (nnz,): the kept values row by row, columns ascending.
Row offsets are the prefix sum of the rows' popcounts.
"""

from __future__ import annotations

import torch

_ROWS_PER_CHUNK = 4096  # bounds the int64 temporaries of pack_mask on large matrices
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def n_words(in_features: int) -> int:
    return (int(in_features) + 31) // 32


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean (out, in) keep-mask -> int32 words (out, ceil(in/32))."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (out, in), got shape {tuple(mask.shape)}")
    out, inf = mask.shape
    nw = n_words(inf)
    weights = torch.ones(32, dtype=torch.int64).bitwise_left_shift(torch.arange(32, dtype=torch.int64))
    words = torch.empty(out, nw, dtype=torch.int32)
    for r0 in range(0, out, _ROWS_PER_CHUNK):
        m = mask[r0 : r0 + _ROWS_PER_CHUNK].to(torch.bool)
        if nw * 32 != inf:
            m = torch.nn.functional.pad(m, (0, nw * 32 - inf))
        w = (m.view(m.shape[0], nw, 32).to(torch.int64) * weights).sum(-1)
        w = torch.where(w >= 2**31, w - 2**32, w)  # reinterpret the unsigned 32 bits as int32
        words[r0 : r0 + m.shape[0]] = w.to(torch.int32)
    return words


def unpack_mask(words: torch.Tensor, in_features: int) -> torch.Tensor:
    """int32 words (out, ceil(in/32)) -> boolean keep-mask (out, in)."""
    if words.dim() != 2 or words.dtype != torch.int32:
        raise ValueError("mask words must be a 2-D int32 tensor")
    if words.shape[1] != n_words(in_features):
        raise ValueError(f"{words.shape[1]} mask words per row do not fit in_features={in_features}")
    shifts = torch.arange(32, dtype=torch.int32)
    bits = words.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).to(torch.bool)
    return bits.reshape(words.shape[0], -1)[:, :in_features]


def row_counts(words: torch.Tensor) -> torch.Tensor:
    """Kept values per row (int64, (out,))."""
    b = words.contiguous().view(torch.uint8).reshape(words.shape[0], -1)
    return _BYTE_POPCOUNT[b.to(torch.int64)].sum(1)


def row_offsets(words: torch.Tensor) -> torch.Tensor:
    """int64 (out + 1,): where each row's values start in `values`, and nnz last."""
    offs = torch.zeros(words.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(row_counts(words), 0, out=offs[1:])
    return offs


def pack_rows(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (out, in), boolean keep-mask (out, in)) -> (mask words int32, values bf16 (nnz,))."""
    if weight.shape != mask.shape or weight.dim() != 2:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be the same 2-D shape")
    m = mask.to(torch.bool)
    values = weight.detach()[m].to(torch.bfloat16).contiguous()  # row-major: row by row, columns ascending
    return pack_mask(m), values


def unpack(words: torch.Tensor, values: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The dense (out, in) weight, zeros where pruned."""
    m = unpack_mask(words, in_features)
    dense = torch.zeros(m.shape, dtype=dtype)
    nnz = int(m.sum())
    if values.dtype == torch.int16:
        values = values.view(torch.bfloat16)
    if values.numel() < nnz:
        raise ValueError(f"{values.numel()} values for a mask that keeps {nnz}")
    dense[m] = values[:nnz].to(dtype)
    return dense
