r"""§7.3 Reduced symmetry-breaking diagnostic (Table 3, Figure 3), plus a phase diagram [beyond].

Design (paper.md §6, 7.3; derivations in ``docs/symmetry.md``):

- :math:`X \sim N(0, \Sigma)` on ℝ^d, teacher separator :math:`u = e_1`, baseline
  :math:`\beta_0 = b\,(1,\dots,1)/\sqrt d`, contrast c (noiseless). Two named variants (``variant``):

  * ``"isotropic"`` (default): Σ = I and :math:`c = e_1 + 2e_2`, so :math:`c_u = c\cdot u = 1 \ne 0` —
    the hypothesis of Prop. 6.3. The paper's printed Table 3 is consistent with an isotropic law along the
    router: its boundary-mass and entropy columns are the isotropic closed forms at its router norms
    (entropy within 0.6 %; mass within 0.5 % for τ ≤ 0.2 and 1.2 % at τ = 0.4 — 0.163 printed against
    0.1650: more than 3-digit rounding explains, about one standard error of a 2¹⁵-draw estimate, ±0.0021;
    the paper does not print its sample size), and this design shows the transient the paper describes
    (|cos| ≈ 0.8 after one step, 0.99 after a few to a hundred steps, more for larger τ).
  * ``"anisotropic"``: :math:`\Sigma = I + (a-1)vv^\top`, :math:`v = (e_1 + e_3)/\sqrt2`, a = 3, and
    :math:`c = 2e_2 \perp u` (the earlier default). Here :math:`c_u = 0`: Prop. 6.3's hypothesis fails, M = 0,
    and the reduced model's predictions are left out (with that reason in the metadata). Its first step
    points along Σu (|cos| = 0.894), then the router rotates to u.

  ``anisotropy`` and ``contrast`` (the components of c along e_1 = u and e_2) override the variant's values.
- students fixed at contrast :math:`\delta = \varepsilon c` around the best shared linear predictor
  :math:`\beta_{LS} = \beta_0`: :math:`w_{1,2} = \beta_0 \pm \delta/2`; only the router θ is trained, by
  full-batch gradient descent (step η, ``steps`` steps) on one fixed sample ``draw(law, samples, seed)``.
- θ starts near balance, :math:`\theta_0 = r_0(\alpha_0 u + \sqrt{1-\alpha_0^2}\,z)` with a fixed random unit
  :math:`z \perp u` (from ``seed``), the same sample and :math:`\theta_0` for every τ.
- columns: final objective on a fresh evaluation sample (``monte_carlo`` with seed ``seed + 1``, ``samples``
  draws), alignment :math:`|\cos(\theta, u)|`, :math:`|\theta|`, boundary mass :math:`\mu(|\theta\cdot X| \le 2\tau)`
  and mean binary gate entropy (nats) on the same evaluation sample; then the transient: alignment after
  step 1 and the first step with :math:`|\cos(\theta_t, u)| \ge` ``align_threshold``.

Predictions printed beside the run (``meta["predictions"]``) are the ones that apply to the design: the
first step from the exact gradient at θ_0 (population) and the direction of the balanced drift; the reduced
operator's limit direction when :math:`c_u \ne 0`. The reduced model's rate ρ (6.11) and its step count
(6.7) are not printed beside Table 3: they describe growth from an unstable balanced router, while with
fixed experts the balanced router is stable (:math:`\nabla^2L(0) \succeq 0`) and is left through the drift
:math:`-\nabla L(0)`, which (6.6) does not contain (``docs/symmetry.md`` §4, §8). The phase diagram keeps them
as columns, to show that.

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
from ..closed.balance import contrast_on_separator
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

__all__ = ["Config", "VARIANTS", "run", "design", "initial_router"]


# the named designs: (anisotropy a of Σ = I + (a − 1)vvᵀ, components of c along e_1 = u and e_2)
VARIANTS: dict[str, tuple[float, tuple[float, float]]] = {
    "isotropic": (1.0, (1.0, 2.0)),  # Σ = I, c = e_1 + 2e_2: c_u = 1 (Prop. 6.3's hypothesis holds)
    "anisotropic": (3.0, (0.0, 2.0)),  # Σ = I + 2vvᵀ, c = 2e_2 ⟂ u: c_u = 0 (it fails)
}


@dataclass(frozen=True)
class Config:
    """Design values of §7.3 (and of the phase diagram); ``samples`` and ``seed`` fix every Monte Carlo column.

    ``variant`` names the design (:data:`VARIANTS`); ``anisotropy`` and ``contrast`` (c's components along
    e_1 = u and e_2), when given, override it.
    """

    taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    variant: str = "isotropic"
    d: int = 8
    anisotropy: float | None = None  # a: Σ = I + (a − 1) v vᵀ, v = (e_1 + e_3)/√2 (None: the variant's)
    contrast: tuple[float, float] | None = None  # c = c_1 e_1 + c_2 e_2 (None: the variant's)
    baseline: float = 1.0  # |β_0|, β_0 along (1, …, 1)
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
    if cfg.variant not in VARIANTS:
        fail("variant", where, f"one of {sorted(VARIANTS)}", cfg.variant)
    check_int(cfg.d, "d", where, low=3)
    for name in ("init_norm", "eta"):
        check_float(getattr(cfg, name), name, where, 0.0, math.inf)
    if cfg.anisotropy is not None:
        check_float(cfg.anisotropy, "anisotropy", where, 0.0, math.inf)
    if cfg.contrast is not None and (len(cfg.contrast) != 2 or not all(math.isfinite(v) for v in cfg.contrast)
                                     or not any(cfg.contrast)):
        fail("contrast", where, "a pair (c_1, c_2) of finite numbers, not both 0 (c = c_1 e_1 + c_2 e_2)",
             cfg.contrast)
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


def _values(cfg: Config) -> tuple[float, tuple[float, float]]:
    """``(a, (c_1, c_2))`` of ``cfg``: its variant's, overridden by ``anisotropy``/``contrast`` when given."""
    a, c = VARIANTS[cfg.variant]
    return (a if cfg.anisotropy is None else float(cfg.anisotropy),
            c if cfg.contrast is None else tuple(float(v) for v in cfg.contrast))


