"""A dense model on the sub-models' engine: the loader wraps its linears for the kernel's bf16 matvec,
the Completer then decodes it with the fused step and the greedy head, and the greedy tokens are the
ones the model's own forward picks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subcoder.pruner import kernels
from subcoder.pruner.engine.completer import Completer
from subcoder.pruner.engine.options import EngineOptions
from subcoder.pruner.kernels.native import get_ops
from subcoder.pruner.loader import load_model
from tinymodel import save_tiny_model

CODE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(60))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "m", fim=True)


@pytest.fixture(scope="module")
def kernel():
    ok, reason = kernels.kernel_available()
    if not ok:
        pytest.skip(reason)


def _linears(model) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, kernels.DenseBF16Linear))}


def test_a_dense_model_runs_on_the_dense_kernel(model_dir, kernel):
    loaded = load_model(str(model_dir), dtype="bfloat16")
    kinds = _linears(loaded.model)
    assert kinds and set(kinds.values()) == {kernels.DenseBF16Linear}
    completer = Completer(loaded)
    assert completer.decoder is not None and completer.decoder.fused
    # the int8 screen of lm_head needs AVX-512 VNNI; without it the head takes full logits
    assert completer.decoder.head.screened == bool(int(get_ops().head_screen_available()))
    # the wrappers share the weights: nothing is copied
    plain = load_model(str(model_dir), dtype="bfloat16", sparse=False)
    assert kernels.model_bytes(loaded.model) == kernels.model_bytes(plain.model)


def test_the_int8_dense_baseline_quantises_the_decoder_and_keeps_the_head(model_dir, kernel):
    """dense_values int8: the decoder linears on the kernel's int8 layer, lm_head (tied) still bf16 and
    screened by the greedy head; the model still completes through the fused step."""
    loaded = load_model(str(model_dir), dtype="bfloat16", options=EngineOptions(dense_values="int8"))
    kinds = {n: type(m) for n, m in loaded.model.named_modules()
             if isinstance(m, (nn.Linear, kernels.DenseBF16Linear, kernels.DenseInt8Linear))}
    head = [n for n in kinds if n.endswith("lm_head")]
    assert head and all(kinds[n] is kernels.DenseBF16Linear for n in head)
    assert {kinds[n] for n in kinds if n not in head} == {kernels.DenseInt8Linear}
    completer = Completer(loaded)
    assert completer.decoder is not None and completer.decoder.fused
    assert isinstance(completer.complete("def f(x):\n    return ", "", max_new_tokens=4).text, str)


@pytest.mark.parametrize("how", [{"sparse": False}, {"options": EngineOptions(dense_kernel=False)},
                                 {"options": EngineOptions(sparse_kernel=False)}, {"dtype": "float32"}])
def test_the_model_keeps_torchs_linears_when_asked_or_not_bf16(model_dir, how):
    """sparse=False is how pruning loads (it hooks nn.Linear); fp32 weights keep torch's fp32 BLAS."""
    loaded = load_model(str(model_dir), **{"dtype": "bfloat16", **how})
    assert set(_linears(loaded.model).values()) == {nn.Linear}


@torch.inference_mode()
def _greedy_with_own_forward(model, ids: list[int], n: int) -> list[int]:
    """Greedy tokens from the model's own forward, one token per call, no cache: the reference."""
    ids = list(ids)
    out = []
    for _ in range(n):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
    return out


