"""Where a causal LM keeps what pruning touches: its stack of decoder layers and their linears.

A leaf module (torch and errors only) so that pruning, offloading and extraction can all use it
without importing each other.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of decoder layers, found by shape rather than by per-architecture names."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n:
            return name, module
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}")


def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
