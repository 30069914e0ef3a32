r"""Γ-convergence evidence that can fail (Theorem 4.7, Cor. 4.4); derivations in ``docs/landscape.md``.

- :func:`uniform_gap`: :math:`\sup_{\theta\in F}|L_\tau - L_0|` over a compact family F against τ, and its exponent
  α (Cor. 4.4 predicts α = 1) **with an honest error bar**: the sup-gaps at different τ come from one shared
  sample, so their errors are almost perfectly correlated and a regression's residual scale understates the
  exponent's error many times over. The error of α here is the delta method with that covariance carried in (a
  second pass over the same draws averages the per-sample influence of α). Where the law allows it (binary linear router and experts,
  binary linear teacher, Gaussian (mixture) law) the exact gaps (:func:`softhard.closed.risk.risk_gap_exact`)
  give the exact sup-gap, its exponent and its local slopes, so the Monte Carlo exponent is judged against
  the truth.
- :func:`argmin_path`: :math:`\arg\min L_\tau` over a segment :math:`F = \{\theta_0 + t\eta : t\in[a, b]\}`,
  against :math:`\arg\min_F L_0`, the rate at which it gets there, the first-order prediction of the
  displacement where :math:`L_0` is twice differentiable at its minimiser, and a verdict by a stated rule.
- :func:`random_family`: a seeded random box around a student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_grid, check_int, check_seed, \
    check_seed_value, fail
from ..closed.risk import gap_slope_exact, is_binary_linear_gaussian, risk_exact, risk_gap_exact
from ..estimators.reducer import Estimate, monte_carlo, resolve_seed
from ..model.laws import as_law
from ..model.moe import MoE, as_teacher, hard_from, soft_from
from ..model.experts import LinearExperts
from ..model.routers import LinearRouter, UnitLinearRouter
from ..results.table import Table, loglog_fit
from .params import ParamSpace, space_of
from .shape import hard_derivatives

__all__ = ["random_family", "GammaResult", "uniform_gap", "ArgminPath", "argmin_path", "ARGMIN_RULE"]

ARGMIN_RULE = ("fails if the log-log slope of |t_tau - t_0| against tau is not positive by 3 standard errors, or if "
               "the distance at the smallest tau is not below half the one at the largest, or (where the first-order "
               "prediction exists) if the displacement at the smallest tau is off the prediction by more than 20 %")


def random_family(moe: MoE, size: int, radius: float, seed: int = 0) -> torch.Tensor:
    r"""A compact family: ``moe``'s parameters θ₀ and ``size − 1`` points of the box
    :math:`\theta_0 + [-r, r]^p` (uniform, seeded). Shape ``(size, p)``."""
    where = "random_family"
    space = space_of(moe, where)
    size = check_int(size, "size", where)
    r = check_float(radius, "radius", where, 0.0, math.inf, low_open=False)
    g = torch.Generator().manual_seed(check_seed_value(seed, where))
    box = (2 * torch.rand(size - 1, space.p, generator=g, dtype=DTYPE) - 1) * r
    v0 = space.vector()
    return torch.cat([v0[None], v0[None] + box])


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log t (NaN unless every y > 0)."""
    y = np.asarray(y, dtype=float)
    if np.any(~(y > 0)):
        return math.nan
    return float(np.polyfit(np.log(t), np.log(y), 1)[0])


def _linear_member(space: ParamSpace, v: torch.Tensor) -> MoE:
    """The member ``v`` as an MoE with a plain LinearRouter (for the closed forms)."""
    m = space.load(v)
    r, e = m.router, m.experts
    if isinstance(r, UnitLinearRouter):
        r = r.as_linear()
    elif isinstance(r, LinearRouter):
        r = LinearRouter(r.weight.detach(), r.bias.detach())
    if isinstance(e, LinearExperts):
        e = LinearExperts(e.weight.detach(), e.bias.detach())
    return MoE(r, e)


