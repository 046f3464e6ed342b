"""What a pruning run is asked to do, validated once at construction.

The CLI and the server both build a `PruneConfig`; everything downstream can trust it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigError

METHODS = ("wanda", "magnitude")
# How weights are stored: kept values of a sub-model (storage's manifest, `subcoder prune --values`) or a
# dense model's layers on the kernel (EngineOptions.dense_values); subcoder.pruner.kernels.int8 says how.
VALUE_FORMATS = ("bf16", "int8")


@dataclass(frozen=True)
class Pattern:
    """Which weights compete for survival: a whole output row (`unstructured`) or each block of M (`N:M`).

    For N:M, N of every M consecutive weights in a row are *pruned* (so 2:4 means 50% sparsity and
    1:4 means 25%), as Wanda's reference code counts them. Hardware documentation usually counts the
    kept ones instead; for 2:4 and 4:8, the patterns anyone uses, the two readings agree.
    """

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        return self.n / self.m if self.structured else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"

    @classmethod
    def parse(cls, text: str | "Pattern") -> "Pattern":
        if isinstance(text, Pattern):
            return text
        text = str(text).strip().lower()
        if text in ("", "unstructured", "none"):
            return cls()
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise ConfigError(f"pattern must be 'unstructured' or N:M such as 2:4, not {text!r}") from None
        if not (0 < n < m <= 64):
            raise ConfigError(f"N:M pattern (N pruned of every M) needs 0 < N < M <= 64, got {text!r}")
        return cls(n, m)


@dataclass(frozen=True)
class PruneConfig:
    """One pruning run: method, target sparsity and pattern, and how the kept values are stored."""

    sparsity: float = 0.5  # fraction of each linear layer's weights set to zero
    pattern: Pattern = field(default_factory=Pattern)
    method: str = "wanda"
    values: str = "bf16"  # "int8": kept values quantised per row (storage's `values`)

    def __post_init__(self):
        pattern = Pattern.parse(self.pattern)
        object.__setattr__(self, "pattern", pattern)
        try:
            sparsity = float(self.sparsity)
        except (TypeError, ValueError):
            raise ConfigError(f"sparsity must be a number in (0, 1), not {self.sparsity!r}") from None
        if not (0.0 < sparsity < 1.0) or math.isnan(sparsity):
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if pattern.structured and not math.isclose(sparsity, pattern.sparsity, abs_tol=1e-9):
            raise ConfigError(
                f"pattern {pattern} prunes {pattern.sparsity:.0%} of weights; "
                f"sparsity {sparsity} does not match (use --sparsity {pattern.sparsity})"
            )
        object.__setattr__(self, "sparsity", sparsity)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.values not in VALUE_FORMATS:
            raise ConfigError(f"values must be one of {', '.join(VALUE_FORMATS)}, not {self.values!r}")

    def slug(self) -> str:
        """A short name for file names and cache keys: `wanda-u50`, `wanda-2of4`, `wanda-u50-int8`
        (bf16 values, the default, add nothing: existing keys stay valid)."""
        shape = f"{self.pattern.n}of{self.pattern.m}" if self.pattern.structured else f"u{round(self.sparsity * 100)}"
        return f"{self.method}-{shape}" + ("" if self.values == "bf16" else f"-{self.values}")
