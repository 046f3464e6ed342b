"""A lean batch-1 decode step for Llama-family models (Llama, Qwen2, Mistral) on the CPU.

Why: with the linear layers on the sparse kernel, a decoded token of Qwen2.5-Coder-0.5B spends about
16 ms of its ~45 ms outside them, in the Hugging Face forward's per-call machinery (module calls,
mask and position bookkeeping, output objects, a flash-attention kernel built for long queries)
-- measured by timing a step whose linears return zeros. For one new token that machinery does
little: this module runs the same arithmetic as the model's own forward (RMSNorm in fp32 then cast,
rotary embedding from the model's own rotary module, grouped-query attention with an fp32 softmax,
SiLU-gated MLP) with a minimum of tensor operations, reading and writing the very `DynamicCache` the
model uses, so prefill (the model's forward) and decode steps can be mixed freely.

Where the kernel library is loaded and every cache layer can hand out its buffers (`BufferedLayer`
below; `subcoder.pruner.engine.kvcache`'s growing cache does), the whole stack of layers runs as one
C++ call (`decode_layers` in csrc/decode_step.cpp: the same operators in the same order, so bit-identical
results) -- the Python interpreter between ~15 tiny operators per layer was a third of the step.
`fused=False` (EngineOptions.fused_step) keeps the per-operator Python loop. With the kernel
library, attention is its own too (`decode_attention`: torch's SDPA took 90-150 us per layer for one
query at 800 positions, ~4 ms of a 27 ms step; it takes ~20 us), in both the fused call and the loop,
so they stay bit-identical; its arithmetic differs from SDPA's by output-dtype roundings.

`kernel=False` runs the loop on plain torch operations (no kernel library at all).

`FastDecoder.for_model(model)` returns None for anything it does not recognise (other families,
sliding-window attention, other activations, tensor-parallel Llama); callers then use the model.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .greedy_head import GreedyHead

log = logging.getLogger("subcoder.pruner.kernels")

FAMILIES = ("llama", "qwen2", "mistral")


class BufferedLayer(Protocol):
    """What the fused step needs of a KV cache layer (duck-typed: the layer need not inherit this).

    The fused call writes the new positions' keys and values into the layer's buffers itself, so
    the layer must hand them out and then be told how many positions were written.
    """

    def reserve(self, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) buffers (1, kv_heads, capacity, head_dim) whose first `cache length`
        positions are the cache, with room for `t` more; None when it cannot (not yet filled)."""

    def advance(self, t: int) -> None:
        """Take the `t` positions written after the cache's end into the cache."""


