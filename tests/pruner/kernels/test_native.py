"""The kernel library's build and contracts: the padding contract read from C++, content-hashed
installs over an incremental build, and every instruction set's instantiation of the row kernels.

The library is the real one, built once per machine into the shared kernel cache (conftest.py
links each test's cache to it).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subcoder.pruner import packing
from subcoder.pruner.kernels import native
from subcoder.pruner.kernels.linear import SparseLinear

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def ops():
    ops = native.get_ops()
    if ops is None:
        reason = native._state["reason"]
        if native._why_not_here() is None and not reason.startswith(("no C++ compiler", "ninja is not")):
            pytest.fail(f"the kernel should build on this machine: {reason}")
        pytest.skip(reason)
    return ops


@pytest.fixture
def every_isa(ops):
    """The instruction sets this CPU runs (1 AVX2, 2 AVX-512 BF16); the best one is restored after."""
    best = int(ops.best_isa())
    yield list(range(1, best + 1))
    ops.set_isa(best)


def _packed(out: int, inp: int, density: float, seed: int, pad: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g).to(torch.bfloat16)
    keep = torch.rand(out, inp, generator=g) < density
    words, values = packing.pack_rows(w, keep)
    values = torch.cat([values, torch.zeros(pad, dtype=values.dtype)])
    return (w.float() * keep), words, values, packing.row_offsets(words)


# --- the padding contract ---------------------------------------------------------------------

def test_padding_is_defined_once_in_cpp(ops):
    assert native.value_padding() == int(ops.pad_values()) > 0
    w = torch.randn(9, 70).to(torch.bfloat16)
    words, values = packing.pack_rows(w, torch.rand(9, 70) < 0.5)
    layer = SparseLinear(words, values, (9, 70))
    assert layer.values.numel() == layer.nnz + int(ops.pad_values())


def test_the_kernel_refuses_values_short_of_the_padding(ops):
    pad = int(ops.pad_values())
    _, words, values, roff = _packed(6, 50, 0.5, 2, pad - 1)
    with pytest.raises(RuntimeError, match="of padding"):
        ops.sparse_linear(torch.randn(1, 50), words, values, roff, 50, None, 1)


def test_exactly_the_padding_is_enough_on_every_isa(ops, every_isa):
    """The last row keeps its last values: the AVX2 expansion's loads reach furthest past them."""
    pad = int(ops.pad_values())
    dense, words, values, roff = _packed(5, 96, 1.0, 3, pad)
    x = torch.randn(2, 96)
    for isa in every_isa:
        ops.set_isa(isa)
        got = ops.sparse_linear(x, words, values, roff, 96, None, 1)
        torch.testing.assert_close(got, x @ dense.T, rtol=2e-2, atol=5e-2)


def test_native_does_not_import_the_layers():
    """native -> linear was an import cycle (the self-check took the padding from linear)."""
    tree = ast.parse(Path(native.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "linear" not in imported


# --- every ISA's instantiation of the row kernels ------------------------------------------------

@pytest.mark.parametrize("inp", [31, 64, 100, 1000])  # odd word counts, AVX2's scalar dense tail
def test_row_kernels_of_every_isa_match_torch(ops, every_isa, inp):
    pad = int(ops.pad_values())
    dense, words, values, roff = _packed(23, inp, 0.4, inp, pad)
    wb = torch.randn(23, inp, generator=torch.Generator().manual_seed(inp)).to(torch.bfloat16)
    results = {}
    for isa in every_isa:
        ops.set_isa(isa)
        for batch in (1, 2, 3, 4, 7):  # every tile width, and 4 + 3
            x = torch.randn(batch, inp, generator=torch.Generator().manual_seed(batch)).to(torch.bfloat16)
            sparse = ops.sparse_linear(x, words, values, roff, inp, None, 1)
            dense_out = ops.dense_linear(x, wb, None)
            torch.testing.assert_close(sparse.float(), x.float() @ dense.T, rtol=2e-2, atol=1e-1)
            torch.testing.assert_close(dense_out.float(), x.float() @ wb.float().T, rtol=2e-2, atol=1e-1)
            results[isa, batch] = sparse
        expanded = ops.expand(words, values, roff, inp, 0, 23, torch.float32)
        assert torch.equal(expanded, dense)  # moving values exactly, whatever the ISA
    assert int(ops.get_isa()) == every_isa[-1]


def test_no_isa_refuses_in_one_line_and_scalar_ops_still_run(ops, every_isa):
    _, words, values, roff = _packed(4, 40, 0.5, 4, int(ops.pad_values()))
    ops.set_isa(0)
    with pytest.raises(RuntimeError, match="neither AVX2\\+FMA nor AVX-512 BF16"):
        ops.sparse_linear(torch.randn(1, 40), words, values, roff, 40, None, 1)
    x = torch.randn(2, 16)
    torch.testing.assert_close(ops.rms_norm(x, torch.ones(16), 1e-6),
                               x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_set_isa_refuses_what_the_cpu_lacks(ops):
    with pytest.raises(RuntimeError, match="not supported here"):
        ops.set_isa(int(ops.best_isa()) + 1)


# --- the build --------------------------------------------------------------------------------

def test_the_library_name_hashes_every_source_and_header(tmp_path):
    src = tmp_path / "csrc"
    shutil.copytree(native.SOURCE_DIR, src, ignore=shutil.ignore_patterns("*.o", "__pycache__"))
    assert native.build_name(src) == native.build_name()
    assert [p.name for p in native.sources(src)] == [p.name for p in native.sources()]
    names = {native.build_name(src)}
    for edited in ("isa.h", "packed_linear.cpp"):
        (src / edited).write_text((src / edited).read_text() + "\n// edited\n")
        names.add(native.build_name(src))
    assert len(names) == 3
    assert native.build_dir().name.startswith("build-")  # and it does not depend on the sources at all


def test_one_object_per_source_in_the_stable_build(ops):
    where = native.build_dir()
    if not (where / "build.ninja").is_file():
        pytest.skip("the library came from the cache; this machine did not build it")
    objects = {p.stem for p in where.glob("*.o")}
    assert {p.stem for p in native.sources()} <= objects


def test_a_new_process_loads_the_installed_library_without_building(ops):
    lib = native.kernel_dir() / f"{native.build_name()}.so"
    assert lib.is_file()
    code = ("from subcoder.pruner.kernels import native; ops = native.get_ops(); "
            "print(native._state['built'], native._state['reason'])")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), cwd=Path(native.__file__).anchor)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(" ", 1) == ["False", f"{native.ISA_NAMES[int(ops.best_isa())]} kernel from {lib}\n"]
