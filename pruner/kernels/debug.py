"""Knobs for benchmarks and tests only: the kernel's process-wide instruction set, attention loop
and batch threshold, changed for the length of a `with` block.

Production code never calls these: the kernel picks the best self-checked instruction set when it
loads, and the defaults are what was measured fastest. They exist so that a benchmark can compare
the AVX2 path with the AVX-512 one on the same machine, or the kernel's own decode attention with
torch's, and so that tests cover every path. They are process-global: not for concurrent use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import native
from .linear import kernel_available

ISA_NAMES = native.ISA_NAMES  # 0: none, 1: AVX2+FMA, 2: AVX-512 BF16


def kernel_ops():
    """The loaded kernel ops; raises RuntimeError with the reason when the kernel cannot run here."""
    ok, reason = kernel_available()
    if not ok:
        raise RuntimeError(f"the sparse kernel is not available here: {reason}")
    return native.get_ops()


def best_isa() -> int:
    """The best instruction set this CPU supports (what `overrides(isa=...)` may go up to)."""
    return int(kernel_ops().best_isa())


def current_isa() -> int:
    return int(kernel_ops().get_isa())


def q8_vnni_here() -> bool:
    """This CPU can run int8 layers on the VNNI route (csrc/q8_vnni.h)."""
    return bool(kernel_ops().q8_vnni_available())


Q8_VNNI_DENSE, Q8_VNNI_PACKED = 1, 2  # csrc/q8_vnni.h: which int8 layers take the VNNI route


def set_q8_vnni(routes: int) -> int:
    """The int8 layers that take the VNNI route at decode batches (bits Q8_VNNI_DENSE, Q8_VNNI_PACKED;
    the default is both where the CPU has VNNI, as measured); returns the previous bits."""
    return int(kernel_ops().set_q8_vnni(int(routes)))


@contextmanager
def overrides(*, isa: int | None = None, decode_attention: bool | None = None,
              gemm_min_batch: int | None = None, q8_vnni: int | None = None,
              gemm_weight_first: bool | None = None) -> Iterator[None]:
    """Within the block: the kernel runs `isa` (1 AVX2, 2 AVX-512 BF16; at most `best_isa()`),
    `decode_attention` chooses its own attention loop (True) or torch's (False), sparse batches from
    `gemm_min_batch` rows on expand the weight and multiply with torch, and `q8_vnni` names the int8
    layers that take the VNNI route (bits as `set_q8_vnni`'s; only where the CPU has it, on the
    AVX-512 ISA), and `gemm_weight_first` asks the BLAS for prefill products as W @ x^T (True) or x @ W^T
    (False; csrc/gemm.cpp, the default on AMX CPUs only). None leaves a knob as is; the previous values are restored on exit, whatever
    happens in the block."""
    ops = kernel_ops()
    undo = []
    try:
        if isa is not None:
            undo.append((ops.set_isa, int(ops.set_isa(int(isa)))))
        if decode_attention is not None:
            undo.append((ops.set_decode_attention, int(ops.set_decode_attention(int(bool(decode_attention))))))
        if gemm_min_batch is not None:
            undo.append((ops.set_gemm_min_batch, int(ops.set_gemm_min_batch(int(gemm_min_batch)))))
        if q8_vnni is not None:
            undo.append((ops.set_q8_vnni, int(ops.set_q8_vnni(int(q8_vnni)))))
        if gemm_weight_first is not None:
            undo.append((ops.set_gemm_weight_first, int(ops.set_gemm_weight_first(int(bool(gemm_weight_first))))))
        yield
    finally:
        for setter, previous in reversed(undo):
            setter(previous)
