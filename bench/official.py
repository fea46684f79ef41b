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


def mezo_step(params, closure, seeds, lr, zo_eps, weight_decay, noise=global_normal):
    """One step with a two-point estimate per seed (MeZO: one seed; AdaZeta: ``Q_e`` seeds): four
    passes over the weights per seed, each allocating new tensors, then the update through a
    full-size gradient buffer. Returns the loss at ``W + zo_eps z`` of the last seed, as MeZO."""
    def perturb(seed, scaling_factor):
        z = noise(seed)
        for i, param in enumerate(params):
            param.data = param.data + scaling_factor * z(i, param) * zo_eps
    grads = []
    for seed in seeds:
        perturb(seed, 1)
        loss1 = closure()
        perturb(seed, -2)
        loss2 = closure()
        grads.append(((loss1 - loss2) / (2 * zo_eps)).item())
        perturb(seed, 1)
    buffers = [0.0] * len(params)
    for seed, grad in zip(seeds, grads):
        z = noise(seed)
        for i, param in enumerate(params):
            buffers[i] = buffers[i] + grad * z(i, param)
    for param, buffer in zip(params, buffers):
        if _decays(param):
            param.data = param.data - lr * (buffer / len(seeds) + weight_decay * param.data)
        else:
            param.data = param.data - lr * buffer / len(seeds)
    return loss1


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
                u = torch.randn(param.data.size(0), rank, device=param.device, dtype=param.dtype, generator=generator)
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
            u = torch.randn(param.data.size(0), rank, device=param.device, dtype=param.dtype, generator=generator)
            direction = u @ state.v[i].t()
        else:
            direction = z(i, param)
        if _decays(param):
            param.data = param.data - lr * (projected_grad * direction + weight_decay * param.data)
        else:
            param.data = param.data - lr * (projected_grad * direction)
    return loss1
