"""Plain transcriptions of the official zeroth-order loops: the benchmark's baselines and the
tests' oracles. They keep the official code's passes, allocations and random draws; only the
weight-decay rule reads "2-D or more" where the official code reads parameter names.

- MeZO / AdaZeta: princeton-nlp/MeZO ``large_models/trainer.py`` (zo_step, zo_update) and
  yifanycc/AdaZeta ``large_models/trainer_adazeta.py`` (the same with several seeds).
- LOZO: optsuite/LOZO ``large_models/LOZOtrainer.py`` (lowrank_zo_step, lowrank_zo_update).
- ProjFactor: BIGKnight/VLoRP ``optim/projfactor.py`` (SingleParameterRandomAdaFactor).
"""
import math

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


def _official_seed() -> int:
    return torch.randint(0, 100000, (1,)).numpy().item()


def _official_matrix(seed: int, shape, device, dtype) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=generator, device=device, dtype=dtype)


class ProjFactorReference:
    """VLoRP's SingleParameterRandomAdaFactor for one ``m x n`` weight, as the official code runs it:
    ``project`` draws a new seed whenever it is called at a step count that is a multiple of
    ``update_proj_gap``, so at such a step every micro-batch of an accumulated gradient gets its
    own random matrix, and ``project_back`` uses the last one. ``new_seed()`` and
    ``matrix(seed, shape, device, dtype)`` default to the official draws and may be replaced (a
    test injects lorenza's bases)."""

    def __init__(self, shape, lr, betas, eps, weight_decay, rank, update_proj_gap, scale, factor,
                 new_seed=_official_seed, matrix=_official_matrix):
        self.r_num, self.c_num = shape
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.rank, self.update_proj_gap, self.scale, self.factor = rank, update_proj_gap, scale, factor
        self.new_seed, self.matrix = new_seed, matrix
        self.multiplier_pos = "right" if self.r_num >= self.c_num else "left"
        self.update_step, self.random_seed, self.proj_grad, self.state = 0, new_seed(), None, {}

    def _random_matrix(self, like):
        if self.multiplier_pos == "right":
            shape = (self.rank, self.c_num // self.factor)
        else:
            shape = (self.r_num // self.factor, self.rank)
        return self.matrix(self.random_seed, shape, like.device, like.dtype)

    def project(self, full_rank_grad):
        if self.update_step % self.update_proj_gap == 0:
            self.random_seed = self.new_seed()
        random_matrix = self._random_matrix(full_rank_grad)
        if self.multiplier_pos == "right":
            view = full_rank_grad.reshape(self.r_num * self.factor, self.c_num // self.factor)
            return view @ random_matrix.t()
        return random_matrix.t() @ full_rank_grad.reshape(self.r_num // self.factor, self.c_num * self.factor)

    def project_back(self, low_rank_grad):
        random_matrix = self._random_matrix(low_rank_grad)
        if self.multiplier_pos == "right":
            full = (low_rank_grad @ random_matrix) / self.rank
        else:
            full = (random_matrix @ low_rank_grad) / self.rank
        return full.reshape(self.r_num, self.c_num) * self.scale

    def accumulate(self, grad):
        """The official post-accumulate-grad hook: project and add to ``proj_grad``."""
        projected = self.project(grad)
        self.proj_grad = projected if self.proj_grad is None else self.proj_grad + projected

    def step(self, p):
        self.update_step += 1
        if "exp_avg" not in self.state:
            self.state["exp_avg"] = torch.zeros_like(self.proj_grad)
            self.state["exp_avg_sq_row"] = torch.zeros(self.r_num, device=self.proj_grad.device)
            self.state["exp_avg_sq_col"] = torch.zeros(self.c_num, device=self.proj_grad.device)
        exp_avg, row, col = self.state["exp_avg"], self.state["exp_avg_sq_row"], self.state["exp_avg_sq_col"]
        beta1, beta2 = self.betas
        exp_avg.mul_(beta1).add_(self.proj_grad, alpha=1.0 - beta1)
        proj_back_grad = self.project_back(self.proj_grad)
        row.mul_(beta2).add_((proj_back_grad**2).sum(dim=1), alpha=1.0 - beta2)
        col.mul_(beta2).add_((proj_back_grad**2).sum(dim=0), alpha=1.0 - beta2)
        step_size = self.lr * math.sqrt(1.0 - beta2**self.update_step) / (1.0 - beta1**self.update_step)
        approx_v = torch.mul(row.reshape(-1, 1), col.reshape(1, -1)) / row.sum()
        p.add_(self.project_back(exp_avg) / approx_v.sqrt().add_(self.eps), alpha=-step_size)
        if self.weight_decay > 0.0:
            p.add_(p, alpha=-self.lr * self.weight_decay)
        self.proj_grad = None