def design(cfg: Config, anisotropy: float | None = None, student_contrast: float | None = None) -> TwoExpertGaussian:
    """The §7.3 model for ``cfg`` (optionally with another anisotropy ``a`` or student contrast ``ε``)."""
    d = cfg.d
    a, (c1, c2) = _values(cfg)
    a = a if anisotropy is None else anisotropy
    eps = cfg.student_contrast if student_contrast is None else student_contrast
    e = torch.eye(d, dtype=DTYPE)
    v = (e[0] + e[2]) / math.sqrt(2)
    cov = e + (a - 1.0) * torch.outer(v, v)
    beta0 = cfg.baseline * torch.ones(d, dtype=DTYPE) / math.sqrt(d)
    c = c1 * e[0] + c2 * e[1]
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


def _hit(align: torch.Tensor, threshold: float) -> list[int | None]:
    """First step at which each column of ``align (steps+1, R)`` reaches ``threshold`` (None if never)."""
    out = []
    for r in range(align.shape[1]):
        idx = torch.nonzero(align[:, r] >= threshold)
        out.append(int(idx[0]) if idx.numel() else None)
    return out


def _reduced(model: TwoExpertGaussian, cfg: Config, tau: float, theta0: torch.Tensor) -> dict:
    """The reduced model at τ (needs c_u ≠ 0): spectrum of M, its limit direction's alignment |e_1·u|, ρ (6.11)
    and the steps (6.7) needs from θ_0 to reach the threshold (None: not within ``steps``)."""
    M = reduced_operator(model.cov, model.u, model.contrast, tau, cfg.response)
    spec = operator_spectrum(M, model.u)
    traj = linear_iteration(M, theta0, cfg.eta, cfg.steps)
    return {"lambda_1": float(spec.values[0]), "lambda_2": float(spec.values[1]),
            "limit_alignment_predicted": float(spec.alignment[0]), "rate_predicted": alignment_rate(M, cfg.eta),
            "steps_predicted": _hit(alignment(traj, model.u)[:, None], cfg.align_threshold)[0]}


