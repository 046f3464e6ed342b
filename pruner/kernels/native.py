"""Compile (once) and load the C++ kernels in csrc/; decide whether they can be used here.

Two places in the cache's `kernels/` directory:
- `build-<toolchain hash>/`: the ninja build, one object file per source. Its name changes only with
  the flags, torch and the compiler, so after an edit ninja recompiles just the sources that changed
  (and those including a changed header).
- `subcoder_sparse_<content hash>.so`: the linked library, installed atomically under a hash of every
  source and header as well. A process loads the library whose hash matches its sources, so an edited
  checkout never runs a stale kernel, and a built one loads without touching the compiler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

from ..cpu import cpu_flags

log = logging.getLogger("subcoder.pruner.kernels")

SOURCE_DIR = Path(__file__).with_name("csrc")
LIBRARY = "subcoder_sparse"  # the TORCH_LIBRARY namespace and the stable build's name
# No -m flags: each kernel function names its instruction set in a target attribute or pragma region
# (csrc/isa.h) and the right one is picked at run time, so the library also loads (and runs AVX2
# code) on CPUs without AVX-512.
CFLAGS = ["-O3", "-fopenmp", "-DNDEBUG", "-fno-math-errno", "-Wno-unused-function"]
LDFLAGS = ["-fopenmp"]  # torch has already loaded its libgomp.so.1; the extension shares that runtime

ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512-bf16"}

_lock = threading.Lock()
_state: dict = {}


def kernel_dir() -> Path:
    """Where built kernels live: `$SUBCODER_CACHE_DIR/kernels`, else the user cache's `subcoder/kernels`."""
    from ..paths import cache_dir

    return Path(cache_dir()).expanduser() / "kernels"


def sources(root: Path | None = None) -> list[Path]:
    """The translation units: every .cpp of csrc/ (or `root`), in name order (one object file each)."""
    return sorted((root or SOURCE_DIR).glob("*.cpp"))


def _toolchain() -> bytes:
    return "\0".join([*CFLAGS, *LDFLAGS, torch.__version__, os.environ.get("CXX") or "c++"]).encode()


def source_hash(root: Path | None = None) -> str:
    """A hash of every source and header of csrc/ (or `root`), names and bytes, and of the toolchain."""
    h = hashlib.sha256(_toolchain())
    for path in sorted(p for p in (root or SOURCE_DIR).iterdir() if p.suffix in (".cpp", ".h")):
        h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_name(root: Path | None = None) -> str:
    """The installed library's name: changes whenever a source, the flags, torch or the compiler change."""
    return f"{LIBRARY}_{source_hash(root)}"


def build_dir() -> Path:
    """The ninja build directory: the same across source edits, so unchanged objects are reused."""
    return kernel_dir() / f"build-{hashlib.sha256(_toolchain()).hexdigest()[:12]}"


