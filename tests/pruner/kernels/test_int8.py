"""int8 kept values (bitmask + int8 + per-row scales) and the dense int8 baseline: the reference
quantiser, and the kernel against reference dequantisation + matmul on both instruction sets.

Tolerance. The inputs are bf16 numbers (exact in both ISAs' input formats: the AVX-512 path
multiplies bf16 by bf16, the AVX2 path fp32 by fp32), int8 values are exact in both, and every
product q * x is exact in fp32. What remains is fp32 accumulation in another order than the float64
reference -- at most n * 2^-24 of sum |q x| for n terms (6e-5 for the 1000 columns here) -- and one
rounding for the row's scale: so |kernel - reference| <= 1e-4 * sum_j |w_j x_j|, per output. A wrong
column, row, scale or sign is off by a sizeable fraction of that sum. The prefill path (expand +
BLAS) rounds its product to bf16 on AVX-512 first: 2^-8 relative more.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subcoder.pruner import kernels as sparse
from subcoder.pruner.kernels import debug, int8, native, packing
from subcoder.pruner.kernels.linear import DenseInt8Linear, SparseLinear

pytestmark = pytest.mark.kernel


def _isas(ops) -> list[int]:
    return list(range(1, int(ops.best_isa()) + 1))  # AVX2, and AVX-512 where the CPU has it


def _routes(ops) -> list[tuple[int, int]]:
    """(ISA, VNNI route bits) for every decode path of int8 layers this CPU has: AVX2, AVX-512 on the
    bf16 route, and AVX-512 VNNI for dense and packed rows."""
    out = [(isa, 0) for isa in _isas(ops)]
    if ops.q8_vnni_available():
        out.append((2, debug.Q8_VNNI_DENSE | debug.Q8_VNNI_PACKED))
    return out


def _seen(x: torch.Tensor, vnni: int) -> torch.Tensor:
    """The input as the decode path multiplies it: on the VNNI route, quantised to int16 per group."""
    return int8.dequantise_input(*int8.quantise_input(x)) if vnni else x


def _weights(out: int, inp: int, density: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * (1 + torch.rand(out, 1, generator=g) * 4)  # rows of unequal range
    keep = torch.rand(out, inp, generator=g) < density
    if out > 3 and 0 < density < 1:
        keep[1] = False  # a row with nothing kept
        keep[2] = True  # a row with everything kept
    return w.to(torch.bfloat16), keep


def _input(batch: int, inp: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, inp, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def _assert_close(got: torch.Tensor, deq: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, rel: float):
    want = x.double() @ deq.double().T
    bound = x.double().abs() @ deq.double().abs().T
    if bias is not None:
        want = want + bias.double()
    tol = rel * bound + 1e-6
    err = (got.double() - want).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max()):.3g}, at most {float(tol.max()):.3g} allowed"


# ----------------------------------------------------------------------------- the reference quantiser


def test_quantise_rows_is_symmetric_round_to_nearest():
    w, keep = _weights(9, 70, 0.5, seed=1)
    words, kept = packing.pack_rows(w, keep, dtype=None)
    offsets = packing.row_offsets(words)
    q, scales = int8.quantise_rows(kept, offsets)
    assert q.dtype == torch.int8 and q.numel() == kept.numel() and scales.dtype == torch.float32
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    for r in range(9):
        row = kept[offsets[r]:offsets[r + 1]].float()
        if row.numel() == 0:
            assert float(scales[r]) == 0.0
            continue
        assert float(scales[r]) == pytest.approx(float(row.abs().max()) / 127, rel=1e-7)
        assert int(q[offsets[r]:offsets[r + 1]].abs().max()) == 127  # the largest value uses the full range
    deq = int8.dequantise_rows(q, scales, offsets)
    per_value_scale = scales[torch.repeat_interleave(torch.arange(9), offsets[1:] - offsets[:-1])]
    assert bool(((deq - kept.float()).abs() <= per_value_scale / 2 * (1 + 1e-6)).all())  # round to nearest


def test_zero_rows_and_dense_weights():
    w = torch.zeros(3, 40)
    w[0, 5] = -2.5
    q, scales = int8.quantise_dense(w)
    assert scales.tolist() == [pytest.approx(2.5 / 127), 0.0, 0.0]
    assert q[0, 5] == -127 and int(q.abs().sum()) == 127
    assert torch.equal(int8.dequantise_dense(q, scales)[0, 5], torch.tensor(-2.5))
    with pytest.raises(ValueError, match="bf16, int8"):
        int8.check_format("int4")


# ----------------------------------------------------------------------------- sparse int8 kernel

SHAPES = [(7, 37), (33, 100), (64, 96), (40, 1000), (1, 31)]
DENSITIES = [0.0, 0.3, 0.5, 0.7, 1.0]


def _packed_int8(w, keep):
    words, kept = packing.pack_rows(w, keep, dtype=None)
    offsets = packing.row_offsets(words)
    q, scales = int8.quantise_rows(kept, offsets)
    deq = packing.unpack(words, int8.dequantise_rows(q, scales, offsets), w.shape[1], torch.float32)
    padded = torch.cat([q, torch.zeros(native.value_padding(1), dtype=torch.int8)])
    return words, padded, scales, offsets, deq


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_sparse_int8_matches_reference(ops, shape, density):
    out, inp = shape
    w, keep = _weights(out, inp, density, seed=out * 7 + inp)
    words, q, scales, offsets, deq = _packed_int8(w, keep)
    bias = torch.randn(out)
    for isa, vnni in _routes(ops):
        with debug.overrides(isa=isa, q8_vnni=vnni):
            for batch in (1, 3, 6):  # one tile, a partial tile, a full tile and a partial one
                x = _input(batch, inp, seed=batch)
                for xin in (x, x.float()):
                    got = ops.sparse_linear_q8(xin, words, q, scales, offsets, inp, None, 1)
                    assert got.dtype == xin.dtype and got.shape == (batch, out)
                    _assert_close(got.float() if xin.dtype == torch.float32 else got, deq, _seen(x, vnni), None,
                                  1e-4 if xin.dtype == torch.float32 else 2 ** -8 + 1e-4)
                got = ops.sparse_linear_q8(x.float(), words, q, scales, offsets, inp, bias, 1)
                _assert_close(got, deq, _seen(x, vnni), bias, 1e-4)
            x = _input(20, inp, seed=20)  # the prefill path: expand to dense tiles + BLAS, then scale
            got = ops.sparse_linear_q8(x.float(), words, q, scales, offsets, inp, bias, 2)
            _assert_close(got, deq, x, bias, 2 ** -8 + 1e-4)


def test_sparse_int8_refuses_what_it_cannot_read(ops):
    w, keep = _weights(8, 64, 0.5, seed=3)
    words, q, scales, offsets, _ = _packed_int8(w, keep)
    x = _input(1, 64, seed=0)
    with pytest.raises(RuntimeError, match="scales must be"):
        ops.sparse_linear_q8(x, words, q, scales[:-1], offsets, 64, None, 0)
    with pytest.raises(RuntimeError, match="int8 values"):
        ops.sparse_linear_q8(x, words, q.to(torch.int16), scales, offsets, 64, None, 0)
    with pytest.raises(RuntimeError, match="padding"):
        ops.sparse_linear_q8(x, words, q[: int(offsets[-1])], scales, offsets, 64, None, 0)


# ----------------------------------------------------------------------------- dense int8 kernel


@pytest.mark.parametrize("shape", [(7, 37), (33, 100), (64, 96), (40, 1000), (3, 16)])
def test_dense_int8_matches_reference(ops, shape):
    out, inp = shape
    w, _ = _weights(out, inp, 1.0, seed=out + inp)
    q, scales = int8.quantise_dense(w)
    deq = int8.dequantise_dense(q, scales)
    bias = torch.randn(out)
    for isa, vnni in _routes(ops):
        with debug.overrides(isa=isa, q8_vnni=vnni):
            for batch in (1, 3, 5):
                x = _input(batch, inp, seed=batch)
                seen = _seen(x, vnni)
                _assert_close(ops.dense_linear_q8(x.float(), q, scales, None), deq, seen, None, 1e-4)
                _assert_close(ops.dense_linear_q8(x.float(), q, scales, bias), deq, seen, bias, 1e-4)
                _assert_close(ops.dense_linear_q8(x, q, scales, None), deq, seen, None, 2 ** -8 + 1e-4)
            x = _input(20, inp, seed=20)  # prefill: BLAS on the converted weight
            _assert_close(ops.dense_linear_q8(x.float(), q, scales, bias), deq, x, bias, 2 ** -8 + 1e-4)


# ----------------------------------------------------------------------------- the VNNI route's input


def test_quantise_input_uses_each_groups_range():
    x = torch.zeros(2, 600)
    x[0, :256] = torch.linspace(-3, 1, 256)  # group 0: largest |x| is 3
    x[0, 256:512] = 0.001  # group 1: small values get their own scale
    x[1, 599] = -7.0  # row 1: only the last, partial group is non-zero
    q, scales = int8.quantise_input(x)
    assert q.dtype == torch.int16 and q.shape == (2, 600) and scales.shape == (2, 3)
    assert float(scales[0, 0]) == pytest.approx(3 / 32767) and int(q[0, 0]) == -32767
    assert float(scales[0, 1]) == pytest.approx(0.001 / 32767) and bool((q[0, 256:512] == 32767).all())
    assert float(scales[0, 2]) == 0.0 and bool((q[0, 512:] == 0).all())  # a group of zeros stays zeros
    assert scales[1].tolist()[:2] == [0.0, 0.0] and int(q[1, 599]) == -32767
    back = int8.dequantise_input(q, scales)
    assert bool(((back - x).abs() <= scales.repeat_interleave(256, dim=1)[:, :600] / 2 * (1 + 1e-6)).all())


@pytest.mark.parametrize("inp", [37, 256, 300, 1000])
def test_vnni_route_is_the_quantised_arithmetic(ops, inp):
    """Exactly the reference's int16 input (each product exact in int32, fp32 only per group), for
    inputs whose range varies from column to column as real activations do."""
    if not ops.q8_vnni_available():
        pytest.skip("this CPU has no AVX-512 VNNI")
    w, keep = _weights(9, inp, 0.5, seed=inp)
    words, q, scales, offsets, deq = _packed_int8(w, keep)
    dq, dscales = int8.quantise_dense(w)
    g = torch.Generator().manual_seed(inp)
    x = (torch.randn(5, inp, generator=g) * torch.exp(2 * torch.randn(5, inp, generator=g))).to(torch.bfloat16)
    with debug.overrides(isa=2, q8_vnni=debug.Q8_VNNI_DENSE | debug.Q8_VNNI_PACKED):
        assert int(ops.q8_vnni()) == 3
        for batch in (1, 4, 5):
            seen = _seen(x[:batch], 1)
            _assert_close(ops.sparse_linear_q8(x[:batch].float(), words, q, scales, offsets, inp, None, 1),
                          deq, seen, None, 1e-5)
            _assert_close(ops.dense_linear_q8(x[:batch].float(), dq, dscales, None),
                          int8.dequantise_dense(dq, dscales), seen, None, 1e-5)


def test_vnni_route_defaults_to_every_int8_row(ops):
    if not ops.q8_vnni_available():
        pytest.skip("this CPU has no AVX-512 VNNI")
    with debug.overrides(isa=2):  # dense and packed rows: faster or as fast on it (csrc/q8_vnni.h)
        assert int(ops.q8_vnni()) == debug.Q8_VNNI_DENSE | debug.Q8_VNNI_PACKED
    with debug.overrides(isa=1):
        assert int(ops.q8_vnni()) == 0  # the AVX2 ISA never takes it


# ----------------------------------------------------------------------------- the layers


def test_layers_match_reference_and_fallback(ops):
    torch.manual_seed(0)
    linear = nn.Linear(300, 50, bias=True).to(torch.bfloat16)
    keep = torch.rand(50, 300) < 0.5
    layer = SparseLinear.from_dense(linear, keep, values="int8")
    assert layer.value_format == "int8" and "values=int8" in repr(layer)
    deq = layer.dense_weight(torch.float32)
    x = _input(2, 300, seed=4)
    _assert_close(layer(x.float()), deq, x, linear.bias.float(), 1e-4)
    # bf16 values for the same mask: the int8 layer takes about half their bytes (plus a scale per row)
    bf16_layer = SparseLinear.from_dense(linear, keep)
    assert layer.nbytes() < 0.62 * bf16_layer.nbytes()
    slow = SparseLinear.from_dense(linear, keep, values="int8", use_kernel=False)
    assert torch.allclose(slow(x.float()), layer(x.float()), rtol=1e-2, atol=1e-2)
    dense = DenseInt8Linear.from_linear(linear)
    _assert_close(dense(x.float()), dense.dense_weight(torch.float32), x, linear.bias.float(), 1e-4)
    # model.to(dtype) must not convert the scales (kept as fp32 bits)
    holder = nn.Sequential(layer, dense).to(torch.bfloat16)
    assert holder[0].scales.dtype == torch.int32 and holder[1].scales.dtype == torch.int32
    assert sparse.dense_kernel_layer(linear, "int8").__class__ is DenseInt8Linear
    assert sparse.dense_kernel_layer(linear).__class__ is sparse.DenseBF16Linear


def test_sparsify_with_int8_values(ops):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).to(torch.bfloat16)
    masks = {"0": torch.rand(32, 64) < 0.5, "2": torch.rand(16, 32) < 0.5}
    x = _input(1, 64, seed=0)
    report = sparse.sparsify(model, masks, values="int8")
    assert report.replaced == ["0", "2"] and all(model[i].value_format == "int8" for i in (0, 2))
    # the packed form (as storage hands it over) builds the same layers
    packed = {name: (*model[int(name)].packed()[:2], None, model[int(name)].packed()[2]) for name in masks}
    twin = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).to(torch.bfloat16)
    twin[0].bias, twin[2].bias = model[0].bias, model[2].bias
    sparse.sparsify(twin, packed)
    assert torch.equal(twin(x), model(x))