@dataclass(frozen=True)
class GammaResult:
    r"""Γ-convergence evidence on a family F (Theorem 4.7).

    Attributes:
        taus: ``(T,)``; hard: :math:`L_0` per member, Estimate ``(P,)``; gap: :math:`L_\tau - L_0`,
            Estimate ``(P, T)`` (paired on the same draws).
        sup_gap, sup_gap_stderr: :math:`\max_F |L_\tau - L_0|` and the standard error of the maximising
            entry, ``(T,)``.
        alpha, alpha_stderr: exponent of ``sup_gap`` against τ (log–log least squares on the pooled estimate)
            and its standard error by the delta method on the same draws (the covariance of the sup-gaps across τ,
            which share their draws, carried in; the maximising members held fixed).
        exact_sup_gap, alpha_exact, local_slopes_exact: the exact :math:`\max_F|L_\tau - L_0|` ``(T,)``, its
            least-squares exponent and the slopes between consecutive τ ``(T-1,)`` where the law allows it
            (binary linear members and teacher, Gaussian (mixture) law), else ``None``.
        argmin_hard, argmin_soft, excess_hard, distance: :math:`\arg\min_F L_0`, :math:`\arg\min_F L_\tau` per τ,
            :math:`L_0(\arg\min L_\tau) - \min_F L_0` and the parameter distance of the two argmins modulo
            relabelling and gauge. On a family that contains the realizable teacher (L₀ = 0 at member 0, as
            :func:`random_family` around ``teacher_student()`` does) these agree by construction and cannot
            fail: :func:`argmin_path` is the test of :math:`\arg\min L_\tau \to \arg\min L_0` that can.
    """

    taus: np.ndarray
    hard: Estimate
    gap: Estimate
    sup_gap: np.ndarray
    sup_gap_stderr: np.ndarray
    alpha: float
    alpha_stderr: float
    argmin_hard: int
    argmin_soft: np.ndarray
    excess_hard: np.ndarray
    distance: np.ndarray
    exact_sup_gap: np.ndarray | None = None
    alpha_exact: float | None = None
    local_slopes_exact: np.ndarray | None = None

    @property
    def alpha_z(self) -> float | None:
        """:math:`(\\alpha - \\alpha_{exact})/\\mathrm{se}` where the exact exponent is known."""
        if self.alpha_exact is None or not self.alpha_stderr > 0:
            return None
        return (self.alpha - self.alpha_exact) / self.alpha_stderr

    def table(self, name: str = "landscape_gamma") -> Table:
        ex = self.exact_sup_gap if self.exact_sup_gap is not None else [None] * len(self.taus)
        rows = [{"tau": float(t), "sup_gap": float(s), "sup_gap_stderr": float(se),
                 "exact_sup_gap": None if e is None else float(e), "argmin_soft": int(a),
                 "argmin_hard": self.argmin_hard, "excess_hard_risk": float(x), "argmin_distance": float(dd)}
                for t, s, se, e, a, x, dd in zip(self.taus, self.sup_gap, self.sup_gap_stderr, ex, self.argmin_soft,
                                                 self.excess_hard, self.distance)]
        meta = {"alpha": self.alpha, "alpha_stderr": self.alpha_stderr,
                "alpha_stderr_method": "delta method over the shared draws (maximisers fixed)",
                "alpha_exact": self.alpha_exact, "alpha_z": self.alpha_z,
                "local_slopes_exact": None if self.local_slopes_exact is None else self.local_slopes_exact.tolist(),
                "family_size": int(np.shape(self.hard.value)[0]), "n": self.gap.n, "seed": self.gap.seed}
        return Table(name, list(rows[0]), rows, meta)


