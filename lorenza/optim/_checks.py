"""Argument validation shared by the optimizers, worded as torch.optim words it."""
import math
import numbers
import sys


def _number(name: str, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name} value: {value} ({name} must be finite)")
    return value


def non_negative(name: str, value):
    if _number(name, value) < 0:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be >= 0)")


def positive(name: str, value):
    if _number(name, value) <= 0:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be > 0)")


def betas(value):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    for index, beta in enumerate(value):
        if not 0.0 <= _number(f"betas[{index}]", beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta} (must be in [0, 1))")


def int_at_least(name: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be >= {minimum})")


def optional_rank(value):
    if value is not None:
        int_at_least("rank", value, 1)


def one_of(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} (choose one of {', '.join(map(repr, choices))})")


def same_in_every_group(keys, group: dict, groups) -> None:
    """Raise unless ``group`` agrees with the first of ``groups`` on ``keys`` (optimizer-wide values)."""
    for key in keys:
        if groups and group[key] != groups[0][key]:
            raise ValueError(f"{key} must be the same in every param group: got {group[key]} and "
                             f"{groups[0][key]}")


def user_stacklevel() -> int:
    """The ``stacklevel`` at which a warning raised by the caller points at the user's code: the
    first frame outside lorenza, ``torch.optim`` (an optimizer's constructor runs through both) and
    the ``torch.no_grad`` wrapper of a step."""
    frame, level = sys._getframe(1), 1
    inside = ("lorenza.", "torch.optim", "torch.utils._contextlib")
    while frame is not None and frame.f_globals.get("__name__", "").startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