_NO_REDUCED = {"lambda_1": None, "lambda_2": None, "limit_alignment_predicted": None, "rate_predicted": None,
               "steps_predicted": None}
_HYPOTHESIS_FAILS = ("left out: Prop. 6.3's hypothesis c_u ≠ 0 fails (the teacher contrast is orthogonal to the "
                     "separator), so the reduced operator M (6.6) is 0 and predicts no growth, rate or limit direction")


def _c_u(model: TwoExpertGaussian) -> float:
    return contrast_on_separator(model.contrast, model.u)


def _linearisation(model: TwoExpertGaussian, cfg: Config, tau: float) -> dict:
    """What the exact linearisation at θ = 0 says: the drift direction and η·λ_max(∇²L(0))."""
    lin = model.linearisation(tau)
    return {"drift_alignment": lin.drift_alignment, "linear_gd_factor": cfg.eta * float(lin.eigenvalues[0])}


def _rate(align: torch.Tensor, T: int) -> float | None:
    """Measured alignment rate after the first (drift) step: log(tan∠(θ_1, u)/tan∠(θ_T, u))/(T − 1)."""
    if T < 2:
        return None
    tan = lambda c: math.sqrt(max(1.0 - c * c, 1e-300)) / c  # noqa: E731
    return math.log(tan(float(align[1])) / tan(float(align[T]))) / (T - 1)


def _phase(cfg: Config, param: str, values, theta0: torch.Tensor, progress: bool) -> Table:
    rows = []
    for val in values:
        model = design(cfg, **{param: float(val)})
        x = draw(model.law, cfg.phase_samples, cfg.seed)
        fit = train_router(model, x, theta0, cfg.phase_taus, cfg.eta, cfg.steps, progress=progress)
        hits = _hit(fit.alignment, cfg.align_threshold)
        for r, tau in enumerate(cfg.phase_taus):
            T = cfg.steps if hits[r] is None else hits[r]
            row = {"tau": float(tau),
                   "student_contrast": cfg.student_contrast if param == "anisotropy" else float(val),
                   "anisotropy": _values(cfg)[0] if param == "student_contrast" else float(val),
                   "final_alignment": float(fit.alignment[-1, r]), "final_objective": float(fit.risk[-1, r]),
                   "router_norm": float(fit.norm[-1, r]), "alignment_step1": float(fit.alignment[min(1, cfg.steps), r]),
                   "steps_to_align": hits[r], "rate_measured": _rate(fit.alignment[:, r], T)}
            eps = row["student_contrast"]
            row["steps_scaled"] = hits[r] * cfg.eta * eps / tau ** 2 if eps > 0 and hits[r] is not None else None
            row |= _reduced(model, cfg, float(tau), theta0) if _c_u(model) != 0.0 else dict(_NO_REDUCED)
            row |= _linearisation(model, cfg, float(tau))
            rows.append(row)
    name = "table3_phase_" + ("contrast" if param == "student_contrast" else "anisotropy")
    cols = ["tau", "student_contrast", "anisotropy", "final_alignment", "final_objective", "router_norm",
            "alignment_step1", "steps_to_align", "steps_scaled", "steps_predicted", "rate_measured", "rate_predicted",
            "limit_alignment_predicted", "drift_alignment", "lambda_1", "lambda_2", "linear_gd_factor"]
    c_u = _c_u(design(cfg))
    return Table(name, cols, rows, {"varied": param, "values": list(values), "taus": list(cfg.phase_taus),
                                     "variant": cfg.variant, "c": _vec(design(cfg).contrast), "c_u": c_u,
                                     "samples": cfg.phase_samples, "steps": cfg.steps, "eta": cfg.eta,
                                     "align_threshold": cfg.align_threshold, "response": cfg.response,
                                     "note": _PHASE_NOTE, "reduced_model": "columns lambda_1 … steps_predicted "
                                     + ("are the reduced model's (6.6)–(6.11), for comparison" if c_u != 0.0
                                        else "are null: " + _HYPOTHESIS_FAILS)})