def _why_not_here() -> str | None:
    """A reason the kernel cannot run on this machine, found without compiling anything."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {machine or 'unknown'}"
    if not sys.platform.startswith("linux"):
        return f"only built on Linux, this is {sys.platform}"
    flags = cpu_flags()  # empty: unknown here, the library's own detection decides
    if flags and not ({"avx2", "fma"} <= flags):
        return "the CPU has no AVX2+FMA (and no AVX-512 BF16)"
    return None


def _try_load(lib: Path) -> bool:
    if not lib.is_file():
        return False
    try:
        torch.ops.load_library(str(lib))
        return True
    except OSError:  # corrupt: rebuilt below
        return False


def _build(lib: Path) -> str | None:
    """Compile csrc/ in the stable build directory and install the library as `lib`; loads the built
    library into this process. None when done, else why not (one line)."""
    from filelock import FileLock
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx}) on PATH to build it"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja) to build it"
    where = build_dir()
    where.mkdir(parents=True, exist_ok=True)
    with FileLock(str(where) + ".lock"):  # one builder per directory, released even if killed
        if _try_load(lib):  # another process installed it while we waited
            return None
        # torch's own lock file is left behind by a build that was killed, and then waited on
        # forever; holding our lock, any such file is stale.
        (where / "lock").unlink(missing_ok=True)
        before = build_name()
        log.info("building the sparse kernel in %s (the first time about a minute)", where)
        try:
            # copies: load() appends torch's own flags to the lists it is given
            cpp_extension.load(name=LIBRARY, sources=[str(p) for p in sources()], extra_cflags=list(CFLAGS),
                               extra_ldflags=list(LDFLAGS), build_directory=str(where), is_python_module=False,
                               verbose=False)
        except Exception as exc:  # noqa: BLE001 - any build or load failure means: fall back
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error:" in ln), lines[0] if lines else type(exc).__name__)
            return f"could not build or load it ({first[:200]}; build dir {where})"
        if build_name() == before:  # not edited during the build: the library is what `lib` names
            _install(where / f"{LIBRARY}.so", lib)
    return None


def _install(built: Path, lib: Path) -> None:
    """Copy the library to its content-hashed name atomically (a reader never sees half a file)."""
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=lib.name, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(built, tmp)
        os.replace(tmp, lib)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load() -> tuple[object | None, str]:
    reason = _why_not_here()
    if reason:
        return None, reason
    lib = kernel_dir() / f"{build_name()}.so"
    _state["built"] = False
    if not _try_load(lib):
        problem = _build(lib)
        if problem:
            return None, problem
        _state["built"] = True
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
    from ..packing import pack_rows, row_offsets, unpack
    from .int8 import dequantise_dense, dequantise_rows, quantise_dense, quantise_rows

    g = torch.Generator().manual_seed(1234)
    for out_f, in_f, batch, density in ((7, 37, 1, 0.5), (33, 100, 3, 0.3), (64, 96, 1, 1.0), (5, 64, 2, 0.0)):
        w = torch.randn(out_f, in_f, generator=g).to(torch.bfloat16)
        keep = torch.rand(out_f, in_f, generator=g) < density
        x = torch.randn(batch, in_f, generator=g).to(torch.bfloat16)
        words, values = pack_rows(w, keep)
        values = torch.cat([values, torch.zeros(int(ops.pad_values()), dtype=values.dtype)])
        want = (x.float() @ (w.float() * keep).T)
        for xin in (x, x.float()):
            got = ops.sparse_linear(xin, words, values, row_offsets(words), in_f, None, 0).float()
            if got.shape != want.shape or not torch.allclose(got, want, rtol=2e-2, atol=5e-2):
                return f"sparse {out_f}x{in_f} batch {batch} {xin.dtype} differs by {float((got - want).abs().max()):.3g}"
        dense = ops.dense_linear(x, w, None).float()
        if not torch.allclose(dense, x.float() @ w.float().T, rtol=2e-2, atol=5e-2):
            return f"dense {out_f}x{in_f} batch {batch} differs"
        # int8 values: packed and dense, against the reference dequantisation
        offsets = row_offsets(words)
        q, scales = quantise_rows(values[: int(offsets[-1])], offsets)
        q = torch.cat([q, torch.zeros(int(ops.pad_values()) * 2, dtype=torch.int8)])
        deq = unpack(words, dequantise_rows(q, scales, offsets), in_f, torch.float32)
        got = ops.sparse_linear_q8(x, words, q, scales, offsets, in_f, None, 0).float()
        if not torch.allclose(got, x.float() @ deq.T, rtol=2e-2, atol=5e-2):
            return f"sparse int8 {out_f}x{in_f} batch {batch} differs"
        dq, dscales = quantise_dense(w)
        if not torch.allclose(ops.dense_linear_q8(x, dq, dscales, None).float(),
                              x.float() @ dequantise_dense(dq, dscales).T, rtol=2e-2, atol=5e-2):
            return f"dense int8 {out_f}x{in_f} batch {batch} differs"
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


def active_isa() -> str:
    """The instruction set the kernel runs now ("avx512-bf16", "avx2"; see `debug.overrides`), or "none" where
    it cannot run here."""
    ops = get_ops()
    return ISA_NAMES.get(int(ops.get_isa()), "none") if ops is not None else "none"


def value_padding(itemsize: int = 2) -> int:
    """Zero values a packed `values` tensor of `itemsize`-byte values (2: bf16, 1: int8) must carry
    after its last kept one for the kernel (its `pad_values` op counts bf16 values: the one
    definition of that contract); 0 where the kernel does not run here."""
    ops = get_ops()
    return int(ops.pad_values()) * 2 // itemsize if ops is not None else 0


def load_reason() -> str:
    """What was loaded, or why the kernel cannot run here (after `get_ops()`); "" before the first load."""
    return _state.get("reason", "")
