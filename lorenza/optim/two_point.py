"""The forward-only side of the closure contract: evaluate ``closure()`` safely, and the two-point
probe ``f(W + mu D), f(W - mu D)`` that every zeroth-order estimate in lorenza is made of."""
import torch

BACKWARD_IN_CLOSURE = ("the closure must return the loss without calling backward(): "
                       "{name}.step() chooses the grad mode and calls backward itself")


def require_closure(closure, name: str) -> None:
    if closure is None or not callable(closure):
        raise TypeError(f"{name}.step() needs a closure: a callable that runs the forward pass "
                        f"and returns the loss (without calling backward), got {closure!r}")


def evaluate(closure, undo, name: str) -> torch.Tensor:
    """Run the closure and return its scalar loss; on any failure call ``undo()`` and raise."""
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


def losses(closure, move, mu: float, name: str, devices=(), restore: bool = True):
    """``(f(W + mu D), f(W - mu D))`` as detached scalar tensors, where ``move(alpha)`` does
    ``W += alpha * D``.

    Both evaluations start from the same random-generator state (CPU and ``devices``), so dropout
    masks or noise drawn inside the closure are the same at both points and the difference
    measures the perturbation alone; the generators end as after one evaluation. The weights are
    back at ``W`` afterwards (``restore``), or left at ``W - mu D`` for a caller that fuses the
    restore into its update. If the closure fails, the weights are put back at ``W`` first.
    """
    start = _rng_state(devices)
    move(mu)
    loss_plus = evaluate(closure, lambda: move(-mu), name)
    _set_rng_state(start, devices)
    move(-2 * mu)
    loss_minus = evaluate(closure, lambda: move(mu), name)
    if restore:
        move(mu)
    return loss_plus.detach(), loss_minus.detach()