def uniform_gap(moe: MoE, teacher, law, family, taus, *, n: int = 1 << 17, seed=0, method: str = "mc",
                progress: bool = False) -> GammaResult:
    r"""Uniform soft–hard gap over a compact family, its exponent with an honest error, and the exact exponent
    where the law allows it (Theorem 4.7, Cor. 4.4).

    .. math:: \sup_{\theta\in F} |L_\tau(\theta) - L_0(\theta)| \le C\tau^\alpha, \qquad
              L_\tau - L_0 = E[(f^*-f_\tau)^2 - (f^*-f_0)^2]

    estimated for every member and τ from the same draws (paired, one reducer). α is the least-squares slope of
    :math:`\log\sup|\cdot|` against :math:`\log\tau`, :math:`\hat\alpha = \sum_q c_q\log|\hat G_{i_q q}|` with
    :math:`c_q = (\log\tau_q - \overline{\log\tau})/\sum(\log\tau - \overline{\log\tau})^2` and :math:`i_q` the
    maximising member at :math:`\tau_q`. Its standard error is the delta method with the covariance of the
    sup-gaps across τ carried in: a second pass over **the same draws** averages the per-sample influence
    :math:`\sum_q c_q\,t_{i_q q}(X)/\hat G_{i_q q}` (t: the per-sample gap terms), whose standard error is that of
    :math:`\hat\alpha` (the maximisers held fixed). A fit's residual scale is not an error bar here: the sup-gaps
    share their draws, so their errors move together (it understated the error 4–13 times). Measured over 16 seeds
    on the binary problem (``scripts/gamma_seeds.py``, ``docs/landscape.md``): the stated errors are slightly
    conservative against the spread around the exact exponent (RMS z 0.66–0.83, largest |z| 1.46; holding the
    maximisers fixed errs on the safe side at near-ties).
    With binary linear members and teacher under a Gaussian (mixture) law, the exact gaps are computed too
    (:attr:`GammaResult.alpha_exact`, local slopes).

    Args:
        moe: template student; family: flat parameter vectors ``(P, p)`` (:func:`random_family`).
        teacher, law: the problem; taus: ``(T,)`` temperatures (at least 3 for the fit).
        n, seed, method: the Monte Carlo stream (``"mc"`` or ``"qmc"``).
    """
    where = "uniform_gap"
    space = space_of(moe, where)
    teacher = as_teacher(teacher, space.moe, where)
    fam = as_tensor(family, "family", where, dtype=DTYPE)
    if fam.ndim != 2 or fam.shape[0] < 1 or fam.shape[1] != space.p:
        fail("family", where, f"an array of shape (P, {space.p}) with P >= 1", f"shape {tuple(fam.shape)}")
    check_finite(fam, "family", where)
    t = check_grid(taus, "taus", where, low=0.0, low_open=True)
    if len(set(t.tolist())) < 3:
        fail("taus", where, "at least 3 distinct temperatures for the exponent fit", t)
    law = as_law(law, where, space.moe.d)
    if not isinstance(method, str) or method not in ("mc", "qmc"):
        fail("method", where, "one of 'mc', 'qmc'", method)
    n = check_int(n, "n", where)
    check_seed(seed, where)
    seed = resolve_seed(seed, where)
    with torch.no_grad():  # a member whose model overflows would only surface as NaN terms deep in the reducer
        probe = law.sample(64, torch.Generator().manual_seed(0))
        for i, v in enumerate(fam):
            if not all(bool(torch.isfinite(z).all()) for z in space.forward(v, probe)):
                fail("family", where, "parameter vectors at which the model's logits and outputs are finite",
                     f"member {i} gives non-finite values")
    P, T = len(fam), len(t)

    def gap_terms(x, v, taus_):
        fs = teacher.signal(x)
        a, h = space.forward(v, x)
        r0 = (fs - hard_from(a, h)) ** 2
        return r0, (fs[:, None] - soft_from(a, h, taus_)) ** 2 - r0[:, None]

    def terms(x):
        cols = []
        for v in fam:
            r0, gp = gap_terms(x, v, t)
            cols += [r0[:, None] + teacher.noise_std ** 2, gp]
        return torch.cat(cols, 1)

    est = monte_carlo(terms, law, n, seed, method=method, progress=progress, desc="uniform gap")
    val, se = np.asarray(est.value).reshape(P, T + 1), np.asarray(est.stderr).reshape(P, T + 1)
    hard = Estimate(val[:, 0], se[:, 0], est.n, est.method, est.seed)
    gap = Estimate(val[:, 1:], se[:, 1:], est.n, est.method, est.seed)
    cols = np.arange(T)
    top = np.argmax(np.abs(gap.value), axis=0)
    sup, sup_se = np.abs(gap.value)[top, cols], gap.stderr[top, cols]
    tt = t.numpy()
    alpha = _slope(tt, sup)
    lx = np.log(tt)
    c = (lx - lx.mean()) / np.sum((lx - lx.mean()) ** 2)
    weights = torch.as_tensor(c / gap.value[top, cols], dtype=DTYPE)

    def influence(x):
        out = torch.zeros(len(x), dtype=DTYPE)
        for i in np.unique(top):
            qs = np.flatnonzero(top == i)
            _, gp = gap_terms(x, fam[i], t[qs])
            out = out + gp @ weights[qs]
        return out[:, None]

    alpha_se = float(np.asarray(monte_carlo(influence, law, n, seed, method=method, progress=progress,
                                            desc="uniform gap: exponent error").stderr).ravel()[0])
    exact = exact_alpha = slopes = None
    members = [_linear_member(space, v) for v in fam]
    if all(is_binary_linear_gaussian(m, law, teacher) for m in members):
        ex = np.stack([risk_gap_exact(m, law, tt, teacher) for m in members])  # (P, T)
        exact = np.abs(ex).max(0)
        exact_alpha = _slope(tt, exact)
        slopes = np.diff(np.log(exact)) / np.diff(np.log(tt))
    soft = hard.value[:, None] + gap.value
    i0, isoft = int(np.argmin(hard.value)), np.argmin(soft, axis=0)
    return GammaResult(tt, hard, gap, sup, sup_se, alpha, alpha_se, i0, isoft, hard.value[isoft] - hard.value[i0],
                       np.array([space.distance(fam[i0], fam[j]) for j in isoft]), exact, exact_alpha, slopes)


