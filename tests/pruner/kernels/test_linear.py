"""The CPU sparse kernel against dense computation, its fallback, and sparsify() on a tiny Llama.

The kernel is built once per machine into the user's kernel cache (the first run takes ~40 s);
the per-test cache isolation of conftest.py does not apply to it.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subcoder.pruner import kernels as sparse
from subcoder.pruner.kernels import debug, native as _build, packing
from subcoder.pruner.kernels.linear import SparseLinear

pytestmark = pytest.mark.kernel  # these tests use the C++ kernel (compiled on first use)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _mask(out: int, inp: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind.startswith("row"):  # per-row sparsity: exactly the same count kept in every row
        keep = inp - int(round(float(kind[3:]) * inp))
        order = torch.rand(out, inp, generator=gen).argsort(dim=1)
        return order < keep
    if kind.startswith("rand"):  # unstructured, uneven rows
        return torch.rand(out, inp, generator=gen) >= float(kind[4:])
    if ":" in kind:  # N:M, N kept of every M (the last group may be partial)
        n, m = (int(v) for v in kind.split(":"))
        groups = -(-inp // m)
        scores = torch.rand(out, groups, m, generator=gen)
        keep = scores.argsort(dim=-1).argsort(dim=-1) < n
        return keep.reshape(out, groups * m)[:, :inp]
    raise ValueError(kind)


def _case(out: int, inp: int, kind: str, seed: int = 0, empty_rows: bool = True):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen)
    m = _mask(out, inp, kind, gen)
    if empty_rows and out > 2:
        m[1] = False  # a fully pruned row
        m[-1] = False
    return w, m


def _reference(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    wd = (w * m).to(torch.bfloat16).double()
    y = x.double() @ wd.T
    return y + bias.double() if bias is not None else y


def _check(y: torch.Tensor, ref: torch.Tensor, x_dtype: torch.dtype, inp: int) -> None:
    assert y.dtype == x_dtype
    scale = ref.abs().max().item() + 1.0
    # fp32 accumulation in another order than the reference; bf16 output rounding; fp32 inputs
    # may be rounded to bf16 once (the AVX-512 path multiplies bf16 by bf16). A wrong column or
    # row would be off by O(scale).
    tol = (2e-2 if x_dtype == torch.bfloat16 else 1e-2) * scale
    err = (y.double() - ref).abs().max().item()
    assert err <= tol, f"max error {err} > {tol}"


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("shape", [(3, 1), (37, 100), (5, 64), (4, 33)])
def test_pack_roundtrip(shape):
    w, m = _case(*shape, "rand0.5", empty_rows=False)
    words, values = sparse.pack_rows(w, m)
    assert words.dtype == torch.int32 and words.shape == (shape[0], -(-shape[1] // 32))
    assert values.dtype == torch.bfloat16 and values.numel() == int(m.sum())
    assert torch.equal(sparse.unpack_mask(words, shape[1]), m)
    assert torch.equal(sparse.unpack(words, values, shape[1], torch.float32), (w * m).to(torch.bfloat16).float())
    offs = sparse.row_offsets(words)
    assert offs[0] == 0 and torch.equal(offs[1:] - offs[:-1], m.sum(1))


def test_bit_layout_matches_the_storage_format():
    m = torch.zeros(2, 40, dtype=torch.bool)
    m[0, 0] = m[0, 31] = m[0, 32] = True  # word 0: bits 0 and 31 (LSB first); word 1: bit 0
    m[1, 39] = True
    words = sparse.pack_mask(m)
    assert words.tolist() == [[1 - 2**31, 1], [0, 1 << 7]]
    try:
        from subcoder.pruner import storage
    except Exception:  # storage not importable in this checkout
        return
    assert torch.equal(storage.pack_mask(m), words)
    m2 = _case(17, 77, "rand0.6")[1]
    assert torch.equal(storage.pack_mask(m2), sparse.pack_mask(m2))


# ----------------------------------------------------------------------------- kernel exactness

SHAPES = [(37, 100), (64, 64), (1, 31), (5, 33), (96, 257), (40, 896)]
PATTERNS = ["row0.3", "row0.5", "row0.7", "2:4", "4:8", "rand0.5", "rand0.95"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", PATTERNS)
def test_sparse_matches_dense(ops, shape, kind):
    out, inp = shape
    w, m = _case(out, inp, kind, seed=out * 1000 + inp)
    words, values = sparse.pack_rows(w, m)
    layer = SparseLinear(words, values, shape, bias=None)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3, 4, 9):
        for dt in (torch.bfloat16, torch.float32):
            x = torch.randn(batch, inp, generator=gen).to(dt)
            _check(layer(x), _reference(x, w, m, None), dt, inp)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32])
def test_threads_batches_and_bias(ops, threads, nthreads, dt):
    torch.set_num_threads(nthreads)
    out, inp = 300, 700  # large enough to be split between threads
    w, m = _case(out, inp, "row0.5", seed=3)
    bias = torch.randn(out)
    words, values = sparse.pack_rows(w, m)
    layer = SparseLinear(words, values, (out, inp), bias=bias)
    gen = torch.Generator().manual_seed(2)
    for shape in ((1, inp), (2, 1, inp), (5, inp), (2, 40, inp)):
        x = torch.randn(*shape, generator=gen).to(dt)
        y = layer(x)
        assert y.shape == (*shape[:-1], out)
        _check(y.reshape(-1, out), _reference(x.reshape(-1, inp), w, m, bias), dt, inp)


@pytest.mark.parametrize("mode", [1, 2])
def test_both_batch_paths_agree(ops, mode):
    """Tiled row kernel (1) and expand + matmul (2) give the same result for any batch."""
    out, inp = 70, 129
    w, m = _case(out, inp, "4:8", seed=5)
    words, values = sparse.pack_rows(w, m)
    layer = SparseLinear(words, values, (out, inp))
    for batch in (1, 2, 17, 64):
        x = torch.randn(batch, inp).to(torch.bfloat16)
        y = ops.sparse_linear(x, layer.mask, layer.values, layer.row_offsets, inp, None, mode)
        _check(y, _reference(x, w, m, None), torch.bfloat16, inp)


@pytest.mark.parametrize("weight_first", [False, True])
def test_prefill_products_in_either_orientation(ops, weight_first):
    """The BLAS product of a prefill batch, asked for as x @ W^T or as W @ x^T and transposed back
    (csrc/gemm.cpp), gives the reference for every layer kind that takes it: dense bf16, packed
    bf16, packed int8 and dense int8, with bias, at batches on both sides of the orientation's
    batch limit."""
    out, inp = 150, 96
    w, m = _case(out, inp, "rand0.4", seed=11)
    bias = torch.randn(out)
    words, values = sparse.pack_rows(w, m)
    packed = SparseLinear(words, values, (out, inp), bias=bias)
    lin = nn.Linear(inp, out)
    lin.weight.data, lin.bias.data = w * m, bias
    packed8 = SparseLinear.from_dense(lin, m, values="int8")
    dense8 = sparse.DenseInt8Linear.from_linear(lin)
    wd = (w * m).to(torch.bfloat16)
    dense16 = sparse.DenseBF16Linear(nn.Parameter(wd, requires_grad=False), nn.Parameter(bias, requires_grad=False))
    full = torch.ones(out, inp, dtype=torch.bool)
    gen = torch.Generator().manual_seed(12)
    with debug.overrides(gemm_weight_first=weight_first):
        for batch in (16, 64, 129, 300):
            x = torch.randn(batch, inp, generator=gen).to(torch.bfloat16)
            ref = _reference(x, w, m, bias)
            _check(packed(x), ref, torch.bfloat16, inp)
            _check(dense16(x), _reference(x, wd.float(), full, bias), torch.bfloat16, inp)
            _check(ops.dense_gemm(x, wd, bias), _reference(x, wd.float(), full, bias), torch.bfloat16, inp)
            for layer in (packed8, dense8):  # int8 rows: against their own dequantised weight
                ref8 = _reference(x, layer.dense_weight(torch.float32), full, bias)
                _check(layer(x), ref8, torch.bfloat16, inp)


def test_prefill_of_a_layer_made_dense_in_chunks(ops):
    """A layer larger than the kernel makes dense at once (64 MiB) is multiplied chunk by chunk,
    each chunk's product written into its own output columns, in either orientation."""
    out, inp = 8200, 4096  # 67 MB as bf16
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(out, inp, generator=gen)
    m = torch.rand(out, inp, generator=gen) >= 0.5
    layer = SparseLinear(*sparse.pack_rows(w, m), (out, inp))
    x = torch.randn(20, inp, generator=gen).to(torch.bfloat16)
    ref = _reference(x, w, m, None)
    for weight_first in (False, True):
        with debug.overrides(gemm_weight_first=weight_first):
            _check(layer(x), ref, torch.bfloat16, inp)


