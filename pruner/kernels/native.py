"""Compile (once) and load the C++ kernels in kernel.cpp; decide whether they can be used here."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger("subcoder.pruner.kernels")

ENV_SWITCH = "SUBCODER_SPARSE"
SOURCE = Path(__file__).with_name("kernel.cpp")
# No -m flags: each kernel function names its instruction set in a target attribute and the right
# one is picked at run time, so the library also loads (and runs AVX2 code) on CPUs without AVX-512.
CFLAGS = ["-O3", "-fopenmp", "-DNDEBUG", "-fno-math-errno", "-Wno-unused-function"]
LDFLAGS = ["-fopenmp"]  # torch has already loaded its libgomp.so.1; the extension shares that runtime

ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512-bf16"}

_lock = threading.Lock()
_state: dict = {}


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def kernel_dir() -> Path:
    """Where built kernels live: `$SUBCODER_CACHE_DIR/kernels`, else the user cache's `subcoder/kernels`."""
    try:
        from ..paths import cache_dir

        root = cache_dir()
    except ImportError:  # pragma: no cover - paths.py is part of the package
        import platformdirs

        root = Path(os.environ.get("SUBCODER_CACHE_DIR") or platformdirs.user_cache_dir("subcoder", appauthor=False))
    return Path(root).expanduser() / "kernels"


def build_name() -> str:
    """Extension name: changes whenever the source, the flags, torch or the compiler change."""
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update((os.environ.get("CXX") or "c++").encode())
    return f"subcoder_sparse_{h.hexdigest()[:16]}"


def _why_not_here() -> str | None:
    """A reason the kernel cannot run on this machine, found without compiling anything."""
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return f"disabled by {ENV_SWITCH}=0"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {machine or 'unknown'}"
    if not sys.platform.startswith("linux"):
        return f"only built on Linux, this is {sys.platform}"
    flags = _cpu_flags()
    if flags is not None and not ({"avx2", "fma"} <= flags):
        return "the CPU has no AVX2+FMA (and no AVX-512 BF16)"
    return None


def _load() -> tuple[object | None, str]:
    reason = _why_not_here()
    if reason:
        return None, reason
    name = build_name()
    build_dir = kernel_dir() / name
    lib = build_dir / f"{name}.so"
    loaded = False
    if lib.is_file():
        try:
            torch.ops.load_library(str(lib))
            loaded = True
        except OSError:  # half-written by a concurrent build, or corrupt: build (under ninja's lock)
            pass
    try:
        if not loaded:
            from torch.utils import cpp_extension

            cxx = os.environ.get("CXX") or "c++"
            if shutil.which(cxx) is None:
                return None, f"no C++ compiler ({cxx}) on PATH to build it"
            if not cpp_extension.is_ninja_available():
                return None, "ninja is not installed (pip install ninja) to build it"
            build_dir.mkdir(parents=True, exist_ok=True)
            log.info("building the sparse kernel in %s (once, about a minute)", build_dir)
            cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=CFLAGS,
                extra_ldflags=LDFLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - any build or load failure means: fall back
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        return None, f"could not build or load it ({first[:200]}; build dir {build_dir})"
    ops = torch.ops.subcoder_sparse
    isa = int(ops.best_isa())
    if isa == 0:
        return None, "the CPU has no AVX2+FMA (and no AVX-512 BF16)"
    # Correctness first: each SIMD path must reproduce the dense computation on this very CPU before
    # it is trusted (CI machines may lack AVX-512, so that path can meet its first CPU at a user's).
    for candidate in range(isa, 0, -1):
        ops.set_isa(candidate)
        problem = _self_check(ops)
        if problem is None:
            note = "" if candidate == isa else f" ({ISA_NAMES[isa]} failed its self-check: {problem})"
            return ops, f"{ISA_NAMES.get(candidate, candidate)} kernel from {lib}{note}"
        log.warning("sparse kernel: %s path failed its self-check (%s)", ISA_NAMES.get(candidate), problem)
    return None, f"the kernel failed its self-check on this CPU ({problem})"


def _self_check(ops) -> str | None:
    """Compare the kernel with dense torch on a few odd shapes and sparsities; None when all agree."""
    from .linear import _PAD
    from ..packing import pack_rows, row_offsets

    g = torch.Generator().manual_seed(1234)
    for out_f, in_f, batch, density in ((7, 37, 1, 0.5), (33, 100, 3, 0.3), (64, 96, 1, 1.0), (5, 64, 2, 0.0)):
        w = torch.randn(out_f, in_f, generator=g).to(torch.bfloat16)
        keep = torch.rand(out_f, in_f, generator=g) < density
        x = torch.randn(batch, in_f, generator=g).to(torch.bfloat16)
        words, values = pack_rows(w, keep)
        values = torch.cat([values, torch.zeros(_PAD, dtype=values.dtype)])  # the tail the SIMD loads may touch
        want = (x.float() @ (w.float() * keep).T)
        for xin in (x, x.float()):
            got = ops.sparse_linear(xin, words, values, row_offsets(words), in_f, None, 0).float()
            if got.shape != want.shape or not torch.allclose(got, want, rtol=2e-2, atol=5e-2):
                return f"sparse {out_f}x{in_f} batch {batch} {xin.dtype} differs by {float((got - want).abs().max()):.3g}"
        dense = ops.dense_linear(x, w, None).float()
        if not torch.allclose(dense, x.float() @ w.float().T, rtol=2e-2, atol=5e-2):
            return f"dense {out_f}x{in_f} batch {batch} differs"
    return None


def get_ops():
    """The loaded `torch.ops.subcoder_sparse` namespace, or None (logged once, with the reason)."""
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                ops, reason = _load()
                _state["ops"], _state["reason"] = ops, reason
                if ops is None:
                    log.warning("sparse CPU kernel unavailable, using dense torch instead: %s", reason)
    return _state["ops"]


def kernel_available() -> tuple[bool, str]:
    """(True, what was loaded) or (False, why not). Builds the kernel on first call when needed.

    `SUBCODER_SPARSE=0` always answers False; the answer is otherwise computed once per process.
    """
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return False, f"disabled by {ENV_SWITCH}=0"
    ops = get_ops()
    return ops is not None, _state["reason"]


def active_ops():
    """The ops when the kernel may be used right now (honours SUBCODER_SPARSE=0 set later), else None."""
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return None
    return get_ops()
