"""The forward-only side of the closure contract: evaluate ``closure()`` safely, and the two-point
probe ``f(W + mu D), f(W - mu D)`` that every zeroth-order estimate in lorenza is made of."""
import math

import torch


BACKWARD_IN_CLOSURE = ("the closure must return the loss without calling backward(): "
                       "{name}.step() chooses the grad mode and calls backward itself")


def parts(closure) -> list:
    """The micro-batch closures of ``closure``: itself, or the callables of a list or tuple of them
    (a step over accumulated micro-batches: its loss is the sum of theirs, each closure weighing its
    own share)."""
    return list(closure) if isinstance(closure, (list, tuple)) else [closure]


def require_closure(closure, name: str) -> None:
    given = parts(closure) if closure is not None else []
    if not given or not all(callable(part) for part in given):
        raise TypeError(f"{name}.step() needs a closure: a callable that runs the forward pass "
                        f"and returns the loss (without calling backward), or a list of them, one per "
                        f"micro-batch, got {closure!r}")


def evaluate_one(closure, undo, name: str) -> torch.Tensor:
    """Run one closure and return its scalar loss; on any failure call ``undo()`` and raise."""
    try:
        loss = closure()
    except RuntimeError as err:
        undo()
        if not torch.is_grad_enabled() and "does not require grad" in str(err):
            raise ValueError(BACKWARD_IN_CLOSURE.format(name=name)) from err
        raise
    except BaseException:
        undo()
        raise
    if not torch.is_tensor(loss) or loss.numel() != 1:
        undo()
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"{name}: the closure must return a scalar loss tensor, got {shape}")
    return loss


def evaluate(closure, undo, name: str) -> torch.Tensor:
    """The loss of ``closure`` (summed over its micro-batch closures, :func:`parts`); on any failure
    call ``undo()`` and raise."""
    total = None
    for part in parts(closure):
        loss = evaluate_one(part, undo, name)
        total = loss if total is None else total + loss
    return total


def cuda_devices(params) -> list:
    """The CUDA devices the parameters live on (whose random generators the closure may use)."""
    return sorted({p.device for p in params if p.device.type == "cuda"}, key=str)


def _rng_state(devices):
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state, devices) -> None:
    cpu_state, cuda_states = state
    torch.set_rng_state(cpu_state)
    for device, cuda_state in zip(devices, cuda_states):
        torch.cuda.set_rng_state(cuda_state, device)


def losses(closure, move, mu: float, name: str, devices=(), restore: bool = True, ranks=None, start=None):
    """``(f(W + mu D), f(W - mu D))`` as detached scalar tensors, where ``move(alpha)`` does
    ``W += alpha * D``.

    Both evaluations start from the same random-generator state (CPU and ``devices``): ``start``,
    or the generators' state on entry. So dropout masks or noise drawn inside the closure are the
    same at both points and the difference measures the perturbation alone; the generators end as
    after one evaluation. The weights are back at ``W`` afterwards (``restore``), or left at
    ``W - mu D`` for a caller that fuses the restore into its update. If the closure fails, the
    weights are put back at ``W`` first. Under ``torch.distributed`` both losses are averaged over
    ``ranks`` (an optimizer's ``Ranks``: one collective of 2 numbers; none when ``ranks`` is None).
    """
    start = _rng_state(devices) if start is None else start
    _set_rng_state(start, devices)
    move(mu)
    loss_plus = evaluate(closure, lambda: move(-mu), name)
    _set_rng_state(start, devices)
    move(-2 * mu)
    loss_minus = evaluate(closure, lambda: move(mu), name)
    if restore:
        move(mu)
    if ranks is None:
        return loss_plus.detach(), loss_minus.detach()
    # data parallel: each rank's closure saw its own batch; the pair averaged over the ranks is the
    # pair of the whole batch, so every rank takes the same step (a NaN on one rank reaches all)
    return ranks.mean(loss_plus.detach(), loss_minus.detach())


def _moves_alone(move, mu: float, restore: bool) -> None:
    """The moves of :func:`losses` without its evaluations, rounding exactly as they do."""
    move(mu)
    move(-2 * mu)
    if restore:
        move(mu)


def estimates(closure, move, queries: int, mu: float, name: str, devices=(), restore_last: bool = True,
              ranks=None, split: bool = False):
    """The two-point estimates ``c_j = (f+ - f-) / (2 mu)`` of directions ``j = 0 .. queries - 1``,
    where ``move(j, alpha)`` does ``W += alpha * D_j``. Every evaluation of the step starts from the
    generators' state on entry (one dropout mask per step, as a first-order step has), and the
    generators end as after one evaluation.

    Returns ``(coeffs, loss, failed)``: ``loss`` is the mean of the first pair (the loss at ``W``
    to O(mu^2)); ``failed`` is None, or ``(j, f+, f-)`` of the first pair with a NaN/Inf loss, after
    which no further probe runs (unless ``split``), the weights are back at ``W`` and ``coeffs`` is
    None. With ``restore_last=False`` and every loss finite, the weights are left at
    ``W - mu D_{q-1}``.

    ``split`` (query parallelism): each of ``ranks`` evaluates its share of the queries on its
    batch, the same on every rank, and the pairs are gathered rather than averaged
    (:mod:`lorenza.distributed.queries`). Every rank still makes the moves of every query (a pass
    over the weights, where a query costs two forward passes), so the replicas' weights round alike
    and equal one process's bit for bit (the dropout masks too, when every rank's generators start
    the step alike); the generators of every rank end as the first rank's. The loss is float32.
    """
    start = _rng_state(devices)
    mine = set(ranks.share(queries) if split else range(queries))
    pairs, at_last_probe = {}, False
    for j in range(queries):
        def move_j(alpha, j=j):
            move(j, alpha)
        restore = restore_last or j < queries - 1
        at_last_probe = not restore
        if j not in mine:
            _moves_alone(move_j, mu, restore)
            continue
        pairs[j] = losses(closure, move_j, mu, name, devices, restore, None if split else ranks, start)
        # one process stops at a failure; a split step goes on, so that every rank makes the same moves
        if not split and not all(map(math.isfinite, pairs[j])):
            break
    if split:
        pairs = ranks.gather_pairs(pairs, queries, devices[0] if devices else None)
        if ranks.idle(queries):  # their generators take the evaluating ranks' state
            _set_rng_state(ranks.first(_rng_state(devices)), devices)
    loss = (pairs[0][0] + pairs[0][1]) / 2
    if split:
        loss = loss.float()  # gathered in float64; a rank that evaluated no query knows no loss dtype
    coeffs = []
    for j in range(queries):
        plus, minus = float(pairs[j][0]), float(pairs[j][1])
        if not (math.isfinite(plus) and math.isfinite(minus)):
            if at_last_probe:
                move(queries - 1, mu)
            return None, loss, (j, plus, minus)
        coeffs.append((plus - minus) / (2 * mu))
    return coeffs, loss, None