def test_weight_first_products_are_the_default_on_amx_cpus(ops):
    """The kernel's own CPUID check agrees with the kernel of the OS on whether AMX can run here."""
    from subcoder.pruner import cpu

    was = int(ops.set_gemm_weight_first(0))
    ops.set_gemm_weight_first(was)
    assert bool(was) == ("amx_bf16" in cpu.cpu_flags())


def test_expand_op(ops):
    w, m = _case(50, 77, "rand0.4")
    layer = SparseLinear(*sparse.pack_rows(w, m), (50, 77))
    dense = (w * m).to(torch.bfloat16)
    for dt in (torch.bfloat16, torch.float32):
        got = ops.expand(layer.mask, layer.values, layer.row_offsets, 77, 10, 40, dt)
        assert torch.equal(got, dense[10:40].to(dt))


def test_all_isas_available_here_agree(ops):
    """Where the CPU has AVX-512 BF16, the AVX2 path must give the same answers too."""
    best = int(ops.best_isa())
    w, m = _case(64, 200, "row0.5", seed=9)
    layer = SparseLinear(*sparse.pack_rows(w, m), (64, 200))
    x = torch.randn(3, 200).to(torch.bfloat16)
    for isa in range(1, best + 1):
        with debug.overrides(isa=isa):
            assert debug.current_isa() == isa
            _check(layer(x), _reference(x, w, m, None), torch.bfloat16, 200)
    assert debug.current_isa() == best