_PHASE_NOTE = ("steps_to_align: first step with |cos(θ_t, u)| >= align_threshold in router-only gradient descent "
               "(null: not within `steps`); alignment_step1: |cos(θ_1, u)|; steps_scaled: steps_to_align·η·ε/τ², "
               "the steps on the clock on which router-only descent is free of τ and ε to first order in ε "
               "(docs/symmetry.md §7); rate_measured: log(tan∠(θ_1,u)/tan∠(θ_T,u))/(T − 1) with T the hitting step "
               "(or `steps`), the rate after the first (drift) step (null for T < 2). Reduced model (6.6)–(6.11), "
               "which has neither the student contrast ε nor the drift −∇L(0): steps_predicted: steps of "
               "θ_{t+1} = (I + ηM)θ_t from the same θ_0 (null: not within `steps`, e.g. when |e_1·u| < threshold); "
               "rate_predicted: ρ (6.11) of M, which does not depend on ε — compare it with rate_measured at fixed ε "
               "only (the anisotropy grid); limit_alignment_predicted: |e_1·u|, the direction of (6.7), which the "
               "nonlinear descent does not keep once |θ| is not small. Exact linearisation at θ = 0: "
               "drift_alignment: |cos(∇L(0), u)|; linear_gd_factor: η·λ_max(∇²L(0)) (> 2: the linearised descent "
               "at θ = 0 is unstable)")

_RATE_LEFT_OUT = ("the reduced model's rate ρ (6.11) and step count (6.7) are left out of Table 3: (6.7) is growth "
                  "from an unstable balanced router, but with fixed experts ∇²L(0) ⪰ 0 (the balanced router is "
                  "stable) and the router leaves balance through the drift −∇L(0), which (6.6) does not contain; the "
                  "measured steps follow the clock τ²/(ηε) of docs/symmetry.md §7 (see steps_scaled), while ρ grows "
                  "like 1/τ and does not depend on ε. The phase tables keep both for comparison")


def _vec(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t]


