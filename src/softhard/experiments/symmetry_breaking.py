r"""§7.3 Reduced symmetry-breaking diagnostic (Table 3, Figure 3), plus a phase diagram [beyond].

Design (paper.md §6, 7.3; derivations in ``docs/symmetry.md``):

- :math:`X \sim N(0, \Sigma)` on ℝ^d with :math:`\Sigma = I + (a - 1)vv^\top`, :math:`v = (e_1 + e_3)/\sqrt2`
  (eigenvalue ``a = anisotropy`` along v, at 45° to the separator); teacher separator :math:`u = e_1`,
  baseline :math:`\beta_0 = b\,(1,\dots,1)/\sqrt d`, contrast :math:`c = |c|\,e_2` (noiseless).
- students fixed at contrast :math:`\delta = \varepsilon c` around the best shared linear predictor
  :math:`\beta_{LS} = \beta_0`: :math:`w_{1,2} = \beta_0 \pm \delta/2`; only the router θ is trained, by
  full-batch gradient descent (step η, ``steps`` steps) on one fixed sample ``draw(law, samples, seed)``.
- θ starts near balance, :math:`\theta_0 = r_0(\alpha_0 u + \sqrt{1-\alpha_0^2}\,z)` with a fixed random unit
  :math:`z \perp u` (from ``seed``), the same sample and :math:`\theta_0` for every τ.
- columns: final objective on a fresh evaluation sample (``monte_carlo`` with seed ``seed + 1``, ``samples``
  draws), alignment :math:`|\cos(\theta, u)|`, :math:`|\theta|`, boundary mass :math:`\mu(|\theta\cdot X| \le 2\tau)`
  and mean binary gate entropy (nats) on the same evaluation sample.

Why anisotropic by default: with Σ = I and :math:`c \perp u` the drift at the balanced router,
:math:`-\nabla L(0) \propto \Sigma u = u`, already points along u and one step aligns θ; with
:math:`a \ne 1` the drift points along Σu and the router must then rotate to u, which is the
τ-dependent part the diagnostic shows. The phase diagram covers a = 1.

Extras: ``table3_trajectory`` (alignment deficit, objective and |θ| against step, per τ) and the phase
diagram ``table3_phase_contrast`` (τ × ε) and ``table3_phase_anisotropy`` (τ × a), comparing the
measured number of steps to reach alignment ``align_threshold`` with the linearised iteration (6.7) of
the reduced operator M and its rate ρ (6.11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import DTYPE, check_float, check_int, fail
from ..dynamics.symmetry import (
    TwoExpertGaussian,
    alignment,
    alignment_rate,
    linear_iteration,
    operator_spectrum,
    reduced_operator,
    train_router,
)
from ..estimators.reducer import draw, monte_carlo
from ..model.gates import binary_entropy, top_two_margin
from ..results.table import Table

__all__ = ["Config", "run", "design", "initial_router"]


@dataclass(frozen=True)
class Config:
    """Design values of §7.3 (and of the phase diagram); ``samples`` and ``seed`` fix every Monte Carlo column."""

    taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    d: int = 8
    anisotropy: float = 3.0  # a: Σ = I + (a − 1) v vᵀ, v = (e_1 + e_3)/√2
    baseline: float = 1.0  # |β_0|, β_0 along (1, …, 1)
    contrast: float = 2.0  # |c|, c along e_2
    student_contrast: float = 0.1  # ε: δ = w_1 − w_2 = ε c
    init_norm: float = 1e-3  # r_0 = |θ_0|
    init_alignment: float = 0.1  # α_0 = cos(θ_0, u)
    eta: float = 0.1
    steps: int = 1000
    samples: int = 1 << 15  # training sample and evaluation sample size
    seed: int = 73
    align_threshold: float = 0.99
    response: str = "sign"  # response of the reduced operator M used for the predictions
    phase: bool = True
    phase_taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)
    phase_contrasts: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
    phase_anisotropies: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    phase_samples: int = 1 << 12  # training sample of each phase-diagram run


def _check(cfg: Config) -> None:
    where = "symmetry_breaking.Config"
    check_int(cfg.d, "d", where, low=3)
    for name in ("anisotropy", "contrast", "init_norm", "eta"):
        check_float(getattr(cfg, name), name, where, 0.0, math.inf)
    for name in ("baseline", "student_contrast"):
        check_float(getattr(cfg, name), name, where)
    check_float(cfg.init_alignment, "init_alignment", where, 0.0, 1.0, high_open=False)
    check_float(cfg.align_threshold, "align_threshold", where, 0.0, 1.0)
    if cfg.response not in ("sign", "tanh"):
        fail("response", where, "one of 'sign', 'tanh'", cfg.response)
    check_int(cfg.steps, "steps", where)
    check_int(cfg.samples, "samples", where, low=2)
    check_int(cfg.phase_samples, "phase_samples", where, low=2)
    for name in ("taus", "phase_taus", "phase_contrasts", "phase_anisotropies"):
        vals = getattr(cfg, name)
        low = 0.0 if name == "phase_contrasts" else None
        if len(vals) == 0 or any(not math.isfinite(v) or (v < 0 if low == 0.0 else v <= 0) for v in vals):
            fail(name, where, "a non-empty tuple of finite numbers " + (">= 0" if low == 0.0 else "> 0"), vals)


def design(cfg: Config, anisotropy: float | None = None, student_contrast: float | None = None) -> TwoExpertGaussian:
    """The §7.3 model for ``cfg`` (optionally with another anisotropy ``a`` or student contrast ``ε``)."""
    d = cfg.d
    a = cfg.anisotropy if anisotropy is None else anisotropy
    eps = cfg.student_contrast if student_contrast is None else student_contrast
    e = torch.eye(d, dtype=DTYPE)
    v = (e[0] + e[2]) / math.sqrt(2)
    cov = e + (a - 1.0) * torch.outer(v, v)
    beta0 = cfg.baseline * torch.ones(d, dtype=DTYPE) / math.sqrt(d)
    c = cfg.contrast * e[1]
    return TwoExpertGaussian.around_shared(cov, e[0], beta0, c, eps * c)


def initial_router(cfg: Config) -> torch.Tensor:
    r""":math:`\theta_0 = r_0(\alpha_0 u + \sqrt{1-\alpha_0^2}\,z)`, z a unit vector ⟂ u drawn from ``seed``.

    Shape ``(d,)``; the same for every τ and every phase-diagram run.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn(cfg.d, generator=g, dtype=DTYPE)
    z[0] = 0.0
    z = z / z.norm()
    u = torch.zeros(cfg.d, dtype=DTYPE)
    u[0] = 1.0
    a0 = cfg.init_alignment
    return cfg.init_norm * (a0 * u + math.sqrt(1.0 - a0 * a0) * z)


