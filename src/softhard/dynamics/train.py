r"""Training a student MoE on the soft risk with temperature annealing (paper §4.4–§5).

:func:`train` minimises :math:`L_\tau = E[(Y - f_\tau(X))^2]` (2.5) in its conditional form (5.3) by
full-batch gradient descent or L-BFGS on one fixed Monte Carlo sample (``estimate.draw``), or by
minibatch SGD on fresh samples, at a temperature schedule (:class:`TauSchedule`: constant, geometric,
or driven by a boundary-mass target). Every logged step records, on a fixed evaluation sample and with
standard errors: the soft risk, the hard risk of the same parameters (2.11), the boundary mass
:math:`\beta(2\tau)` (2.13), the mean gate entropy, and — for a teacher with cells — the expert recovery
error and misrouted mass modulo relabelling (:func:`softhard.dynamics.teacher.recovery`).

A non-finite loss or parameter stops training with a :class:`TrainingStopped` warning; the parameters
of the last good step are kept.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import check_float, check_int, fail
from ..estimators.reducer import draw, mean_estimate, resolve_seed
from ..model.gates import gate_entropy, top_two_margin
from ..model.laws import as_law
from ..model.moe import MoE, Teacher, as_teacher, hard_from, soft_from
from ..results.table import Table
from .teacher import PartitionTeacher, recovery

__all__ = ["TauSchedule", "TrainResult", "TrainingStopped", "train", "METHODS"]

METHODS = ("gd", "lbfgs", "sgd")


class TrainingStopped(UserWarning):
    """Training stopped early (non-finite loss or parameters); the last good parameters were kept."""


@dataclass(frozen=True)
class TauSchedule:
    r"""Temperature schedule :math:`\tau_t` for step ``t``.

    - ``"constant"``: :math:`\tau_t = \tau_0`;
    - ``"geometric"``: :math:`\tau_t = \max(\tau_{min}, \tau_0\gamma^t)`;
    - ``"mass"``: :math:`\tau_t = \min(\tau_0, \max(\tau_{min}, q_m(\Delta_t)/w))`, where :math:`q_m(\Delta_t)` is the
      ``target_mass`` quantile of the top-two margin (2.6) on the current sample, so that the boundary mass
      :math:`\beta(w\tau_t)` (2.13) equals the target ``m`` (w = ``width_factor`` = 2: the paper's β(2τ)).

    Args:
        kind: "constant", "geometric" or "mass"; tau: :math:`\tau_0 > 0` (the cap for "mass");
        factor: γ ∈ (0, 1]; tau_min: floor > 0; target_mass: m ∈ (0, 1); width_factor: w > 0.
    """

    kind: str = "constant"
    tau: float = 0.1
    factor: float = 0.98
    tau_min: float = 1e-3
    target_mass: float = 0.05
    width_factor: float = 2.0

    def __post_init__(self):
        where = "TauSchedule"
        if self.kind not in ("constant", "geometric", "mass"):
            fail("kind", where, "one of 'constant', 'geometric', 'mass'", self.kind)
        check_float(self.tau, "tau", where, 0.0, math.inf)
        check_float(self.factor, "factor", where, 0.0, 1.0, high_open=False)
        check_float(self.tau_min, "tau_min", where, 0.0, math.inf)
        check_float(self.target_mass, "target_mass", where, 0.0, 1.0)
        check_float(self.width_factor, "width_factor", where, 0.0, math.inf)

    def value(self, step: int, margins: torch.Tensor | None = None) -> float:
        """τ at ``step``; ``margins`` (the top-two margins Δ of the current sample, ``(N,)``) for "mass"."""
        if self.kind == "constant":
            return self.tau
        if self.kind == "geometric":
            return max(self.tau_min, self.tau * self.factor ** step)
        q = float(torch.quantile(margins.detach().to(torch.float64), self.target_mass))
        return min(self.tau, max(self.tau_min, q / self.width_factor))


@dataclass
class TrainResult:
    """The trained copy of the student, the per-step log (a :class:`~softhard.experiments.Table` named
    "train"), ``status`` ("completed" or "stopped") with its ``message``, and the number of steps taken."""

    moe: MoE
    log: Table
    status: str
    message: str
    steps: int


def _metrics(moe: MoE, teacher: Teacher, x: torch.Tensor, tau: float, width: float) -> dict:
    """Soft/hard risk, β(width·τ), gate entropy (per-sample columns, one reducer) and recovery on ``x``."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run may overflow the squares
        return _metrics_rows(moe, teacher, x, tau, width)


def _metrics_rows(moe: MoE, teacher: Teacher, x: torch.Tensor, tau: float, width: float) -> dict:
    with torch.no_grad():
        a, h = moe.logits(x), moe.expert_outputs(x)
        fs = teacher.signal(x)
        noise = teacher.noise_std ** 2
        cols = torch.stack([(fs - soft_from(a, h, torch.tensor([tau], dtype=torch.float64), True)) ** 2 + noise,
                            (fs - hard_from(a, h)) ** 2 + noise,
                            (top_two_margin(a) <= width * tau).to(fs.dtype), gate_entropy(a, tau)], 1)
    est = mean_estimate(cols)
    row = {}
    for i, name in enumerate(("soft_risk", "hard_risk", "boundary_mass", "gate_entropy")):
        row[name], row[f"{name}_stderr"] = float(est.value[i]), float(est.stderr[i])
    if isinstance(teacher, PartitionTeacher) and moe.num_experts >= teacher.num_cells:
        rec = recovery(moe, teacher, sample=x)
        row |= {"expert_error": float(rec.expert_error.value), "expert_error_stderr": float(rec.expert_error.stderr),
                "misrouted_mass": float(rec.misrouted_mass.value),
                "misrouted_mass_stderr": float(rec.misrouted_mass.stderr)}
    return row


def _finite(moe: MoE) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in moe.parameters())


