"""Loops whose iterations allocate alike, shortened on the meta device.

The meta device has no values to compute: there, a loop over chunks (or rounds) of the same size
runs its first and last iterations only, since the ones between allocate exactly as the first does
(same sizes, same order). A count of live bytes (the whole-step memory table, docs/performance.md)
sees the same peak, in far less time. Anywhere else every iteration runs.
"""
import torch


def standing_for_all(starts, device):
    """``starts`` (a range), or on the meta device its first and last values only."""
    if torch.device(device).type != "meta" or len(starts) <= 2:
        return starts
    return [starts[0], starts[-1]]
