"""The engine's switches, read from the environment once and passed down as plain values.

Each switch turns off one speed-up that is exact by construction (results stay bit-identical or,
for the sparse kernel, equal to bf16 rounding), so turning one off is for measuring it, or for
getting around a machine where it misbehaves -- never for changing what a model answers.
`EngineOptions.from_env()` is read where a model is loaded or a server starts; nothing below
(kernels, storage, the decode loop) reads the environment, and nothing reads it per token.

`SUBCODER_CACHE_DIR` is a location, not a switch: it stays with `subcoder.pruner.paths`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import VALUE_FORMATS

# field -> the environment variable that sets its default ("0" turns the switch off)
ENV_NAMES = {
    "sparse_kernel": "SUBCODER_SPARSE",
    "dense_kernel": "SUBCODER_DENSE_KERNEL",
    "fast_step": "SUBCODER_FAST_STEP",
    "fused_step": "SUBCODER_FUSED_STEP",
    "head_screen": "SUBCODER_HEAD_SCREEN",
    "speculate": "SUBCODER_SPECULATE",
    "warm_up": "SUBCODER_WARM_UP",
}


@dataclass(frozen=True)
class EngineOptions:
    # Pruned layers on the packed CPU kernel instead of dense torch: the memory and speed win of a
    # sub-model. Off, they are expanded per call (slow, same results to bf16 rounding).
    # Env SUBCODER_SPARSE, server setting sparseKernel (the setting wins).
    sparse_kernel: bool = True
    # A dense (unpruned) bf16 model's linears on the kernel's bf16 matvec, so that it decodes on the
    # same engine as a sub-model (fused step, greedy head, drafts): "no pruning" is compared and served
    # on equal terms. Off, they stay torch's nn.Linear (what plain transformers runs).
    # SUBCODER_DENSE_KERNEL; the loader also leaves them alone when the sparse kernel is off.
    dense_kernel: bool = True
    # How a dense model's decoder linears sit on the kernel: "bf16" (DenseBF16Linear, sharing the
    # weights) or "int8" (DenseInt8Linear, per-row scales): the fair baseline for sub-models with int8
    # values, "int8 dense" against "int8 sparse" on the same engine. Not an exact switch (int8 changes
    # the answers), so no environment variable: benchmarks and evaluations set it explicitly.
    dense_values: str = "bf16"
    # The lean batch-1 decode step: one token skips the Hugging Face forward's per-call machinery
    # (about a third of a step). Off, every token goes through the model's forward. SUBCODER_FAST_STEP.
    fast_step: bool = True
    # The fast step's layer stack as one C++ call instead of ~15 Python operators per layer; same
    # operators in the same order, so bit-identical. SUBCODER_FUSED_STEP.
    fused_step: bool = True
    # Greedy head: the argmax of lm_head from an int8 screen of it plus an exact bf16 re-check of the
    # rows that can win, instead of all logits (40% of a step's bytes on the 0.5B). SUBCODER_HEAD_SCREEN.
    head_screen: bool = True
    # Speculative greedy decoding: drafts taken from the context, verified several tokens per pass;
    # the text is the plain greedy text. SUBCODER_SPECULATE.
    speculate: bool = True
    # Servers run a model once before serving it, so the first request does not pay first-call costs
    # (kernel warm-up, allocations). SUBCODER_WARM_UP.
    warm_up: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> EngineOptions:
        """Options from `environ` (default `os.environ`): a variable set to "0" turns its switch off,
        anything else or unset leaves the default. `overrides` (field=value) win over the environment."""
        environ = os.environ if environ is None else environ
        unknown = set(overrides) - set(ENV_NAMES) - {"dense_values"}
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        values = {name: False for name, var in ENV_NAMES.items() if environ.get(var, "").strip() == "0"}
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        if self.dense_values not in VALUE_FORMATS:
            raise ValueError(f"dense_values must be {' or '.join(VALUE_FORMATS)}, not {self.dense_values!r}")
