"""A KV cache whose layers append into spare capacity instead of re-concatenating.

transformers' `DynamicLayer.update` concatenates the whole cache with the new token's keys and
values, so every decoded token copies every layer's cache: at 1,000 positions that is ~10 MB per
token for Qwen2.5-Coder-0.5B (24 layers x 2 x 2 kv heads x 64 x bf16) and a fresh allocation per
layer. `GrowingLayer` keeps its keys and values as views into buffers with room to grow (doubling
when full), so appending copies only the new positions. Cropping (`DynamicLayer.crop`, used when a
prompt diverges from the cached one) narrows the views; the next append overwrites the dropped
positions. Everything else -- lengths, masks, the model's forward -- sees an ordinary `DynamicCache`.

`reserve(t)` and `advance(t)` are the `BufferedLayer` interface of subcoder.pruner.kernels.decode_step:
the fused decode step writes new positions into the buffers itself (the kernels never import this
module; any layer with those two methods will do).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_CAPACITY = 256  # positions allocated at first use


class GrowingLayer(DynamicLayer):
    def __init__(self):
        super().__init__()
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _is_view_of_buffer(self) -> bool:
        return (self._k is not None and self.keys is not None and self.keys.dim() == 4
                and self.keys.data_ptr() == self._k.data_ptr() and self.values.data_ptr() == self._v.data_ptr()
                and self.keys.shape[:2] == self._k.shape[:2] and self.keys.shape[-1] == self._k.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        t = key_states.shape[-2]
        k, v = self._room(n, t, key_states, value_states)
        k[:, :, n : n + t].copy_(key_states)
        v[:, :, n : n + t].copy_(value_states)
        self.advance(t)
        return self.keys, self.values

    def _room(self, n: int, t: int, like_k: torch.Tensor, like_v: torch.Tensor):
        """The buffers, grown (doubling) when `n + t` positions would not fit or were never buffers."""
        if not self._is_view_of_buffer() or n + t > self._k.shape[-2] or self._k.dtype != like_k.dtype:
            # (Re)allocate: first use, full, or the views were replaced from outside (batch ops).
            b, h, _, d = like_k.shape
            cap = max(MIN_CAPACITY, 2 * (n + t))
            k = like_k.new_empty((b, h, cap, d))
            v = like_v.new_empty((b, h, cap, like_v.shape[-1]))
            if n:
                k[:, :, :n].copy_(self.keys)
                v[:, :, :n].copy_(self.values)
            self._k, self._v = k, v
            self.keys, self.values = k[:, :, :n], v[:, :, :n]
        return self._k, self._v

    def reserve(self, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Buffers with room for `t` more positions, for a caller that writes them itself and then
        calls `advance(t)` (the fused decode step); None before the layer has seen any keys."""
        if not self.is_initialized or self.keys is None or self.keys.dim() != 4:
            return None
        return self._room(self.get_seq_length(), t, self.keys, self.values)

    def advance(self, t: int) -> None:
        """Take `t` more buffered positions into the cache (they were written at its end)."""
        n = self.keys.shape[-2] + t
        self.keys = self._k[:, :, :n]
        self.values = self._v[:, :, :n]

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()


def new_cache(config) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers are `GrowingLayer`s (sliding-window
    and other special layers are left as transformers made them)."""
    cache = DynamicCache(config=config)
    if getattr(cache, "layers", None):
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