def _why_not(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in FAMILIES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(FAMILIES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu)"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return "sliding-window layers"
    if cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or any(not hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "unexpected attention layout"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "unexpected MLP layout"
    return None


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The models' RMSNorm exactly: statistics in fp32, cast back, then scaled by the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos + rotated * sin


class FastDecoder:
    """One token in, the next token's logits out, against the model's own KV cache.

    `kernel`: use the kernel library's ops (norm, rotary, attention, the fused stack) where loaded;
    `fused`: the layer stack as one C++ call where the cache allows; `head_screen`: the greedy head's
    int8 screen (GreedyHead). Each is exact: off, results stay the same (to the noted roundings).
    """

    def __init__(self, model: nn.Module, *, kernel: bool = True, fused: bool = True, head_screen: bool = True):
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scaling = self.head_dim ** -0.5
        self.layers = [
            (
                layer.input_layernorm.weight, _eps(layer.input_layernorm),
                layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm),
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj,
            )
            for layer in self.inner.layers
        ]
        self.norm_weight, self.norm_eps = self.inner.norm.weight, _eps(self.inner.norm)
        ops = native.get_ops() if kernel else None  # fused RMSNorm and rotary ops when the library is loaded
        self._rms = ops.rms_norm if ops is not None else _rms
        self._rope = ops.rope if ops is not None else _rope
        self._fused = _fused_plan(self.layers) if fused and ops is not None and hasattr(ops, "decode_layers") else None
        self._ops = ops
        # the argmax of the logits, often without them
        self.head = GreedyHead.for_head(model.lm_head, screen=head_screen and ops is not None)

    @classmethod
    def for_model(cls, model: nn.Module, *, kernel: bool = True, fused: bool = True,
                  head_screen: bool = True) -> FastDecoder | None:
        reason = _why_not(model)
        if reason is not None:
            log.info("fast decode step off: %s; decoding through the model's forward", reason)
            return None
        return cls(model, kernel=kernel, fused=fused, head_screen=head_screen)

    @property
    def fused(self) -> bool:
        """Whether steps (and `verify`) run as one C++ call when the cache allows it."""
        return self._fused is not None

    @torch.inference_mode()
    def verify(self, tokens: list[int], cache, first_row: int = 0) -> torch.Tensor | None:
        """Logits (len(tokens) - first_row, vocab) after each of tokens[first_row:], all of `tokens`
        appended to `cache` in one pass; None when the fused step cannot run here."""
        h = self._hidden(tokens, cache, first_row)
        return None if h is None else self.model.lm_head(h)[0]

    @torch.inference_mode()
    def next_tokens(self, tokens: list[int], cache, first_row: int = 0) -> list[int] | None:
        """The greedy token after each of tokens[first_row:], all of `tokens` appended to `cache` in
        one pass: draft verification, or with first_row = len(tokens) - 1 a short prompt extension.
        Exactly the argmax of `verify`'s logits. None when the fused step cannot run here, except
        for a single token, which then takes the step's operator loop."""
        h = self._hidden(tokens, cache, first_row)
        if h is None:
            return [int(self.step(tokens[0], cache).argmax())] if len(tokens) == 1 else None
        return self.head(h[0]).tolist()

    @torch.inference_mode()
    def hidden_states(self, tokens: list[int], cache, first_row: int = 0) -> torch.Tensor | None:
        """The final-norm hidden states (1, len(tokens) - first_row, hidden) after tokens[first_row:],
        all of `tokens` appended to `cache` in one fused pass (what `verify` and `next_tokens` feed to
        the head); None when the fused step cannot run here."""
        return self._hidden(tokens, cache, first_row)

    def _hidden(self, tokens, cache, first_row: int) -> torch.Tensor | None:
        pos = int(cache.get_seq_length())
        x = self.inner.embed_tokens(torch.tensor([tokens]))  # (1, T, hidden)
        cos, sin = self.inner.rotary_emb(x, torch.arange(pos, pos + len(tokens)).unsqueeze(0))  # (1, T, d)
        return self._fused_run(tokens, x, cos, sin, pos, cache, first_row)

    def _fused_run(self, tokens, x, cos, sin, pos, cache, first_row: int = 0) -> torch.Tensor | None:
        """The final-norm hidden states (1, T - first_row, hidden) after tokens[first_row:], or None."""
        buffers = self._fused and _kv_buffers(cache, len(self.layers), len(tokens))
        if not buffers:
            return None
        params, kinds, eps = self._fused
        t = len(tokens)
        x = self._ops.decode_layers(x.reshape(t, -1), params, kinds, buffers[0], buffers[1], pos,
                                    cos.reshape(t, -1), sin.reshape(t, -1), self.heads, self.kv_heads, eps,
                                    self.scaling)
        for layer in cache.layers:
            layer.advance(t)
        if first_row:
            x, t = x[first_row:], t - first_row
        return self._rms(x.view(1, t, -1), self.norm_weight, self.norm_eps)

    @torch.inference_mode()
    def step(self, token: int, cache) -> torch.Tensor:
        """Logits (vocab,) for the token after `token`, which is appended to `cache`."""
        nh, nkv, d, g = self.heads, self.kv_heads, self.head_dim, self.group
        pos = int(cache.get_seq_length())
        x = self.inner.embed_tokens(torch.tensor([[token]]))  # (1, 1, hidden)
        cos, sin = self.inner.rotary_emb(x, torch.tensor([[pos]]))  # (1, 1, d) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads: (1, 1, 1, d)
        rms, rope, ops = self._rms, self._rope, self._ops
        if (h := self._fused_run([token], x, cos, sin, pos, cache)) is not None:
            return self.model.lm_head(h)[0, 0]
        for i, (w_in, eps_in, q_proj, k_proj, v_proj, o_proj, w_post, eps_post, gate, up, down) in enumerate(self.layers):
            h = rms(x, w_in, eps_in)
            q = rope(q_proj(h).view(1, nh, 1, d), cos, sin)  # (1, heads, 1, d)
            k = rope(k_proj(h).view(1, nkv, 1, d), cos, sin)
            v = v_proj(h).view(1, nkv, 1, d)
            keys, values = cache.update(k, v, i)  # (1, kv_heads, positions, d)
            if ops is not None:  # the fused step's own attention, so the two stay bit-identical
                attn = ops.decode_attention(q, keys, values, keys.shape[2], self.scaling).view(1, 1, nh * d)
            else:
                # Grouped-query attention for one query: head j reads kv head j // group, so the
                # queries of one group become the rows of one attention call against their shared
                # kv head -- no repeated keys. One query sees every cached position: no mask.
                # Measured (1,000 positions, bf16): 65 us, against 960 us for SDPA's own GQA path
                # and 106 us for matmul + softmax.
                attn = F.scaled_dot_product_attention(q.view(1, nkv, g, d), keys, values, scale=self.scaling)
                attn = attn.reshape(1, 1, nh * d)
            x = x + o_proj(attn)
            h = rms(x, w_post, eps_post)
            x = x + down(F.silu(gate(h)) * up(h))
        x = rms(x, self.norm_weight, self.norm_eps)
        return self.model.lm_head(x)[0, -1]


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _linear_parts(linear: nn.Module) -> tuple[int, list[torch.Tensor]] | None:
    """(kind, [weight-or-mask, values, row offsets, int8 scales, bias]) as `decode_layers` takes a
    linear (csrc/decode_step.cpp lists the kinds); None if unknown."""
    from .linear import DenseBF16Linear, DenseInt8Linear, SparseLinear

    empty = torch.empty(0)
    bias = linear.bias if linear.bias is not None else empty
    if isinstance(linear, SparseLinear):
        if not linear.use_kernel:  # its values carry no kernel padding: the step would refuse them
            return None
        if linear.value_format == "int8":
            return 3, [linear.mask, linear.values, linear.row_offsets, linear.scales, bias]
        return 0, [linear.mask, linear.values, linear.row_offsets, empty, bias]
    if isinstance(linear, DenseBF16Linear):
        if linear.weight.dtype != torch.bfloat16 or not linear.weight.is_contiguous():
            return None
        return 1, [linear.weight, empty, empty, empty, bias]
    if isinstance(linear, DenseInt8Linear):
        return 4, [linear.weight_q, empty, empty, linear.scales, bias]
    if type(linear) is nn.Linear:
        return 2, [linear.weight, empty, empty, empty, bias]
    return None


def _fused_plan(layers) -> tuple[list[torch.Tensor], list[int], list[float]] | None:
    params: list[torch.Tensor] = []
    kinds: list[int] = []
    eps: list[float] = []
    for w_in, eps_in, q, k, v, o, w_post, eps_post, gate, up, down in layers:
        params += [w_in, w_post]
        eps += [eps_in, eps_post]
        for linear in (q, k, v, o, gate, up, down):
            parts = _linear_parts(linear)
            if parts is None:
                log.info("fused decode step off: %s layers are not supported", type(linear).__name__)
                return None
            kinds.append(parts[0])
            params += parts[1]
    return params, kinds, eps


def _kv_buffers(cache, n_layers: int, t: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Every layer's KV buffers with room for `t` more positions, or None (a layer is not a
    `BufferedLayer`, or not yet filled by a prefill): the step then runs operator by operator."""
    layers = getattr(cache, "layers", None)
    if not layers or len(layers) != n_layers:
        return None
    ks, vs = [], []
    for layer in layers:
        reserve = getattr(layer, "reserve", None)
        room = reserve(t) if callable(reserve) and callable(getattr(layer, "advance", None)) else None
        if room is None:
            return None
        ks.append(room[0])
        vs.append(room[1])
    return ks, vs