def run(config: Config = Config(), progress: bool = False) -> Table:
    """Compute Table 3 (and ``table3_trajectory``, ``table3_phase_contrast``, ``table3_phase_anisotropy``)."""
    _check(config)
    model = design(config)
    c_u = _c_u(model)
    theta0 = initial_router(config)
    taus = torch.tensor(config.taus, dtype=DTYPE)
    x = draw(model.law, config.samples, config.seed)
    fit = train_router(model, x, theta0, taus, config.eta, config.steps, progress=progress)
    risk, mass, entropy = _evaluate(model, fit.theta, taus, config.samples, config.seed + 1)
    hits = _hit(fit.alignment, config.align_threshold)
    first = min(1, config.steps)
    rows, predictions, exact = [], [], []
    for r, tau in enumerate(config.taus):
        rows.append({"tau": float(tau),
                     "final_risk": float(risk.value[r]), "final_risk_stderr": float(risk.stderr[r]),
                     "final_alignment": float(fit.alignment[-1, r]), "router_norm": float(fit.norm[-1, r]),
                     "boundary_mass": float(mass.value[r]), "boundary_mass_stderr": float(mass.stderr[r]),
                     "gate_entropy": float(entropy.value[r]), "gate_entropy_stderr": float(entropy.stderr[r]),
                     "alignment_step1": float(fit.alignment[first, r]), "steps_to_align": hits[r]})
        step1 = theta0 - config.eta * model.exact(theta0, float(tau)).gradient  # the first step on the population
        pred = {"tau": float(tau), "alignment_step1": float(fit.alignment[first, r]),
                "alignment_step1_population": float(alignment(step1, model.u)), **_linearisation(model, config, tau),
                "steps_to_align": hits[r],
                "steps_scaled": (hits[r] * config.eta * config.student_contrast / tau ** 2
                                 if hits[r] is not None and config.student_contrast > 0 else None),
                "final_alignment": float(fit.alignment[-1, r])}
        if c_u != 0.0:
            red = _reduced(model, config, float(tau), theta0)
            pred |= {k: red[k] for k in ("lambda_1", "lambda_2", "limit_alignment_predicted")}
        predictions.append(pred)
        exact.append(model.exact(fit.theta[r], float(tau)).risk)
    cols = ["tau", "final_risk", "final_risk_stderr", "final_alignment", "router_norm", "boundary_mass",
            "boundary_mass_stderr", "gate_entropy", "gate_entropy_stderr", "alignment_step1", "steps_to_align"]
    a, (c1, c2) = _values(config)
    meta = {"design": {
        "variant": config.variant, "d": config.d, "Sigma": model.cov.tolist(), "u": _vec(model.u),
        "beta0": _vec(model.beta0), "c": _vec(model.contrast), "c_u": c_u, "anisotropy": a,
        "Sigma_formula": "I + (a − 1) v vᵀ, v = (e_1 + e_3)/√2", "c_formula": f"{c1:g}·e_1 + {c2:g}·e_2",
        "student_contrast": config.student_contrast, "delta": _vec(model.w1 - model.w2),
        "w1": _vec(model.w1), "w2": _vec(model.w2), "experts": "w_1,2 = β_LS ± δ/2, β_LS = Σ⁻¹E[XY] = β_0",
        "init_norm": config.init_norm, "init_alignment": config.init_alignment, "theta0": _vec(theta0),
        "eta": config.eta, "steps": config.steps, "training_samples": config.samples,
        "training_sample": f"estimate.draw(law, {config.samples}, seed={config.seed})",
        "evaluation": f"fresh sample: estimate.monte_carlo(n={config.samples}, seed={config.seed + 1}); "
                      "final_risk, boundary_mass and gate_entropy are Monte Carlo estimates there",
        "boundary_mass": "μ(|θ·X| ≤ 2τ)", "gate_entropy": "mean binary entropy of π_1 = σ(θ·X/τ), nats",
        "alignment_step1": "|cos(θ_1, u)| after one step of descent on the training sample",
        "steps_to_align": f"first step with |cos(θ_t, u)| ≥ {config.align_threshold:g} (null: not within `steps`)",
        "seed": config.seed, "response": config.response, "align_threshold": config.align_threshold},
        "final_risk_exact": exact, "predictions": predictions,
        "predictions_note": (
            "alignment_step1_population: |cos(θ_0 − η∇L(θ_0), u)| with the exact gradient (docs/symmetry.md §3), "
            "the first step on the population (alignment_step1 differs from it by the sampling noise of the "
            "training sample); drift_alignment: |cos(∇L(0), u)|, its limit for θ_0 → 0; steps_scaled: "
            "steps_to_align·η·ε/τ² (docs/symmetry.md §7). "
            + ("limit_alignment_predicted: |e_1·u| of the reduced operator M (6.6) with c_u = "
               f"{c_u:g} (Prop. 6.3's hypothesis holds), the direction the linearised iteration (6.7) ends in; "
               + _RATE_LEFT_OUT if c_u != 0.0 else "reduced model: " + _HYPOTHESIS_FAILS)),
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
