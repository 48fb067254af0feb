"""Dynamic programming of a smooth path through a cost image (one position per step)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def trace_path(cost: np.ndarray, max_step: int, step_cost: float) -> np.ndarray:
    """The path ``p[t]`` minimising ``sum cost[t, p[t]] + step_cost * |p[t] - p[t-1]|``.

    Args:
        cost: (T, P) float array; row t holds the cost of each position at step t.
        max_step: largest allowed ``|p[t] - p[t-1]|``.
        step_cost: penalty per position moved between steps (smoothness).

    Returns:
        (T,) int32 positions in [0, P).
    """
    steps, positions = cost.shape
    k = max(int(max_step), 0)
    cost = cost.astype(np.float32, copy=False)
    penalty = np.float32(step_cost) * np.abs(np.arange(-k, k + 1, dtype=np.float32))
    padded = np.full(positions + 2 * k, np.inf, np.float32)
    windows = sliding_window_view(padded, 2 * k + 1)  # (P, 2k+1) view of ``padded``
    rows = np.arange(positions)
    choice = np.zeros((steps, positions), np.int8)
    acc = cost[0].copy()
    for t in range(1, steps):
        padded[k : k + positions] = acc
        scores = windows + penalty
        arg = scores.argmin(axis=1)
        acc = scores[rows, arg] + cost[t]
        choice[t] = arg
    path = np.zeros(steps, np.int32)
    path[-1] = int(np.argmin(acc))
    for t in range(steps - 1, 0, -1):
        path[t - 1] = path[t] + int(choice[t, path[t]]) - k
    return path
