"""The lean decode step computes what the model's own forward computes, on the model's own cache."""

import pytest
import torch
from transformers import DynamicCache

from subcoder.pruner.kernels.decode_step import FastDecoder
from tiny_models import tiny_model

pytestmark = pytest.mark.kernel  # these tests use the C++ kernel (compiled on first use)


def _cache_kw(model, cache):
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_the_models_forward(family, dtype):
    model = tiny_model(family, seed=3, dtype=dtype)
    if family == "qwen2":  # q/k/v biases, as Qwen2 checkpoints have them: make them non-zero
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    fast = FastDecoder.for_model(model)
    assert fast is not None
    prompt = torch.randint(0, 257, (1, 11), generator=torch.Generator().manual_seed(0))
    ref_cache, fast_cache = DynamicCache(), DynamicCache()
    with torch.no_grad():
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, ref_cache))
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, fast_cache))
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        for token in (5, 17, 200, 3, 99, 42):
            want = model(input_ids=torch.tensor([[token]]), use_cache=True, **_cache_kw(model, ref_cache)).logits[0, -1]
            got = fast.step(token, fast_cache)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
            assert fast_cache.get_seq_length() == ref_cache.get_seq_length()
        # the cache it wrote is the model's: the model continues from it as from its own
        a = model(input_ids=torch.tensor([[7]]), use_cache=True, **_cache_kw(model, ref_cache)).logits[0, -1]
        b = model(input_ids=torch.tensor([[7]]), use_cache=True, **_cache_kw(model, fast_cache)).logits[0, -1]
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def test_other_families_are_declined():
    assert FastDecoder.for_model(tiny_model("gpt_neox")) is None


def test_step_on_the_sparse_kernel_matches_dense():
    from subcoder.pruner import kernels as sparse

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    model = tiny_model("qwen2", seed=1, dtype=torch.bfloat16)
    masks = {n: torch.rand(m.weight.shape) < 0.5 for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in n}
    with torch.no_grad():
        for n, keep in masks.items():
            model.get_submodule(n).weight.mul_(keep)
    dense_fast = FastDecoder(model)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    c1, c2 = DynamicCache(), DynamicCache()
    with torch.no_grad():
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, c1))
        want = dense_fast.step(9, c1)
        sparse.sparsify(model, masks)
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, c2))
        got = FastDecoder(model).step(9, c2)
    torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)


def test_fused_step_needs_only_the_buffered_layer_interface():
    """The kernels never import the engine: any cache whose layers offer reserve/advance runs fused,
    and a cache without them (transformers' own) takes the operator loop."""
    from subcoder.pruner.kernels.decode_step import _kv_buffers

    class Layer:
        def __init__(self):
            self.k, self.v, self.advanced = torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8, 16), 0

        def reserve(self, t):
            return self.k, self.v

        def advance(self, t):
            self.advanced += t

    class Cache:
        layers = [Layer(), Layer()]

    ks, vs = _kv_buffers(Cache(), 2, 3)
    assert ks[1] is Cache.layers[1].k and vs[0] is Cache.layers[0].v
    assert _kv_buffers(Cache(), 3) is None  # not this model's layer count
    model = tiny_model("qwen2", seed=5)
    plain = DynamicCache(config=model.config)
    assert len(plain.layers) == 2 and _kv_buffers(plain, 2) is None


