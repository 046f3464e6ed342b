"""What this CPU can do, read once from /proc/cpuinfo.

The dtype default (`loaded.resolve_dtype`) and the sparse kernel's build (`kernels/native.py`) both
decide by instruction-set flags; they read them here so the two can never disagree. Where there is
no /proc/cpuinfo (macOS, Windows, some containers) the flags are empty: callers treat that as
"nothing known", never as proof of a feature.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags (`flags` on x86, `Features` on ARM); empty if none are listed."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def parse_model_name(cpuinfo: str) -> str | None:
    """The first processor's `model name`, e.g. 'AMD EPYC 7B13 64-Core Processor'."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip() or None
    return None


@functools.cache
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (cached: they do not change while the process runs)."""
    return parse_flags(_cpuinfo())


def cpu_name() -> str | None:
    """This CPU's model name, when /proc/cpuinfo says."""
    return parse_model_name(_cpuinfo())


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache sysfs reports for cpu0 (the L3 on x86), in bytes; None where unknown.
    Benchmarks that must stream from DRAM size their working set past it: VMs report very different
    L3s (32 MiB on one EPYC here, 480 MiB on one Xeon)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = None
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size.read_text().strip()
            n = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
        except (OSError, ValueError):
            continue
        best = n if best is None else max(best, n)
    return best


def machine_kind(isa: str) -> str:
    """The kernel instruction set `isa` ("avx512-bf16", "avx2", ...) plus "-amx" on an AVX-512 CPU with AMX:
    what measured speeds are filed under. The kernel never uses AMX, but the Xeons that have it decode at
    other speeds than the EPYCs without it (docs/PERFORMANCE.md, "int8 kept values")."""
    return f"{isa}-amx" if isa == "avx512-bf16" and "amx_bf16" in cpu_flags() else isa


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it, torch's bf16
    matrix products are emulated: measured here on an AVX2-only EPYC, a 512-token prefill of a
    4864x896 layer took 388 ms in bf16 against 94 ms in fp32 (decode, memory-bound, still favours bf16)."""
    return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def read_bandwidth(repeat: int = 5, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a plain streaming read (an int64 sum over 1 GiB, beyond any cache), with
    torch's threads: about what a bandwidth-bound matrix-vector product can reach (a lower bound: the
    sum itself costs some compute). Best of `repeat`; measures, so call it on a quiet machine."""
    import time

    import torch

    buf = torch.ones(nbytes // 8, dtype=torch.int64)
    buf.sum()  # pages in
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    del buf
    return nbytes / best