@pytest.mark.parametrize("speculate", [False, True])
def test_greedy_tokens_are_the_models_own(model_dir, kernel, speculate):
    """Token for token the greedy choice of plain torch layers through the model's forward; and whole
    completions, with and without drafts (the prompt repeats itself, so drafts are found and verified
    several tokens per pass), equal to the engine with every speed-up off."""
    plain = load_model(str(model_dir), dtype="bfloat16", sparse=False)
    options = EngineOptions(speculate=speculate)
    loaded = load_model(str(model_dir), dtype="bfloat16", options=options)
    completer = Completer(loaded, context_tokens=512, options=options)
    prefix = CODE[:600]

    prompt = completer.prompts.build(prefix, "")
    want = _greedy_with_own_forward(plain.model, prompt.ids, 16)
    cache = completer.new_cache()
    tokens = [completer.feed(list(prompt.ids), cache)]  # the fused step and the greedy head
    while len(tokens) < len(want):
        tokens.append(completer.feed([tokens[-1]], cache))
    assert tokens == want

    slow = EngineOptions(dense_kernel=False, fast_step=False, speculate=False)
    reference = Completer(load_model(str(model_dir), dtype="bfloat16", options=slow), context_tokens=512,
                          options=slow)
    got = completer.complete(prefix, "", max_new_tokens=24, mode="multi-line")
    assert got.new_tokens > 0
    assert got.text == reference.complete(prefix, "", max_new_tokens=24, mode="multi-line").text


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A tiny model whose weights are all exactly bf16 (as every preset's are), saved in fp32."""
    from transformers import AutoModelForCausalLM

    path = save_tiny_model(tmp_path_factory.mktemp("tiny16") / "m", fim=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.save_pretrained(path)
    return path


def test_a_tied_fp32_embedding_reads_the_heads_bf16_copy(tmp_path, kernel):
    """Tied embedding and lm_head of an fp32 model on the AVX2 path: one bf16 tensor serves both, the
    looked-up rows are the fp32 ones exactly, and the fp32 matrix is gone from the model's bytes."""
    from tiny_models import save_tiny_model_dir

    from subcoder.pruner.kernels.debug import overrides

    path = save_tiny_model_dir(tmp_path / "m", "qwen2")
    plain = load_model(str(path), dtype="float32", sparse=False)
    plain_emb = plain.model.get_input_embeddings()
    assert plain.model.get_output_embeddings().weight is plain_emb.weight
    with overrides(isa=1):
        loaded = load_model(str(path), dtype="float32")
        emb, head = loaded.model.get_input_embeddings(), loaded.model.get_output_embeddings()
        assert isinstance(emb, kernels.BF16Embedding) and isinstance(head, kernels.DenseBF16Linear)
        assert emb.weight is head.weight and emb.weight.dtype == torch.bfloat16
        ids = torch.arange(256).reshape(2, -1) % plain_emb.num_embeddings
        with torch.no_grad():
            assert torch.equal(emb(ids), plain_emb(ids))
            want, got = plain.model(ids).logits, loaded.model(ids).logits
        assert got.dtype == torch.float32 and torch.equal(got.argmax(-1), want.argmax(-1))
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        fp32_rows = plain_emb.weight.numel() * 4
        assert kernels.model_bytes(loaded.model) <= kernels.model_bytes(plain.model) - fp32_rows / 2


def test_fp32_weights_that_are_bf16_go_on_the_avx2_kernel(bf16_checkpoint, kernel):
    """On CPUs without native bf16 a model computes in fp32; where its weights are exactly bf16 the
    kernel's AVX2 path (fp32 input, fp32 products) takes them as bf16: the same tokens, half the bytes.
    lm_head becomes a bf16 copy on the kernel, and the fp32 input embedding reads bf16 rows (the head's
    copy when tied), widened exactly: the same vectors in half the bytes."""
    from subcoder.pruner.kernels.debug import overrides

    plain = load_model(str(bf16_checkpoint), dtype="float32", sparse=False)
    with overrides(isa=1):
        loaded = load_model(str(bf16_checkpoint), dtype="float32")
        kinds = _linears(loaded.model)
        assert set(kinds.values()) == {kernels.DenseBF16Linear}
        assert all(m.weight.dtype == torch.bfloat16 for m in loaded.model.modules()
                   if isinstance(m, kernels.DenseBF16Linear))
        emb, plain_emb = loaded.model.get_input_embeddings(), plain.model.get_input_embeddings()
        assert isinstance(emb, kernels.BF16Embedding) and emb.weight.dtype == torch.bfloat16
        assert emb.weight is not loaded.model.get_output_embeddings().weight  # untied (FIM tokens added): its own copy
        ids = torch.arange(plain_emb.num_embeddings).reshape(1, -1)
        with torch.no_grad():
            assert torch.equal(emb(ids), plain_emb(ids)) and emb(ids).dtype == torch.float32
        assert kernels.model_bytes(loaded.model) < kernels.model_bytes(plain.model)
        completer = Completer(loaded, context_tokens=512)
        prompt = completer.prompts.build(CODE[:600], "")
        want = _greedy_with_own_forward(plain.model, prompt.ids, 12)
        cache = completer.new_cache()
        tokens = [completer.feed(list(prompt.ids), cache)]
        while len(tokens) < len(want):
            tokens.append(completer.feed([tokens[-1]], cache))
        assert tokens == want
    # on the AVX-512 path (its input rounded to bf16) an fp32 model keeps torch's layers
    if int(get_ops().best_isa()) == 2:
        with overrides(isa=2):
            assert set(_linears(load_model(str(bf16_checkpoint), dtype="float32").model).values()) == {nn.Linear}
