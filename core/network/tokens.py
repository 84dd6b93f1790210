"""Transformer tokens on their patch grid: the one test of whether tokens form a square grid."""
import math


def grid_side(tokens: int, prefix: int = 0) -> int | None:
    """The side of the square grid that the tokens after `prefix` (class or distillation tokens)
    form, or None when they form none."""
    patches = tokens - prefix
    side = math.isqrt(patches) if patches > 0 else 0
    return side if side >= 1 and side * side == patches else None