def _record_steps(steps: int) -> np.ndarray:
    """Steps written to the trajectory table: every step up to 20, then ~250 log- and linearly spaced ones."""
    grid = np.concatenate([np.arange(min(steps, 20) + 1), np.geomspace(20, max(steps, 20), 150).round(),
                           np.linspace(0, steps, 101).round()])
    return np.unique(grid[grid <= steps]).astype(int)


def _evaluate(model: TwoExpertGaussian, theta: torch.Tensor, taus: torch.Tensor, n: int, seed: int):
    """Objective, boundary mass μ(|θ·X| ≤ 2τ) and mean gate entropy of each run ``theta (R, d)`` on a fresh
    sample: three :class:`Estimate` of shape ``(R,)``."""
    R = taus.numel()

    def terms(x):
        s = x @ theta.T  # (N, R)
        p = torch.sigmoid(s / taus)
        f = p * (x @ model.w1)[:, None] + (1 - p) * (x @ model.w2)[:, None]
        risk = (model.teacher(x)[:, None] - f) ** 2
        margin = top_two_margin(torch.stack([s / 2, -s / 2], dim=-1))  # Δ = |θ·x| (2.6)
        mass = (margin <= 2 * taus).to(DTYPE)
        return torch.cat([risk, mass, binary_entropy(p)], dim=1)

    est = monte_carlo(terms, model.law, n, seed)
    return [est[k * R:(k + 1) * R] for k in range(3)]


def _hit(align: torch.Tensor, threshold: float) -> list[float]:
    """First step at which each column of ``align (steps+1, R)`` reaches ``threshold`` (NaN if never)."""
    out = []
    for r in range(align.shape[1]):
        idx = torch.nonzero(align[:, r] >= threshold)
        out.append(float(idx[0]) if idx.numel() else math.nan)
    return out


