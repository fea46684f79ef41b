"""Plain transcriptions of the official zeroth-order loops: the benchmark's baselines and the
tests' oracles. They keep the official code's passes, allocations and random draws; only the
weight-decay rule reads "2-D or more" where the official code reads parameter names.

- MeZO / AdaZeta: princeton-nlp/MeZO ``large_models/trainer.py`` (zo_step, zo_update) and
  yifanycc/AdaZeta ``large_models/trainer_adazeta.py`` (the same with several seeds).
- LOZO: optsuite/LOZO ``large_models/LOZOtrainer.py`` (lowrank_zo_step, lowrank_zo_update).
"""
import torch


def global_normal(seed: int, generator: torch.Generator = None):
    """The official draw: seed torch's generator, then one ``torch.normal`` per parameter in order.
    Returns ``z(index, param)``; pass ``generator`` to use a private generator instead."""
    if generator is None:
        torch.manual_seed(seed)
    else:
        generator.manual_seed(seed)

    def z(index, param):
        return torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device,
                            dtype=param.data.dtype, generator=generator)
    return z


def _decays(param) -> bool:
    return param.dim() >= 2


def _perturb(params, z, scaling_factor, zo_eps):
    for i, param in enumerate(params):
        param.data = param.data + scaling_factor * z(i, param) * zo_eps


def _projected_grad(params, closure, seed, zo_eps, noise):
    """The official probe pair: perturb, evaluate, perturb back twice, evaluate, restore."""
    _perturb(params, noise(seed), 1, zo_eps)
    loss1 = closure()
    _perturb(params, noise(seed), -2, zo_eps)
    loss2 = closure()
    _perturb(params, noise(seed), 1, zo_eps)
    return ((loss1 - loss2) / (2 * zo_eps)).item(), loss1


def _apply(param, direction, lr, weight_decay):
    if _decays(param):
        param.data = param.data - lr * (direction + weight_decay * param.data)
    else:
        param.data = param.data - lr * direction


def mezo_step(params, closure, seed, lr, zo_eps, weight_decay, noise=global_normal):
    """One MeZO step: four passes over the weights, each allocating new tensors; the update
    regenerates each parameter's z and applies it at once. Returns f(W + zo_eps z), as MeZO."""
    projected_grad, loss1 = _projected_grad(params, closure, seed, zo_eps, noise)
    z = noise(seed)
    for i, param in enumerate(params):
        _apply(param, projected_grad * z(i, param), lr, weight_decay)
    return loss1


def adazeta_step(params, closure, seeds, lr, zo_eps, weight_decay, noise=global_normal):
    """One AdaZeta step: a MeZO probe pair per seed, then the estimates summed into a full-size
    buffer per parameter (all parameters at once) and applied."""
    grads = [_projected_grad(params, closure, seed, zo_eps, noise)[0] for seed in seeds]
    buffers = [0.0] * len(params)
    for seed, grad in zip(seeds, grads):
        z = noise(seed)
        for i, param in enumerate(params):
            buffers[i] = buffers[i] + grad * z(i, param)
    for param, buffer in zip(params, buffers):
        _apply(param, buffer / len(seeds), lr, weight_decay)


class LOZOState:
    """What the official LOZO trainer keeps between steps: the step count and each matrix's ``V``."""

    def __init__(self):
        self.step, self.v = -1, {}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.v.values())


def lozo_step(params, closure, state: LOZOState, seed, lr, zo_eps, weight_decay, rank, nu, generator=None):
    """One official LOZO step. Matrices move along ``u @ v.t()`` (formed in full, four times), the
    others along a Gaussian. The probe draws ``v`` before ``u`` on a refresh step and the update
    does not, so there the update's ``u`` is another draw than the probe's (the official bug)."""
    state.step += 1

    def perturb(scaling_factor):
        z = global_normal(seed, generator)
        for i, param in enumerate(params):
            if param.data.ndim >= 2:
                if state.step % nu == 0:
                    state.v[i] = torch.randn(param.data.size(1), rank, device=param.device, dtype=param.dtype,
                                             generator=generator)
                u = torch.randn(param.data.size(0), rank, device=param.device, dtype=param.dtype,
                                generator=generator)
                param.data = param.data + scaling_factor * (u @ state.v[i].t()) * zo_eps
            else:
                param.data = param.data + scaling_factor * z(i, param) * zo_eps
    perturb(1)
    loss1 = closure()
    perturb(-2)
    loss2 = closure()
    projected_grad = ((loss1 - loss2) / (2 * zo_eps)).item()
    perturb(1)
    z = global_normal(seed, generator)
    for i, param in enumerate(params):
        if param.data.ndim >= 2:
            u = torch.randn(param.data.size(0), rank, device=param.device, dtype=param.dtype,
                            generator=generator)
            direction = u @ state.v[i].t()
        else:
            direction = z(i, param)
        _apply(param, projected_grad * direction, lr, weight_decay)
    return loss1
