"""The packed sparse layout (docs/ARCHITECTURE.md, "Storage format"), in plain numpy/torch.

`mask` int32 (out, ceil(in/32)): bit j (LSB first) of word k in row r is set when W[r, 32k + j] is
kept; padding bits are 0. `values` (nnz,): the kept values row by row, columns ascending. Row offsets
are the prefix sum of the rows' popcounts, so they are never stored. Storage writes this layout and
the sparse CPU kernel computes from it directly.
"""

from __future__ import annotations

import numpy as np
import torch

_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def n_words(in_features: int) -> int:
    return (int(in_features) + 31) // 32


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean (out, in) keep-mask -> int32 words (out, ceil(in/32))."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (out, in), got shape {tuple(mask.shape)}")
    out_features, in_features = mask.shape
    padded = np.zeros((out_features, n_words(in_features) * 32), dtype=bool)
    padded[:, :in_features] = mask.detach().cpu().to(torch.bool).numpy()
    packed = np.packbits(padded, axis=1, bitorder="little")  # 4 little-endian bytes per word
    return torch.from_numpy(np.ascontiguousarray(packed).view("<i4").copy())


def unpack_mask(words: torch.Tensor, in_features: int) -> torch.Tensor:
    """int32 words (out, ceil(in/32)) -> boolean keep-mask (out, in)."""
    if words.dim() != 2 or words.dtype != torch.int32:
        raise ValueError("mask words must be a 2-D int32 tensor")
    if words.shape[1] != n_words(in_features):
        raise ValueError(f"{words.shape[1]} mask words per row do not fit in_features={in_features}")
    as_bytes = np.ascontiguousarray(words.cpu().numpy().astype("<i4")).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :in_features]
    return torch.from_numpy(bits.astype(bool))


def row_counts(words: torch.Tensor) -> torch.Tensor:
    """Kept values per row (int64, (out,))."""
    b = words.contiguous().view(torch.uint8).reshape(words.shape[0], -1)
    return _BYTE_POPCOUNT[b.to(torch.int64)].sum(1)


def row_offsets(words: torch.Tensor) -> torch.Tensor:
    """int64 (out + 1,): where each row's values start in `values`, and nnz last."""
    offs = torch.zeros(words.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(row_counts(words), 0, out=offs[1:])
    return offs


def pack_rows(weight: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None = torch.bfloat16):
    """(weight (out, in), keep-mask) -> (mask words int32, kept values (nnz,) in `dtype` or the weight's)."""
    if weight.shape != mask.shape or weight.dim() != 2:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be the same 2-D shape")
    keep = mask.to(device=weight.device, dtype=torch.bool)
    values = weight.detach()[keep]  # row-major: row by row, columns ascending
    if dtype is not None:
        values = values.to(dtype)
    return pack_mask(keep), values.contiguous().cpu()


def unpack(words: torch.Tensor, values: torch.Tensor, in_features: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense weight (out, in) with zeros where pruned."""
    if values.dtype == torch.int16:  # the sparse layer keeps bf16 bits as int16, out of reach of model.to(dtype)
        values = values.view(torch.bfloat16)
    keep = unpack_mask(words, in_features)
    nnz = int(keep.sum())
    if values.numel() < nnz:
        raise ValueError(f"the mask keeps {nnz} values but only {values.numel()} are given")
    dense = torch.zeros(keep.shape, dtype=dtype or values.dtype)
    # values may run past nnz: the sparse layer pads them so vector loads can read beyond the last row
    dense[keep] = values.reshape(-1)[:nnz].to(dense.dtype)
    return dense