def _prediction(model: TwoExpertGaussian, cfg: Config, tau: float, theta0: torch.Tensor) -> dict:
    """Reduced-model predictions at τ: spectrum of M, ρ (6.11) and the steps (6.7) needs to reach the threshold."""
    M = reduced_operator(model.cov, model.u, tau, cfg.response)
    spec = operator_spectrum(M, model.u)
    traj = linear_iteration(M, theta0, cfg.eta, cfg.steps)
    hit = _hit(alignment(traj, model.u)[:, None], cfg.align_threshold)[0]
    lin = model.linearisation(tau)
    return {"lambda_1": float(spec.values[0]), "lambda_2": float(spec.values[1]),
            "limit_alignment_predicted": float(spec.alignment[0]), "rate_predicted": alignment_rate(M, cfg.eta),
            "steps_predicted": hit, "drift_alignment": lin.drift_alignment,
            "linear_gd_factor": cfg.eta * float(lin.eigenvalues[0])}


def _tan(cos: float) -> float:
    return math.sqrt(max(1.0 - cos * cos, 1e-300)) / cos


def _phase(cfg: Config, param: str, values, theta0: torch.Tensor, progress: bool) -> Table:
    rows = []
    for val in values:
        model = design(cfg, **{param: float(val)})
        x = draw(model.law, cfg.phase_samples, cfg.seed)
        fit = train_router(model, x, theta0, cfg.phase_taus, cfg.eta, cfg.steps, progress=progress)
        hits = _hit(fit.alignment, cfg.align_threshold)
        for r, tau in enumerate(cfg.phase_taus):
            T = cfg.steps if math.isnan(hits[r]) else int(hits[r])
            a0, aT = float(fit.alignment[0, r]), float(fit.alignment[T, r])
            row = {"tau": float(tau),
                   "student_contrast": cfg.student_contrast if param == "anisotropy" else float(val),
                   "anisotropy": cfg.anisotropy if param == "student_contrast" else float(val),
                   "final_alignment": float(fit.alignment[-1, r]), "final_objective": float(fit.risk[-1, r]),
                   "router_norm": float(fit.norm[-1, r]), "steps_to_align": hits[r],
                   "rate_measured": math.log(_tan(a0) / _tan(aT)) / T if T > 0 else math.nan}
            eps = row["student_contrast"]
            row["steps_scaled"] = hits[r] * cfg.eta * eps / tau ** 2 if eps > 0 else math.nan
            row |= _prediction(model, cfg, float(tau), theta0)
            rows.append(row)
    name = "table3_phase_" + ("contrast" if param == "student_contrast" else "anisotropy")
    cols = ["tau", "student_contrast", "anisotropy", "final_alignment", "final_objective", "router_norm",
            "steps_to_align", "steps_scaled", "steps_predicted", "rate_measured", "rate_predicted",
            "limit_alignment_predicted", "drift_alignment", "lambda_1", "lambda_2", "linear_gd_factor"]
    return Table(name, cols, rows, {"varied": param, "values": list(values), "taus": list(cfg.phase_taus),
                                     "samples": cfg.phase_samples, "steps": cfg.steps, "eta": cfg.eta,
                                     "align_threshold": cfg.align_threshold, "response": cfg.response,
                                     "note": _PHASE_NOTE})


_PHASE_NOTE = ("steps_to_align: first step with |cos(θ_t, u)| >= align_threshold in router-only gradient descent "
               "(NaN: not within `steps`); steps_scaled: steps_to_align·η·ε/τ², the steps on the clock on which "
               "router-only descent is free of τ and ε to first order in ε (docs/symmetry.md); steps_predicted: "
               "the same for the linearised iteration (6.7) θ_{t+1} = (I + ηM)θ_t of the reduced operator M (6.6) "
               "from the same θ_0 (NaN: not within `steps`, e.g. when |e_1·u| < threshold); rate_measured: "
               "log(tan∠(θ_0,u)/tan∠(θ_T,u))/T with T the hitting "
               "step (or `steps`); rate_predicted: ρ (6.11) of M; limit_alignment_predicted: |e_1·u|; "
               "drift_alignment: |cos(∇L(0), u)| of the exact linearisation; linear_gd_factor: η·λ_max(∇²L(0)) "
               "(> 2: the linearised descent at θ = 0 is unstable)")