# ------------------------------------------------------------------------------------------------
# argmin over a segment


@dataclass(frozen=True)
class ArgminPath:
    r"""Where :math:`\arg\min L_\tau` lies on a segment :math:`\{\theta_0 + t\eta : t \in [a, b]\}`, against τ.

    Attributes:
        taus: ``(T,)`` decreasing; span: ``(a, b)``; eta_norm: :math:`|\eta|`.
        t_soft: :math:`t_\tau = \arg\min_t L_\tau` ``(T,)``; t_hard: :math:`t_0 = \arg\min_t L_0`.
        distance: :math:`|t_\tau - t_0|\,|\eta|` ``(T,)``; excess_hard: :math:`L_0(t_\tau) - L_0(t_0)` ``(T,)``.
        rate, rate_stderr: the log–log slope of ``distance`` against τ and the fit's standard error (the values
            are exact; the error measures how far the points are from a power law).
        predicted: the first-order displacement :math:`t_\tau - t_0 \approx -\tau\,G_1'(t_0)/L_0''(t_0)` ``(T,)``
            where :math:`L_0` is twice differentiable at an interior :math:`t_0` (else ``None``, with the reason in
            ``prediction_note``); curvature: :math:`L_0''(t_0)` (exact, :func:`hard_derivatives`); g1_slope:
            :math:`G_1'(t_0)` (central difference of the exact :math:`G_1`, step :math:`10^{-4}(b - a)`).
        converges, reasons: the verdict of :data:`ARGMIN_RULE` and what failed.
    """

    taus: np.ndarray
    span: tuple[float, float]
    eta_norm: float
    t_soft: np.ndarray
    t_hard: float
    distance: np.ndarray
    excess_hard: np.ndarray
    rate: float
    rate_stderr: float
    predicted: np.ndarray | None
    prediction_note: str
    curvature: float | None
    g1_slope: float | None
    converges: bool
    reasons: tuple[str, ...]

    def table(self, name: str = "landscape_argmin") -> Table:
        pred = self.predicted if self.predicted is not None else [None] * len(self.taus)
        rows = [{"tau": float(t), "t_soft": float(ts), "t_hard": self.t_hard, "displacement": float(ts - self.t_hard),
                 "predicted_displacement": None if p is None else float(p), "distance": float(d),
                 "excess_hard_risk": float(e)}
                for t, ts, d, e, p in zip(self.taus, self.t_soft, self.distance, self.excess_hard, pred)]
        meta = {"rate": self.rate, "rate_stderr": self.rate_stderr, "span": list(self.span),
                "eta_norm": self.eta_norm, "curvature": self.curvature, "g1_slope": self.g1_slope,
                "prediction_note": self.prediction_note, "converges": self.converges, "reasons": list(self.reasons),
                "rule": ARGMIN_RULE, "method": "exact"}
        return Table(name, list(rows[0]), rows, meta)