@pytest.mark.parametrize("shape", [(37, 100), (256, 64), (10, 1000), (7, 9000)])
def test_dense_bf16_kernel(ops, shape):
    out, inp = shape
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(out, inp, generator=gen).to(torch.bfloat16)
    bias = torch.randn(out, generator=gen).to(torch.bfloat16)
    layer = sparse.DenseBF16Linear(nn.Parameter(w, requires_grad=False), nn.Parameter(bias, requires_grad=False))
    full = torch.ones(out, inp, dtype=torch.bool)
    for batch in (1, 3, 5, 20):
        for dt in (torch.bfloat16, torch.float32):
            x = torch.randn(batch, inp, generator=gen).to(dt)
            _check(layer(x), _reference(x, w.float(), full, bias.float()), dt, inp)
            _check(ops.dense_linear(x, w, bias), _reference(x, w.float(), full, bias.float()), dt, inp)


def test_bad_inputs_are_refused(ops):
    w, m = _case(8, 40, "rand0.5")
    words, values = sparse.pack_rows(w, m)
    with pytest.raises(ValueError):
        SparseLinear(words, values, (8, 100))  # wrong word count for in_features
    with pytest.raises(ValueError):
        SparseLinear(words, values[:-1], (8, 40))  # too few values
    layer = SparseLinear(words, values, (8, 40))
    with pytest.raises(RuntimeError):
        ops.sparse_linear(torch.randn(1, 40), layer.mask, values, layer.row_offsets, 40, None, 0)  # no padding


# ----------------------------------------------------------------------------- fallback


def test_fallback_when_disabled(monkeypatch):
    """use_kernel=False: the dense weight expanded per call, never the kernel (whatever the
    environment says: the kernels read none of it)."""
    monkeypatch.setenv("SUBCODER_SPARSE", "1")
    monkeypatch.setattr(_build, "get_ops", lambda: pytest.fail("the kernel was consulted"))
    w, m = _case(37, 100, "row0.5")
    bias = torch.randn(37)
    layer = SparseLinear(*sparse.pack_rows(w, m), (37, 100), bias=bias, use_kernel=False)
    for dt in (torch.bfloat16, torch.float32):
        x = torch.randn(2, 3, 100).to(dt)
        y = layer(x)
        assert y.shape == (2, 3, 37)
        _check(y.reshape(-1, 37), _reference(x.reshape(-1, 100), w, m, bias), dt, 100)


def test_unavailable_reason_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "_why_not_here", lambda: "the CPU has no AVX2+FMA (and no AVX-512 BF16)")
    with caplog.at_level(logging.WARNING, logger="subcoder.pruner.kernels"):
        for _ in range(3):
            ok, reason = sparse.kernel_available()
            assert not ok and "AVX2" in reason
    lines = [r for r in caplog.records if r.name == "subcoder.pruner.kernels"]
    assert len(lines) == 1 and "AVX2" in lines[0].getMessage()


# ----------------------------------------------------------------------------- sparsify a model


def _tiny_llama(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(dtype).eval()


def _prunable(model) -> list[str]:
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and n != "lm_head"]


