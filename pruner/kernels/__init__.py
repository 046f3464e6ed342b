"""The CPU sparse kernel and the layers built on it.

The C++ sources in csrc/ are compiled on first use (torch.utils.cpp_extension) into the cache's `kernels/`
directory, named by a hash of its source, and loaded from there afterwards. It runs on x86-64
CPUs with AVX-512 F/BW/VBMI2/BF16 (vpexpandw + vdpbf16ps) or, failing that, AVX2+FMA. Anywhere
else one log line says why and the layers compute with dense torch instead (same results to bf16
rounding); so do layers built with `use_kernel=False` (`sparsify(kernel=False)`).

Nothing here reads the environment: whether to use the kernel is the caller's choice, passed down
as plain values (subcoder.pruner.engine.options.EngineOptions is read once where a model is loaded).
Knobs for benchmarks and tests (instruction set, attention loop, batch thresholds) are in `debug`.

Weights use the packed layout of docs/ARCHITECTURE.md ("Storage format"): per row int32 mask
words (bit j of word k = column 32k + j kept, LSB first) and the kept bf16 values row by row, or
int8 values with per-row fp32 scales (`int8`: the reference quantiser).
"""

from .native import kernel_dir
from .embedding import BF16Embedding
from .linear import (DenseBF16Linear, DenseInt8Linear, SparseLinear, SparsifyReport, dense_kernel_layer,
                     kernel_available, model_bytes, sparsify)
from .. import packing
from ..packing import pack_mask, pack_rows, row_offsets, unpack, unpack_mask

__all__ = [
    "BF16Embedding",
    "DenseBF16Linear",
    "DenseInt8Linear",
    "SparseLinear",
    "SparsifyReport",
    "dense_kernel_layer",
    "kernel_available",
    "kernel_dir",
    "model_bytes",
    "pack_mask",
    "pack_rows",
    "row_offsets",
    "sparsify",
    "unpack",
    "unpack_mask",
]
