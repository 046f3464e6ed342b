"""How reports write an estimate with its 95% interval (`{"estimate", "low", "high"}`), one way everywhere."""

from __future__ import annotations


def percent(iv: dict) -> str:
    """A rate: `12.7% [8.6, 17.2]`."""
    return f"{100 * iv['estimate']:.1f}% [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def points(iv: dict) -> str:
    """A difference of rates, in percentage points: `-11.7 pt [-15.9, -7.9]`."""
    return f"{100 * iv['estimate']:+.1f} pt [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"


def plain(iv: dict, digits: int = 3, *, signed: bool = False) -> str:
    """Any other number: `0.388 [0.347, 0.432]`, or with its sign for a difference."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(iv['estimate'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"