@pytest.mark.parametrize("kernel", [True, False])
def test_sparsify_tiny_llama_same_logits(ops, kernel):
    model = _tiny_llama(torch.bfloat16)
    gen = torch.Generator().manual_seed(7)
    masks = {}
    with torch.no_grad():
        for i, name in enumerate(_prunable(model)):
            lin = model.get_submodule(name)
            kind = ["row0.5", "2:4", "rand0.7"][i % 3]
            masks[f"{name}.weight"] = _mask(lin.out_features, lin.in_features, kind, gen)
            lin.weight.mul_(masks[f"{name}.weight"])  # the dense masked model is the reference
    ids = torch.randint(0, 256, (2, 12), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits.float()
        ref_step = model(ids[:, :1]).logits.float()
    emb = model.get_input_embeddings().weight
    report = sparse.sparsify(model, masks, kernel=kernel)
    assert sorted(report.replaced) == sorted(_prunable(model)) or len(report.replaced) == len(masks)
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in report.replaced)
    assert all(model.get_submodule(n).use_kernel is kernel for n in report.replaced)
    assert report.linear_bytes_after < report.linear_bytes_before
    assert report.model_bytes_after < report.model_bytes_before
    assert report.kernel is kernel
    # the tied lm_head still shares the embedding: no second copy
    assert report.lm_head == "dense-kernel"
    assert model.lm_head.weight is emb
    with torch.no_grad():
        got = model(ids).logits.float()
        got_step = model(ids[:, :1]).logits.float()
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() <= 0.03 * scale
    assert (got_step - ref_step).abs().max().item() <= 0.03 * scale
    assert torch.equal(got.argmax(-1), ref.argmax(-1)) or (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


def test_sparsify_packed_inputs_and_untied_head(ops):
    """Packed (words, values[, shape]) and flat NAME.mask / NAME.values inputs; an untied fp32 head is left alone."""
    model = _tiny_llama(torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    names = _prunable(model)
    gen = torch.Generator().manual_seed(3)
    spec: dict = {}
    with torch.no_grad():
        for i, name in enumerate(names):
            lin = model.get_submodule(name)
            m = _mask(lin.out_features, lin.in_features, "row0.5", gen)
            lin.weight.mul_(m)
            words, values = sparse.pack_rows(lin.weight, m)
            if i % 2:
                spec[f"{name}.weight"] = (words, values, tuple(lin.weight.shape))
            else:
                spec[f"{name}.weight.mask"], spec[f"{name}.weight.values"] = words, values
    ids = torch.randint(0, 256, (1, 9), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits
    report = sparse.sparsify(model, spec)
    assert len(report.replaced) == len(names)
    assert report.lm_head == "unchanged"  # fp32 head: wrapping would need a bf16 copy
    with torch.no_grad():
        got = model(ids).logits
    # values were rounded to bf16 by the packing
    assert (got - ref).abs().max().item() <= 0.03 * ref.abs().max().item()


def test_sparsify_rejects_mismatches(ops):
    model = _tiny_llama(torch.bfloat16)
    with pytest.raises(ValueError):
        sparse.sparsify(model, {"model.layers.0.mlp.up_proj": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError):
        sparse.sparsify(model, {"model.layers.0.input_layernorm": torch.ones(64, dtype=torch.bool)})


def test_sparse_linear_survives_dtype_casts(ops):
    w, m = _case(16, 40, "row0.5")
    layer = SparseLinear(*sparse.pack_rows(w, m), (16, 40), bias=torch.randn(16))
    packed_before = layer.packed()[1].clone()
    layer.float()
    layer.to(torch.bfloat16)
    assert torch.equal(layer.packed()[1], packed_before)
    x = torch.randn(2, 40).to(torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    assert torch.equal(packing.unpack(*layer.packed(), 40, torch.float32), (w * m).to(torch.bfloat16).float())


def test_debug_overrides_restore_the_previous_values(ops):
    """The benchmark knobs hold inside the block only, also when the block raises."""
    best = debug.best_isa()
    with pytest.raises(KeyError):
        with debug.overrides(isa=1, decode_attention=False, gemm_min_batch=3):
            assert debug.current_isa() == 1
            assert int(ops.set_decode_attention(0)) == 0  # it was off
            assert int(ops.set_gemm_min_batch(3)) == 3
            raise KeyError("boom")
    assert debug.current_isa() == best
    assert int(ops.set_decode_attention(1)) == 1  # back on
    before = int(ops.set_gemm_min_batch(16))
    ops.set_gemm_min_batch(before)
    assert before == 16
    with debug.overrides():  # nothing asked, nothing changed
        assert debug.current_isa() == best


def test_debug_knobs_are_not_production_exports():
    for name in ("set_isa", "set_decode_attention", "set_gemm_min_batch", "overrides", "debug"):
        assert name not in sparse.__all__


def test_kernel_passes_its_load_time_self_check():
    """The check that guards every SIMD path on a user's CPU accepts the kernel here."""
    from subcoder.pruner.kernels.native import _self_check, get_ops

    ops = get_ops()
    if ops is None:
        pytest.skip("no kernel on this machine")
    assert _self_check(ops) is None