def train(moe: MoE, teacher: Teacher, law, *, schedule: TauSchedule | float = 0.1, method: str = "lbfgs",
          steps: int = 100, lr: float | None = None, n: int = 1 << 14, batch: int = 1024, seed=0,
          log_every: int = 1, lbfgs_iter: int = 20, progress: bool = False) -> TrainResult:
    r"""Train a copy of ``moe`` on the soft risk at the temperatures of ``schedule``.

    .. math:: \theta_{t+1} = \theta_t - \eta\,\nabla_\theta \hat L_{\tau_t}(\theta_t),\qquad
              \hat L_\tau(\theta) = \frac1N\sum_i \big(f^*(x_i) - f_\tau(x_i;\theta)\big)^2 + \sigma^2

    Args:
        moe: the student (not modified; a trained copy is returned).
        teacher: the data model (:class:`~softhard.dynamics.teacher.PartitionTeacher` for the recovery columns).
        law: the input law.
        schedule: a :class:`TauSchedule` or a float (constant τ).
        method: "gd" (full-batch gradient descent, ``lr`` default 0.1), "lbfgs" (full-batch L-BFGS with a
            strong-Wolfe line search, ``lr`` default 1; one step = up to ``lbfgs_iter`` iterations at the step's
            τ, from a fresh curvature history) or "sgd" (minibatches of ``batch`` fresh draws, ``lr`` default 0.05).
        steps: optimisation steps.
        n: size of the fixed training sample (gd/lbfgs) and of the evaluation sample (all methods):
            ``draw(law, n, seed)``; minibatch ``t`` is drawn with seed ``(seed, t)``.
        log_every: log every this many steps (and the last one).

    Returns:
        :class:`TrainResult`; its log has columns ``step, tau`` and, each with ``_stderr``: ``soft_risk,
        hard_risk, boundary_mass, gate_entropy`` (and ``expert_error, misrouted_mass`` for teachers with cells).
    """
    where = "train"
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    if not isinstance(teacher, Teacher):
        fail("teacher", where, "a softhard Teacher", type(teacher).__name__, TypeError)
    teacher = as_teacher(teacher, moe, where)  # same input dimension as the student
    law = as_law(law, where, moe.d)
    if method not in METHODS:
        fail("method", where, f"one of {METHODS}", method)
    sched = schedule if isinstance(schedule, TauSchedule) else TauSchedule("constant", check_float(
        schedule, "schedule", where, 0.0, math.inf))
    steps = check_int(steps, "steps", where, low=0)
    log_every = check_int(log_every, "log_every", where)
    lr = check_float({"gd": 0.1, "lbfgs": 1.0, "sgd": 0.05}[method] if lr is None else lr, "lr", where, 0.0, math.inf)
    seed = resolve_seed(seed, where)
    model = copy.deepcopy(moe)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        fail("moe", where, "an MoE with trainable parameters", "none")
    x = draw(law, check_int(n, "n", where, low=2), seed)
    fs, noise = teacher.signal(x).detach(), teacher.noise_std ** 2
    batch = check_int(batch, "batch", where, low=2)

    def loss_on(xb, fb, tau):
        return ((fb - model(xb, tau)) ** 2).mean() + noise

    inner = check_int(lbfgs_iter, "lbfgs_iter", where)

    def tau_at(t):
        if sched.kind != "mass":
            return sched.value(t)
        with torch.no_grad():
            return sched.value(t, top_two_margin(model.logits(x)))

    rows = []
    opt = None if method == "lbfgs" else torch.optim.SGD(params, lr=lr)
    status, message, done = "completed", "", 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train ({method})", leave=False)
    tau = tau_at(0)
    rows.append({"step": 0, "tau": tau} | _metrics(model, teacher, x, tau, sched.width_factor))
    for t in range(steps):
        tau = tau_at(t)
        if method == "lbfgs":  # a fresh history per step (torch keeps a stale line-search state otherwise)
            opt = torch.optim.LBFGS(params, lr=lr, max_iter=inner, history_size=20, line_search_fn="strong_wolfe")
        if method == "sgd":
            s = int(np.random.SeedSequence([seed, 2, t]).generate_state(1, np.uint32)[0])
            xb = draw(law, batch, s)
            fb = teacher.signal(xb).detach()
        else:
            xb, fb = x, fs
        good = copy.deepcopy(model.state_dict())

        def closure():
            opt.zero_grad()
            value = loss_on(xb, fb, tau)
            value.backward()
            return value

        value = float(opt.step(closure).detach())
        with torch.no_grad():
            ok = math.isfinite(value) and _finite(model) and math.isfinite(float(loss_on(x, fs, tau)))
        if not ok:
            model.load_state_dict(good)
            status = "stopped"
            message = (f"train: the soft risk became non-finite at step {t + 1} (tau={tau:g}, method={method}, "
                       f"lr={lr:g}); stopped and kept the parameters of step {t}")
            warnings.warn(message, TrainingStopped, stacklevel=2)
            break
        done = t + 1
        if bar is not None:
            bar.update(1)
        if done % log_every == 0 or done == steps:
            rows.append({"step": done, "tau": tau} | _metrics(model, teacher, x, tau, sched.width_factor))
    if bar is not None:
        bar.close()
    meta = {"method": method, "schedule": sched, "lr": lr, "n": n, "batch": batch if method == "sgd" else None,
            "seed": seed, "status": status, "message": message}
    return TrainResult(model, Table("train", list(rows[0]), rows, meta), status, message, done)