def _vec(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t]


def run(config: Config = Config(), progress: bool = False) -> Table:
    """Compute Table 3 (and ``table3_trajectory``, ``table3_phase_contrast``, ``table3_phase_anisotropy``)."""
    _check(config)
    model = design(config)
    theta0 = initial_router(config)
    taus = torch.tensor(config.taus, dtype=DTYPE)
    x = draw(model.law, config.samples, config.seed)
    fit = train_router(model, x, theta0, taus, config.eta, config.steps, progress=progress)
    risk, mass, entropy = _evaluate(model, fit.theta, taus, config.samples, config.seed + 1)
    rows, predictions, exact = [], [], []
    for r, tau in enumerate(config.taus):
        rows.append({"tau": float(tau),
                     "final_risk": float(risk.value[r]), "final_risk_stderr": float(risk.stderr[r]),
                     "final_alignment": float(fit.alignment[-1, r]), "router_norm": float(fit.norm[-1, r]),
                     "boundary_mass": float(mass.value[r]), "boundary_mass_stderr": float(mass.stderr[r]),
                     "gate_entropy": float(entropy.value[r]), "gate_entropy_stderr": float(entropy.stderr[r])})
        predictions.append({"tau": float(tau), **_prediction(model, config, float(tau), theta0),
                            "steps_to_align": _hit(fit.alignment[:, r:r + 1], config.align_threshold)[0]})
        exact.append(model.exact(fit.theta[r], float(tau)).risk)
    cols = ["tau", "final_risk", "final_risk_stderr", "final_alignment", "router_norm", "boundary_mass",
            "boundary_mass_stderr", "gate_entropy", "gate_entropy_stderr"]
    meta = {"design": {
        "d": config.d, "Sigma": model.cov.tolist(), "u": _vec(model.u), "beta0": _vec(model.beta0),
        "c": _vec(model.contrast), "anisotropy": config.anisotropy,
        "Sigma_formula": "I + (a − 1) v vᵀ, v = (e_1 + e_3)/√2",
        "student_contrast": config.student_contrast, "delta": _vec(model.w1 - model.w2),
        "w1": _vec(model.w1), "w2": _vec(model.w2), "experts": "w_1,2 = β_LS ± δ/2, β_LS = Σ⁻¹E[XY] = β_0",
        "init_norm": config.init_norm, "init_alignment": config.init_alignment, "theta0": _vec(theta0),
        "eta": config.eta, "steps": config.steps, "training_samples": config.samples,
        "training_sample": f"estimate.draw(law, {config.samples}, seed={config.seed})",
        "evaluation": f"fresh sample: estimate.monte_carlo(n={config.samples}, seed={config.seed + 1}); "
                      "final_risk, boundary_mass and gate_entropy are Monte Carlo estimates there",
        "boundary_mass": "μ(|θ·X| ≤ 2τ)", "gate_entropy": "mean binary entropy of π_1 = σ(θ·X/τ), nats",
        "seed": config.seed, "response": config.response, "align_threshold": config.align_threshold},
        "final_risk_exact": exact, "predictions": predictions,
        "theta_final": [_vec(t) for t in fit.theta]}
    table = Table("table3", cols, rows, meta)
    keep = _record_steps(config.steps)
    traj = [{"tau": float(tau), "step": int(s), "alignment_deficit": 1.0 - float(fit.alignment[s, r]),
             "risk": float(fit.risk[s, r]), "router_norm": float(fit.norm[s, r])}
            for r, tau in enumerate(config.taus) for s in keep]
    table.extras["table3_trajectory"] = Table(
        "table3_trajectory", ["tau", "step", "alignment_deficit", "risk", "router_norm"], traj,
        {"note": "risk: the training objective on the fixed sample; alignment_deficit: 1 − |cos(θ_t, u)|",
         "steps": keep.tolist()})
    if config.phase:
        table.extras["table3_phase_contrast"] = _phase(config, "student_contrast", config.phase_contrasts, theta0,
                                                       progress)
        table.extras["table3_phase_anisotropy"] = _phase(config, "anisotropy", config.phase_anisotropies, theta0,
                                                         progress)
    return table
