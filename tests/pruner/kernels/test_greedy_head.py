"""The greedy head: the argmax of the lm_head product from an int8 screen, exactly the full product's."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from subcoder.pruner.kernels.greedy_head import GreedyHead, quantize_rows
from subcoder.pruner.kernels.linear import DenseBF16Linear

pytestmark = pytest.mark.kernel  # these tests use the C++ kernel (compiled on first use)


def _ops():
    from subcoder.pruner import kernels as sparse
    from subcoder.pruner.kernels.native import get_ops

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    ops = get_ops()
    if not int(ops.head_screen_available()):
        pytest.skip("the CPU has no AVX-512 VNNI: the head takes full logits (tested below)")
    return ops


def _head(weight: torch.Tensor, bias: torch.Tensor | None = None) -> DenseBF16Linear:
    return DenseBF16Linear(nn.Parameter(weight, requires_grad=False),
                           None if bias is None else nn.Parameter(bias, requires_grad=False))


def test_quantized_rows_are_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(50, 100, generator=g) * 0.05).to(torch.bfloat16)
    w[7] = 0  # an all-zero row keeps a usable scale
    rows = quantize_rows(w)
    assert rows.q.shape == (50, 128) and rows.q.dtype == torch.int8
    assert torch.all(rows.q[:, 100:] == 0)  # padding columns
    approx = rows.scale[:, None] * rows.q[:, :100].float()
    assert torch.all((w.float() - approx).abs() <= rows.scale[:, None] / 2 * (1 + 1e-6))
    assert torch.equal(rows.qsum, rows.q.int().sum(1, dtype=torch.int32))
    assert torch.equal(rows.qabs, rows.q.int().abs().sum(1).float())
    assert rows.scale[7] == 1 and torch.all(rows.q[7] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab,hidden", [(2000, 96), (37, 100), (5003, 64)])
def test_screened_argmax_equals_the_full_products(dtype, vocab, hidden):
    _ops()
    g = torch.Generator().manual_seed(vocab + hidden)
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).to(torch.bfloat16)
    # exact ties: duplicated rows must resolve to the first index, as argmax does
    w[vocab // 2] = w[3]
    w[vocab - 1] = w[vocab // 3]
    # near-ties: rows one bf16 step apart in one column, which often round to the same logit
    w[vocab // 4] = w[5]
    w[vocab // 4, 0] = torch.nextafter(w[5, 0].float(), torch.tensor(1.0)).to(torch.bfloat16)
    bias = (torch.randn(vocab, generator=g) * 0.1).to(torch.bfloat16)
    for with_bias in (False, True):
        head = _head(w, bias if with_bias else None)
        greedy = GreedyHead.for_head(head)
        assert greedy.screened
        for trial in range(60):
            batch = 1 + trial % 7
            x = torch.randn(batch, hidden, generator=g) * (0.3 + trial % 4)
            x[:, trial % hidden] *= 20  # an outlier channel, as real hidden states have
            if trial % 5 == 0:  # aim at a tied pair
                x[0] = w[[3, vocab // 3, 5][trial % 3]].float() * 30
            x = x.to(dtype)
            assert torch.equal(greedy(x), head(x).argmax(-1)), (trial, with_bias)


def test_next_tokens_equal_the_argmax_of_verify_on_a_model():
    _ops()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from subcoder.pruner import kernels as sparse
    from subcoder.pruner.engine.kvcache import new_cache
    from subcoder.pruner.kernels.decode_step import FastDecoder

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=3000, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config).eval().to(torch.bfloat16)
    masks = {n: torch.rand(m.weight.shape) < 0.5 for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and ".layers." in n}
    sparse.sparsify(model, masks)
    fast = FastDecoder(model)
    assert fast.fused and fast.head.screened
    prompt = torch.randint(0, 3000, (1, 40))
    caches = [new_cache(model.config), new_cache(model.config)]
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=prompt, use_cache=True, **{arg: cache})
    g = torch.Generator().manual_seed(1)
    for step in range(30):
        tokens = torch.randint(0, 3000, (1 + step % 5,), generator=g).tolist()
        want = fast.verify(tokens, caches[0]).argmax(-1).tolist()
        assert fast.next_tokens(tokens, caches[1]) == want, step
        assert torch.equal(caches[0].layers[0].keys[..., :caches[0].get_seq_length(), :],
                           caches[1].layers[0].keys[..., :caches[1].get_seq_length(), :])
    hidden = fast.hidden_states([7, 8, 9], caches[0])  # what the head is fed: the same tokens
    assert hidden.shape == (1, 3, 64) and fast.head(hidden[0]).tolist() == fast.next_tokens([7, 8, 9], caches[1])


def test_the_switch_and_unsupported_heads_fall_back_to_full_logits():
    w = (torch.randn(300, 64) * 0.05).to(torch.bfloat16)
    x = torch.randn(3, 64).to(torch.bfloat16)
    head = _head(w)
    off = GreedyHead.for_head(head, screen=False)
    assert not off.screened and torch.equal(off(x), head(x).argmax(-1))
    torch_head = DenseBF16Linear(head.weight, use_kernel=False)
    unkernelled = GreedyHead.for_head(torch_head)
    assert not unkernelled.screened and torch.equal(unkernelled(x), head(x).argmax(-1))
    plain = nn.Linear(64, 300, bias=False)
    fallback = GreedyHead.for_head(plain)
    assert not fallback.screened and torch.equal(fallback(x.float()), plain(x.float()).argmax(-1))