def _refine(f, grid: np.ndarray, values: np.ndarray) -> float:
    """Minimise ``f`` on [grid[0], grid[-1]] starting from the grid's minimum (bounded Brent on its bracket)."""
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12 * (grid[-1] - grid[0]), "maxiter": 200})
    return float(res.x) if res.fun <= values[i] else float(grid[i])


def argmin_path(moe: MoE, teacher, law, direction, taus, *, span=(-1.0, 1.0), grid: int = 41) -> ArgminPath:
    r"""Γ-convergence of minimisers on a segment of parameters (Theorem 4.7), with a rule that can fail.

    On :math:`F = \{\theta_0 + t\eta : t\in[a, b]\}` (θ₀: ``moe``'s parameters), Theorem 4.7 says
    :math:`t_\tau = \arg\min_F L_\tau \to t_0 = \arg\min_F L_0`. Where :math:`L_0` is twice differentiable at an
    interior :math:`t_0` (student interfaces transverse to the teacher's) and :math:`L_\tau = L_0 + \tau G_1 +
    O(\tau^2)` with its derivatives (Assumption 5.13 with :math:`\omega(\tau) = O(\tau)`),

    .. math:: t_\tau - t_0 = -\tau\,\frac{G_1'(t_0)}{L_0''(t_0)} + O(\tau^2),

    with :math:`G_1` the first-order gap constant (:func:`softhard.closed.risk.gap_slope_exact`) and
    :math:`L_0'' = \eta^\top\nabla^2L_0\,\eta` (:func:`softhard.dynamics.shape.hard_derivatives`). At a kink of
    :math:`L_0` (a realizable teacher, the interface on the teacher's) there is no such prediction and the rate
    is measured only. Verdict (:data:`ARGMIN_RULE`): the evidence fails if the log–log slope of the distance
    against τ is not positive by 3 standard errors, if the distance at the smallest τ is not below half the one
    at the largest, or if the displacement at the smallest τ is off the prediction by more than 20 % (+ 3 SE,
    zero here: the values are exact).

    Exact: binary linear members and teacher under a Gaussian (mixture) law; :math:`L_\tau` and :math:`L_0` by
    :func:`softhard.closed.risk.risk_exact` (1-d quadrature, relative 1e-12), minimised by bounded Brent from a
    ``grid``-point scan (a minimiser between grid points is found; two minima closer than the grid step may be
    confused). Other models: :func:`minima_path` follows the full minimiser on a sample instead (the argmin of a
    sample's piecewise-constant :math:`L_0` has cube-root sampling error, too coarse for a rate).

    Args:
        moe: the student at :math:`\theta_0`; teacher, law: the problem.
        direction: η, a flat vector ``(p,)`` in :class:`~softhard.dynamics.params.ParamSpace` order, or an MoE
            like ``moe`` (then η = its parameters − θ₀).
        taus: ``(T,)`` temperatures (at least 3); span: ``(a, b)`` with a < b; grid: scan points (>= 5).
    """
    where = "argmin_path"
    space = space_of(moe, where)
    teacher = as_teacher(teacher, space.moe, where)
    law = as_law(law, where, space.moe.d)
    v0 = space.vector()
    if isinstance(direction, MoE):
        if ParamSpace(direction).names != space.names:
            fail("direction", where, "an MoE with the parameters of moe, or a vector", "a different MoE", TypeError)
        eta = space.vector(direction) - v0
    else:
        eta = as_tensor(direction, "direction", where, dtype=DTYPE)
        if eta.shape != (space.p,):
            fail("direction", where, f"a vector of shape ({space.p},) or an MoE like moe", f"shape {tuple(eta.shape)}")
    check_finite(eta, "direction", where)
    norm = float(torch.linalg.norm(eta))
    if not norm > 0:
        fail("direction", where, "a nonzero vector", "zero")
    t = np.sort(check_grid(taus, "taus", where, low=0.0, low_open=True).numpy())[::-1].copy()
    if len(set(t.tolist())) < 3:
        fail("taus", where, "at least 3 distinct temperatures for the rate fit", t)
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        fail("span", where, "a pair (a, b) with a < b", span)
    a, b = (check_float(s, "span", where, -math.inf, math.inf) for s in span)
    if not a < b:
        fail("span", where, "a pair (a, b) with a < b", span)
    grid = check_int(grid, "grid", where, low=5)

    def member(s: float) -> torch.Tensor:
        return v0 + s * eta

    if not all(is_binary_linear_gaussian(_linear_member(space, member(s)), law, teacher) for s in (a, b)):
        fail("moe", where, "a binary linear student (LinearRouter or UnitLinearRouter, LinearExperts) with a binary "
             "linear teacher and a Gaussian (mixture) law (exact risks; use minima_path otherwise)",
             f"{type(space.moe.router).__name__} with {type(space.moe.experts).__name__}", TypeError)

    def risks(s, taus_=t):
        return risk_exact(_linear_member(space, member(s)), law, taus_, teacher)

    ts = np.linspace(a, b, grid)
    scan = [risks(s) for s in ts]
    soft = np.stack([r[0] for r in scan])  # (grid, T)
    hard = np.array([r[1] for r in scan])
    L0 = lambda s: float(risks(s, t[:1])[1])  # noqa: E731
    t0 = _refine(L0, ts, hard)
    t_soft = np.array([_refine(lambda s, q=q: float(risks(s, t[q:q + 1])[0][0]), ts, soft[:, q])
                       for q in range(len(t))])
    excess = np.array([L0(s) for s in t_soft]) - L0(t0)
    dist = np.abs(t_soft - t0) * norm
    if np.all(dist > 0):
        fit = loglog_fit(t, dist)
        rate, rate_se = fit["slope"], fit["slope_stderr"]
    else:
        rate, rate_se = math.nan, math.nan
    predicted, note, curv, g1s = None, "", None, None
    edge = 0.02 * (b - a)
    if not a + edge < t0 < b - edge:
        note = "argmin L_0 is on (or next to) an end of the segment"
    else:
        try:
            _, H = hard_derivatives(space.load(member(t0)), teacher, law)
            curv = float(eta.numpy() @ H @ eta.numpy())
        except ValueError as e:
            note = f"L_0 is not twice differentiable at t_0: {e}"
        if curv is not None and curv > 0:
            h = 1e-4 * (b - a)
            g1 = [gap_slope_exact(_linear_member(space, member(t0 + s)), law, teacher) for s in (-h, h)]
            g1s = (g1[1] - g1[0]) / (2 * h)
            predicted = -t * g1s / curv
            note = "first order: t_tau - t_0 = -tau G_1'(t_0) / L_0''(t_0)"
        elif curv is not None:
            note = f"L_0''(t_0) = {curv:.3g} is not positive"
    reasons = []
    if not rate - 3 * rate_se > 0:
        reasons.append(f"the distance does not shrink with tau: rate {rate:.3g} ± {rate_se:.2g}")
    if not dist[-1] < 0.5 * dist[0]:
        reasons.append(f"the distance at tau={t[-1]:g} ({dist[-1]:.3g}) is not below half the one at tau={t[0]:g} "
                       f"({dist[0]:.3g})")
    if predicted is not None and not abs((t_soft[-1] - t0) - predicted[-1]) <= 0.2 * abs(predicted[-1]):
        reasons.append(f"the displacement at tau={t[-1]:g} is {t_soft[-1] - t0:.4g}, the first-order prediction "
                       f"{predicted[-1]:.4g}")
    return ArgminPath(t, (a, b), norm, t_soft, float(t0), dist, excess, float(rate), float(rate_se), predicted, note,
                      curv, g1s, not reasons, tuple(reasons))