def test_growing_cache_matches_the_dynamic_cache_through_crops():
    """Prefill, single steps (fast path and model), a crop back into the prompt, then more tokens:
    the growing cache's logits match transformers' own DynamicCache at every step."""
    from subcoder.pruner.engine.kvcache import GrowingLayer, new_cache

    model = tiny_model("qwen2", seed=5)
    fast = FastDecoder(model)
    ref, grow = DynamicCache(), new_cache(model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in grow.layers)
    prompt = torch.randint(0, 257, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for cache in (ref, grow):
            model(input_ids=prompt, use_cache=True, **_cache_kw(model, cache))
        for step, token in enumerate([3, 9, 27, 81] * 70):  # past the first capacity (256 positions)
            if step == 100:
                ref.crop(-30)
                grow.crop(-30)
            a = model(input_ids=torch.tensor([[token]]), use_cache=True, **_cache_kw(model, ref)).logits[0, -1]
            b = fast.step(token, grow) if step % 2 else \
                model(input_ids=torch.tensor([[token]]), use_cache=True, **_cache_kw(model, grow)).logits[0, -1]
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            assert grow.get_seq_length() == ref.get_seq_length()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_norm_and_rotary_match_the_models_arithmetic(dtype):
    """The kernel library's rms_norm/rope round where the model's eager code rounds."""
    from subcoder.pruner import kernels as sparse
    from subcoder.pruner.kernels.native import get_ops
    from subcoder.pruner.kernels.decode_step import _rms, _rope

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    ops = get_ops()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 896, generator=g) * 4).to(dtype)
    w = (torch.randn(896, generator=g)).to(dtype)
    want, got = _rms(x, w, 1e-6), ops.rms_norm(x, w, 1e-6)
    assert got.dtype == want.dtype
    # the sum of squares may be added up in another order: at most one rounding step apart
    torch.testing.assert_close(got.float(), want.float(), atol=0, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    t = torch.randn(1, 14, 1, 64, generator=g).to(dtype)
    cos, sin = torch.randn(1, 1, 1, 64, generator=g).to(dtype), torch.randn(1, 1, 1, 64, generator=g).to(dtype)
    assert torch.equal(ops.rope(t, cos, sin), _rope(t, cos, sin))


def test_step_without_the_kernel_library():
    """kernel=False (EngineOptions.sparse_kernel off): plain torch operations, still matching."""
    model = tiny_model("llama", seed=2)
    fast = FastDecoder(model, kernel=False)
    assert fast._ops is None and not fast.fused and not fast.head.screened
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    c1, c2 = DynamicCache(), DynamicCache()
    with torch.no_grad():
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, c1))
        model(input_ids=prompt, use_cache=True, **_cache_kw(model, c2))
        want = model(input_ids=torch.tensor([[7]]), use_cache=True, **_cache_kw(model, c1)).logits[0, -1]
        got = fast.step(7, c2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _kernel_qwen(seed: int, dtype, sparse_layers: bool, heads=(4, 2)):
    """A tiny Qwen2 with non-zero q/k/v biases, its decoder linears 50% sparse on the kernel when
    `sparse_layers` (skips the test where the kernel library cannot run)."""
    from subcoder.pruner import kernels as sparse

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    model = tiny_model("qwen2", seed=seed, dtype=dtype, heads=heads)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    if sparse_layers == "dense-int8":  # the dense int8 baseline (DenseInt8Linear)
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear and name != "lm_head":
                    setattr(module, name, sparse.DenseInt8Linear.from_linear(child))
    elif sparse_layers:  # True: bf16 values; "int8": int8 values
        g = torch.Generator().manual_seed(seed + 1)
        masks = {n: torch.rand(m.weight.shape, generator=g) < 0.5
                 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
        sparse.sparsify(model, masks, values="int8" if sparse_layers == "int8" else "bf16")
    return model


@pytest.mark.parametrize("sparse_layers", [True, False, "int8", "dense-int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads", [(4, 2), (2, 1)])
def test_fused_step_is_bit_identical_to_the_operator_loop(sparse_layers, dtype, heads):
    """The one-call C++ step (decode_layers) runs the operator loop's operators in its order: the
    logits and the KV cache it writes are exactly equal, across a crop and past a buffer regrowth."""
    from subcoder.pruner.engine.kvcache import new_cache

    model = _kernel_qwen(4, dtype, sparse_layers, heads)
    fused = FastDecoder(model)
    assert fused._fused is not None
    loop = FastDecoder(model, fused=False)
    assert loop._fused is None and not loop.fused
    prompt = torch.randint(0, 257, (1, 200), generator=torch.Generator().manual_seed(2))
    c1, c2 = new_cache(model.config), new_cache(model.config)
    with torch.no_grad():
        for c in (c1, c2):
            model(input_ids=prompt, use_cache=True, **_cache_kw(model, c))
        for step, token in enumerate([3, 9, 27, 81, 200] * 24):  # 320 positions: the 256 buffer regrows
            if step == 30:
                c1.crop(-12)
                c2.crop(-12)
            a, b = loop.step(token, c1), fused.step(token, c2)
            assert torch.equal(a, b), f"step {step}: {float((a.float() - b.float()).abs().max())}"
        for l1, l2 in zip(c1.layers, c2.layers):
            assert torch.equal(l1.keys, l2.keys) and torch.equal(l1.values, l2.values)


@pytest.mark.parametrize("heads", [(4, 2), (2, 1)])  # head_dim 16 and 32: both paths of the kernel's attention
@pytest.mark.parametrize("sparse_layers", [True, False, "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_matches_one_step_per_token(sparse_layers, dtype, heads):
    """`verify` (T tokens in one pass, causal among themselves) gives exactly the logits and the cache
    that T single steps give: what makes speculative decoding produce plain greedy decoding's tokens."""
    from subcoder.pruner.engine.kvcache import new_cache

    model = _kernel_qwen(6, dtype, sparse_layers, heads)
    fast = FastDecoder(model)
    prompt = torch.randint(0, 257, (1, 50), generator=torch.Generator().manual_seed(4))
    c1, c2 = new_cache(model.config), new_cache(model.config)
    with torch.no_grad():
        for c in (c1, c2):
            model(input_ids=prompt, use_cache=True, **_cache_kw(model, c))
        for tokens in ([5, 6, 7, 8], [9], [1, 2], [250, 3, 3, 3, 3, 3, 7]):
            want = torch.stack([fast.step(t, c1) for t in tokens])
            got = fast.verify(tokens, c2)
            assert got.shape == want.shape and c2.get_seq_length() == c1.get_seq_length()
            if dtype == torch.bfloat16:  # the kernel's row products: bit-identical
                assert torch.equal(got, want), float((got.float() - want.float()).abs().max())
            else:  # fp32 goes through torch's GEMM for several rows, its GEMV for one: ulps apart
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                assert torch.equal(got.argmax(-1), want.argmax(-1))
        for l1, l2 in zip(c1.layers, c2.layers):
            torch.testing.assert_close(l1.keys, l2.keys, atol=1e-5, rtol=1e-5)
            if dtype == torch.bfloat16:
                assert torch.equal(l1.keys, l2.keys) and torch.equal(l1.values, l2.values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads,d,n,t", [(14, 2, 64, 800, 1), (14, 2, 64, 300, 4), (4, 2, 16, 37, 3),
                                                  (8, 8, 32, 5, 2), (4, 1, 128, 1, 1), (6, 3, 64, 17, 5)])
def test_decode_attention_matches_sdpa(dtype, heads, kv_heads, d, n, t):
    """The kernel library's decode attention (query i sees the first n + i positions) computes what
    torch's SDPA computes in fp32, to the output dtype's rounding, with its own loop or torch's."""
    import torch.nn.functional as F

    from subcoder.pruner import kernels as sparse
    from subcoder.pruner.kernels import debug
    from subcoder.pruner.kernels.native import get_ops

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    ops = get_ops()
    g = torch.Generator().manual_seed(n)
    keys = torch.randn(1, kv_heads, n + t + 3, d, generator=g).to(dtype)  # spare capacity, as the cache has
    values = torch.randn(1, kv_heads, n + t + 3, d, generator=g).to(dtype)
    q = (torch.randn(1, heads, t, d, generator=g) * 3).to(dtype)
    want = torch.stack([
        F.scaled_dot_product_attention(q[:, :, i].float().reshape(1, kv_heads, heads // kv_heads, d),
                                       keys[:, :, :n + i].float(), values[:, :, :n + i].float(),
                                       scale=d ** -0.5).reshape(-1)
        for i in range(t)])
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    for own in (True, False):
        with debug.overrides(decode_attention=own):
            got = ops.decode_attention(q, keys, values, n, d ** -0.5)
        assert got.shape == (t, heads * d) and got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
