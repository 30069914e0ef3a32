r"""Boundary closed forms of a linear router under a Gaussian (mixture) law: the coarea constant
ψ_ij(0) (3.14), the boundary-mass profiles β and β_pair (3.11 and its K-expert extension [beyond]), the
surface constant C_Σ of Prop. 3.5, and flip probabilities between two routers.

Every form works on the router's score differences :math:`g_{ij} = (w_i - w_j)\cdot x + (b_i - b_j)`, formed
in input space (a difference of two rows is exact in floating point) and mapped through the law's one float64
factor (:func:`~softhard.closed.normal.contrast_law`); no logit covariance :math:`WSW^\top` is formed, so a score
along a small-variance direction of an ill-conditioned law keeps its digits. Probabilities are
:func:`~softhard.closed.normal.box_probability` (tail-accurate, with a true error bound); every result comes with
that bound. Exact paths are priced (:func:`boundary_mass_seconds` and friends: the number of box probabilities
and their dimension), show a progress bar when long, and refuse a run predicted to exceed ``max_seconds``.

Derivations: ``docs/gaussian_closed_forms.md``. Each is checked against Monte Carlo and mpmath in the tests.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_float, check_grid, fail
from ..model.laws import Gaussian
from ..model.routers import LinearRouter, check_pair
from .normal import (ABSEPS, ROUNDING, ContrastLaw, box_probability, combined_bound, contrast_law, covariance_factor,
                     row_differences,
                     finite_mass, gaussian_components, interval_mass, linear_moments, log_interval_mass, log_phi,
                     to_numpy)

__all__ = ["PAIRWISE_MAX_K", "MAX_SECONDS", "RELEPS", "pair_score", "pair_density_at_zero", "pair_density",
           "pair_density_closed", "pair_densities_closed", "pair_densities_seconds", "boundary_mass_exact",
           "boundary_mass_closed", "boundary_mass_seconds", "min_pair_sd", "interface_constant_exact",
           "interface_constant_closed", "interface_constant_seconds", "flip_probability_exact",
           "flip_probability_seconds", "box_seconds", "ExactRun"]

PAIRWISE_MAX_K = 6  # kind="pairwise" sums K! orthant probabilities
MAX_SECONDS = 3600.0  # an exact path predicted to run longer is refused (keyword max_seconds overrides)
PROGRESS_AFTER = 10.0  # seconds: an exact path predicted to run longer shows a progress bar
RELEPS = 1e-6  # relative accuracy asked of each randomised box probability where relative accuracy is the point
PILOT_POINTS = 1 << 14  # points of a randomised band's first pass (the coarea form allocates accuracy after it)
COMPLEMENT_ABOVE = 0.01  # top-two β by its complement form where a rough β (4096 draws) is at least this
ROUGH_DRAWS = 4096


def pair_score(router: LinearRouter, pair=(0, 1)):
    r"""The linear score :math:`g_{ij}(x) = v\cdot x + c` of a linear router: ``(v (d,), c)`` (3.1)."""
    if not isinstance(router, LinearRouter):
        fail("router", "pair_score", "a LinearRouter for a closed form", type(router).__name__, TypeError)
    i, j = check_pair(pair, router.num_experts, "pair_score")
    return router.weight[i] - router.weight[j], float(router.bias[i] - router.bias[j])


def _linear_router(router, where: str) -> LinearRouter:
    if not isinstance(router, LinearRouter):
        fail("router", where, "a LinearRouter (the closed form needs logits linear in x)", type(router).__name__,
             TypeError)
    return router


def _components(router, law, where: str) -> list[tuple[float, Gaussian]]:
    comps = gaussian_components(law, where)
    if router.d != law.d:
        fail("law", where, f"a law on R^{router.d} (the router's input dimension)", f"a law on R^{law.d}")
    return comps


class _Contrasts:
    r"""The score differences :math:`a_i - a_j` of a linear router under one Gaussian component: rows formed in
    input space (``W[i] - W[j]``), then mapped through the law's factor once for all the rows needed."""

    def __init__(self, router: LinearRouter, comp: Gaussian, pairs):
        W, b = to_numpy(router.weight), to_numpy(router.bias)
        self.index = {p: n for n, p in enumerate(pairs)}
        D, D_lo = row_differences(W, pairs)
        c, c_lo = row_differences(b[:, None], pairs)
        self.law: ContrastLaw = contrast_law(D, c[:, 0], comp, D_lo, c_lo[:, 0])
        F = to_numpy(comp.factor)
        self.scale = np.linalg.norm(D, axis=1) * float(np.linalg.norm(F))  # each row's input-space scale

    def rows(self, signed_pairs):
        """``(mean, factor, scale, rel_error)`` of the contrasts :math:`a_i - a_j` for ``[(i, j), ...]``."""
        idx, sgn = [], []
        for i, j in signed_pairs:
            if (i, j) in self.index:
                idx.append(self.index[(i, j)])
                sgn.append(1.0)
            else:
                idx.append(self.index[(j, i)])
                sgn.append(-1.0)
        s = np.array(sgn)
        L = self.law
        return L.mean[idx] * s, L.factor[idx] * s[:, None], self.scale[idx], L.rel_error[idx]


def _all_pairs(K: int):
    return list(itertools.combinations(range(K), 2))


def pair_density_at_zero(router: LinearRouter, law, pair=(0, 1)) -> float:
    r"""Coarea constant :math:`\psi_{ij}(0)` (3.8), exact: the density of :math:`g_{ij}(X)` at 0 (3.14).

    .. math:: \psi_{ij}(0) = \sum_c \omega_c\, \varphi(m_{g,c}/s_c)/s_c, \qquad s_c = |F_c^\top (w_i - w_j)|

    for a linear router and a Gaussian (``C = 1``) or Gaussian-mixture law. A density below the float64 range
    raises :class:`~softhard.closed.normal.MassUnderflow` (it is not 0).
    """
    where = "pair_density_at_zero"
    router = _linear_router(router, where)
    return pair_densities_closed(router, law, [check_pair(pair, router.num_experts, where)], where)[0]


def pair_density(router: LinearRouter, law, levels, pair=(0, 1)) -> np.ndarray:
    r"""Level-set profile :math:`\psi_{ij}(s)` (3.8), exact, on a grid of levels s: the density of
    :math:`g_{ij}(X)` at s (coarea formula, Lemma 3.6),

    .. math:: \psi_{ij}(s) = \int_{\{g_{ij} = s\}} \frac{p}{|\nabla g_{ij}|}\,dH^{d-1}
              = \sum_c \omega_c\, \varphi\big((s - m_{g,c})/s_c\big)/s_c, \qquad s_c = |F_c^\top (w_i - w_j)|

    for a linear router and a Gaussian (mixture) law (:math:`\psi_{ij}(0)` is :func:`pair_density_at_zero`); the
    score's law is read through each component's factor (:func:`~softhard.closed.normal.contrast_law`) and the
    components are summed in log space. ``levels`` shape ``(S,)``; returns ``(S,)``. A density below the float64
    range raises :class:`~softhard.closed.normal.MassUnderflow` (it is not 0).
    """
    return pair_density_closed(router, law, levels, pair)[0]


def pair_density_closed(router, law, levels, pair=(0, 1), where: str = "pair_density") -> tuple[np.ndarray, np.ndarray]:
    r"""``(ψ_ij(s) (S,), absolute error bound (S,))`` of :func:`pair_density`; the bound is rounding, first order
    through each component's score standard deviation, :math:`\psi\,(10^{-12} + 4\rho(1 + z^2))`."""
    router = _linear_router(router, where)
    pair = check_pair(pair, router.num_experts, where)
    t = to_numpy(levels).astype(np.float64).reshape(-1)
    logs, err = [], np.zeros_like(t)
    for w, comp in _components(router, law, where):
        con = _Contrasts(router, comp, [pair])
        s, m = float(con.law.sd[0]), float(con.law.mean[0])
        if s == 0.0:
            fail("router", where, "a score g_ij with non-degenerate law (vᵀSv > 0)", f"pair {pair} with vᵀSv = 0")
        z = (t - m) / s
        lp = (math.log(w) if w > 0 else -math.inf) + log_phi(z) - math.log(s)
        logs.append(lp)
        err += np.exp(lp) * (ROUNDING + 4.0 * float(con.law.rel_error[0]) * (1.0 + (2.0 + np.abs(z)) ** 2))
    log_total = np.logaddexp.reduce(np.stack(logs), axis=0)
    total = finite_mass(np.exp(log_total), log_total, where, "the density of a score difference")
    return total, err


def pair_densities_closed(router, law, pairs, where: str = "pair_density_at_zero") -> tuple[float, float]:
    r"""``(Σ ψ_ij(0) over pairs, absolute error bound)``: one pass of the contrast rows for all pairs; the bound is
    rounding, first order through each score's standard deviation, :math:`\psi\,(10^{-12} + 4\rho(1 + z^2))`."""
    router = _linear_router(router, where)
    logs, total, err = [], 0.0, 0.0
    for w, comp in _components(router, law, where):
        con = _Contrasts(router, comp, list(pairs))
        for n, (i, j) in enumerate(pairs):
            s, m = float(con.law.sd[n]), float(con.law.mean[n])
            if s == 0.0:
                fail("router", where, "a score g_ij with non-degenerate law (vᵀSv > 0)", f"pair {(i, j)} with vᵀSv = 0")
            lp = float(log_phi(m / s)) - math.log(s)
            logs.append(math.log(w) + lp if w > 0 else -math.inf)
            psi = w * math.exp(lp)
            total += psi
            err += psi * (ROUNDING + 4.0 * float(con.law.rel_error[n]) * (1.0 + (2.0 + abs(m / s)) ** 2))
    top = max(logs)
    log_total = top + math.log(sum(math.exp(x - top) for x in logs)) if top > -math.inf else -math.inf
    finite_mass(total, log_total, where, "the density of a score difference at 0")
    return float(total), float(err)


def pair_densities_seconds(router, law, pairs: int) -> float:
    """Predicted seconds of :func:`pair_densities_closed` for ``pairs`` pairs (the contrast rows)."""
    return sum(_setup_seconds(pairs, c.d) for _, c in gaussian_components(law, "pair_densities_seconds"))


def _differences(K: int, order) -> list[tuple[int, int]]:
    """Pairs ``(order[r], order[r+1])``: consecutive differences along ``order``."""
    return [(order[r], order[r + 1]) for r in range(len(order) - 1)]


def _winner_pairs(K: int, k: int) -> list[tuple[int, int]]:
    """Pairs ``(k, j)`` for ``j != k``: expert k leads every other."""
    return [(k, j) for j in range(K) if j != k]


def _pair_rows(K: int, i: int, j: int) -> list[tuple[int, int]]:
    r"""The rows of "i and j are the top two": :math:`a_i - a_j` first, then :math:`a_i - a_k`, :math:`a_j - a_k`
    for k ∉ {i, j}."""
    others = [k for k in range(K) if k not in (i, j)]
    return [(i, j)] + [(i, k) for k in others] + [(j, k) for k in others]


# ------------------------------------------------------------------------------------------------- pricing

# Seconds of one box probability by its number of levels (rank), measured by benchmarks/tail_accuracy.py
# --cases cost on this machine (2 shared cores): 1 level an interval, 2 levels a 1-d quadrature, 3 or more the
# randomised lattice rule to abseps 1e-6 (boundary_mass exact for K = 4..7 ran within 10 % of these prices).
_BOX_SECONDS = {0: 5e-5, 1: 2e-4, 2: 2.5e-3}


def box_seconds(levels: int) -> float:
    """Predicted seconds of one :func:`~softhard.closed.normal.box_probability` with this many levels."""
    if levels <= 2:
        return _BOX_SECONDS[max(levels, 0)]
    return 0.12 * levels * 1.6 ** (levels - 3)


def _setup_seconds(pairs: int, d: int) -> float:
    """Forming the contrast rows (pairs × d) through the factor (d × d): 1 ns per multiply-add, plus 1 ms."""
    return 1e-3 + 1e-9 * pairs * d * d


def _rank(router, comp) -> int:
    return min(comp.d, router.num_experts - 1)


def _rough_beta(router, comp, widths) -> np.ndarray:
    r"""A rough β(w) ``(W,)`` from 4096 draws of the logits (fixed seed; only to choose a form): the complement
    form's absolute error ``abseps`` is relatively small only where β is not."""
    M, C = (to_numpy(t) for t in linear_moments(router.weight, router.bias, comp))
    z = np.random.default_rng(0).standard_normal((ROUGH_DRAWS, len(M)))
    a = np.sort(M + z @ covariance_factor(C).T, axis=1)
    gap = a[:, -1] - a[:, -2]
    return (gap[:, None] <= np.asarray(widths, float)[None, :]).mean(0)


def _top2_forms(router, comp, widths) -> list[str]:
    """The form of each width: "coarea" (each interface's top-two band, no cancellation) or "complement" (where
    β is at least 0.01, so that ``abseps`` is at most 1e-4 of it)."""
    rough = _rough_beta(router, comp, widths)
    return ["complement" if w > 0 and b >= COMPLEMENT_ABOVE else "coarea" for w, b in zip(widths, rough)]


def boundary_mass_seconds(router, law, widths, kind: str = "top2") -> float:
    """Predicted seconds of :func:`boundary_mass_closed`: the contrast rows, then per width and component the
    box probabilities of its form (``K(K-1)/2`` interface bands, ``K`` winners, or ``K!`` orderings) priced by
    :func:`box_seconds` at their rank ``min(d, K - 1)``."""
    K = router.num_experts
    w = to_numpy(widths).ravel()
    if K == 2:
        return 1e-4 * max(len(w), 1)
    total = 0.0
    for _, comp in gaussian_components(law, "boundary_mass_seconds"):
        r = _rank(router, comp)
        total += _setup_seconds(K * (K - 1) // 2, comp.d)
        if kind == "pairwise":
            total += len(w) * math.factorial(K) * box_seconds(r)
            continue
        narrow = 0.05 * min_pair_sd(linear_moments(router.weight, router.bias, comp)[1]) if r == 3 else -1.0
        for wq, form in zip(w, _top2_forms(router, comp, w)):
            if form == "complement":
                total += K * box_seconds(r)
            else:  # a rank-3 band narrow on the score's scale: 8 two-level quadratures (exact, no sampling)
                total += K * (K - 1) / 2 * (8 * box_seconds(2) if wq <= narrow else box_seconds(r))
    return total


def interface_constant_seconds(router, law) -> float:
    """Predicted seconds of :func:`interface_constant_closed`: ``K(K-1)/2`` conditional orthants of rank
    ``min(d, K - 1) - 1``."""
    K = router.num_experts
    return sum(_setup_seconds(K * (K - 1) // 2, c.d) + K * (K - 1) / 2 * box_seconds(_rank(router, c) - 1)
               for _, c in gaussian_components(law, "interface_constant_seconds"))


def flip_probability_seconds(router, other, law) -> float:
    """Predicted seconds of :func:`flip_probability_exact`: K orthants of rank ``min(d, 2(K-1))``."""
    K = router.num_experts
    return sum(_setup_seconds(K * (K - 1), c.d) + K * box_seconds(min(c.d, 2 * (K - 1)))
               for _, c in gaussian_components(law, "flip_probability_seconds"))


@dataclass
class ExactRun:
    """A long exact computation's guard: refuses to start when ``seconds`` (predicted) exceeds ``max_seconds``
    (a ``ValueError`` naming the predicted time), and shows a tqdm bar over its ``total`` box probabilities when
    ``progress`` is True, or None and the prediction exceeds :data:`PROGRESS_AFTER` seconds."""

    where: str
    seconds: float
    total: int
    max_seconds: float | None = MAX_SECONDS
    progress: bool | None = None

    def __post_init__(self):
        cap = MAX_SECONDS if self.max_seconds is None else check_float(self.max_seconds, "max_seconds", self.where,
                                                                       0.0, math.inf, high_open=False)
        if self.seconds > cap:
            fail("max_seconds", self.where, f"at least the predicted time of this exact computation, "
                 f"{_duration(self.seconds)} ({self.total} Gaussian box probabilities); pass max_seconds="
                 f"{math.ceil(self.seconds)} (or more) to run it anyway, or use a sampling method",
                 self.max_seconds if self.max_seconds is not None else cap)
        show = self.progress if self.progress is not None else self.seconds > PROGRESS_AFTER
        self.bar = None
        if show and self.total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=f"{self.where} (exact, ~{_duration(self.seconds)})",
                            unit="box", leave=False)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


# ----------------------------------------------------------------------------------------------- β(w)


def boundary_mass_exact(router, law, widths, kind: str = "top2", *, abseps: float = ABSEPS, releps: float = RELEPS,
                        max_seconds: float | None = MAX_SECONDS, progress: bool | None = None) -> np.ndarray:
    r"""Boundary-mass profile of a linear router under a Gaussian (mixture) law, without sampling.

    Binary router (3.11): with :math:`g = a_1 - a_2 \sim N(m_g, s^2)`,

    .. math:: \beta(w) = \Phi\Big(\frac{w - m_g}{s}\Big) - \Phi\Big(\frac{-w - m_g}{s}\Big),

    in the tail-accurate form of :func:`~softhard.closed.normal.log_interval_mass` (relative error ~1e-13 down
    to 1e-300; below the float64 range :class:`~softhard.closed.normal.MassUnderflow`).

    K experts [beyond], logits :math:`A = WX + b`. **Coarea form** (a sum over the interfaces, as in the coarea formula): :math:`\Delta \le w` holds iff the top two
    experts i, j are within w, and the top two are a.s. unique, so

    .. math:: \beta(w) = \sum_{i<j} P\big(|a_i - a_j| \le w,\ \ a_i > a_k,\ a_j > a_k\ \ \forall k \ne i, j\big),

    a sum of positive Gaussian box probabilities (one two-sided row and 2(K−2) one-sided ones, rank
    ``min(d, K-1)``): no cancellation, so it is accurate relative to β in the tails (each term to ``RELEPS``
    = 1e-6 relative, or exactly to rounding at rank ≤ 2). **Complement form**, used where β is at least 0.01 by a
    rough estimate from 4096 draws of the logits (the complement is then cheaper and its absolute accuracy at most
    1e-4 of β):
    :math:`\Delta > w` iff one expert leads every other by more than w, and at most one can, so
    :math:`1 - \beta(w) = \sum_k P(a_k - a_j > w\ \forall j \ne k)`, each to ``abseps/√K`` absolutely (their errors add in quadrature).
    Pairwise profile (2.14): :math:`\delta > w` iff the sorted logits are w-separated, one ordering σ is strict,
    :math:`1 - \beta_{pair}(w) = \sum_{\sigma} P(a_{\sigma(r)} - a_{\sigma(r+1)} > w,\ r < K)`, K! box
    probabilities (K ≤ 6), to ``abseps/K!`` each (absolute accuracy: in its tails ask the top-two profile, or
    sample). Mixtures: the weighted sum over components. A singular law (d < K − 1, identical rows) is handled.

    The bound on the absolute error of each value is returned by :func:`boundary_mass_closed`
    (``Estimate.error_bound`` of ``boundary_mass(method="exact")``); it covers rounding (first order, through the
    relative error of each score's standard deviation) and the randomised integration (7 standard errors of 16
    scramblings).

    Args:
        router: a :class:`~softhard.model.routers.LinearRouter` (weight ``(K, d)``).
        law: a :class:`~softhard.model.laws.Gaussian` or :class:`~softhard.model.laws.GaussianMixture` on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` (β, (2.13)) or ``"pairwise"`` (β_pair, (2.14)).
        abseps: absolute accuracy asked where a form is absolute (complement, pairwise).
        releps: relative accuracy asked of each randomised term of the coarea form (default 1e-6).
        max_seconds: refuse (``ValueError`` with the predicted time) a computation predicted to run longer
            (:func:`boundary_mass_seconds`); default one hour.
        progress: show a progress bar (``None``: when predicted to run over 10 s).

    Returns:
        ``numpy`` array of shape ``(W,)``.
    """
    return boundary_mass_closed(router, law, widths, kind, abseps, "boundary_mass_exact", max_seconds=max_seconds,
                                progress=progress, releps=releps)[0]


def _binary_mass(law: ContrastLaw, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(β, log β, bound)`` of a binary router's one score (rows of ``law``: one)."""
    m_g, s = float(law.mean[0]), float(law.sd[0])
    if s == 0.0:
        v = (abs(m_g) <= w).astype(float)
        return v, np.log(np.maximum(v, 0.0), where=v > 0, out=np.full_like(v, -np.inf)), np.zeros_like(v)
    lv = np.asarray(log_interval_mass((-w - m_g) / s, (w - m_g) / s), float)
    v = np.exp(lv)
    depth = 2.0 + np.sqrt(np.maximum(-2.0 * np.where(np.isfinite(lv), lv, 0.0), 0.0))
    return v, lv, v * (ROUNDING + 4.0 * float(law.rel_error[0]) * (1.0 + depth ** 2))


def boundary_mass_closed(router, law, widths, kind: str = "top2", abseps: float = ABSEPS,
                         where: str = "boundary_mass_exact", *, max_seconds: float | None = MAX_SECONDS,
                         progress: bool | None = None,
                         releps: float = RELEPS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(β (W,), absolute error bounds (W,), form per width)`` of :func:`boundary_mass_exact`."""
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    w = to_numpy(check_grid(widths, "widths", where, low=0.0))
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    releps = check_float(releps, "releps", where, 0.0, 0.1, high_open=False)
    K = router.num_experts
    if kind not in ("top2", "pairwise"):
        fail("kind", where, "one of ('top2', 'pairwise')", kind)
    if kind == "pairwise" and K > PAIRWISE_MAX_K:
        fail("kind", where, f"'top2' for K > {PAIRWISE_MAX_K} experts (the pairwise form sums K! orthant "
             "probabilities)", kind)
    logs = np.full((len(comps), len(w)), -np.inf)
    out, bound = np.zeros_like(w), np.zeros_like(w)
    forms = ["binary (3.11)"] * len(w)
    if K == 2:
        for c, (weight, comp) in enumerate(comps):
            v, lv, e = _binary_mass(_Contrasts(router, comp, [(0, 1)]).law, w)
            out += weight * v
            bound += weight * e
            logs[c] = np.log(weight) + lv if weight > 0 else -np.inf
        return _finish(out, bound, logs, forms, where)
    plan = [(weight, comp, _top2_forms(router, comp, w) if kind == "top2" else ["pairwise"] * len(w))
            for weight, comp in comps]
    jobs = sum(len(_jobs(K, kind, f)) for _, _, fs in plan for f in fs)
    run = ExactRun(where, boundary_mass_seconds(router, law, w, kind), jobs, max_seconds, progress)
    try:
        for c, (weight, comp, fs) in enumerate(plan):
            con = _Contrasts(router, comp, _all_pairs(K))
            for q, (wq, form) in enumerate(zip(w, fs)):
                forms[q] = form
                v, lv, e = _profile_point(con, K, float(wq), form, abseps, releps, run)
                out[q] += weight * v
                bound[q] += weight * e
                logs[c, q] = math.log(weight) + lv if weight > 0 else -np.inf
    finally:
        run.close()
    return _finish(out, bound, logs, forms, where)


def _finish(out, bound, logs, forms, where):
    top = logs.max(0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        log_total = np.where(top > -np.inf, top + np.log(np.exp(logs - np.where(top > -np.inf, top, 0.0)).sum(0)),
                             -np.inf)
    finite_mass(out, log_total, where, "a boundary mass β(w)")
    return np.clip(out, 0.0, 1.0), bound, forms


def _jobs(K: int, kind: str, form: str):
    if kind == "pairwise":
        return [_differences(K, order) for order in itertools.permutations(range(K))]
    if form == "complement":
        return [_winner_pairs(K, k) for k in range(K)]
    return [_pair_rows(K, i, j) for i, j in _all_pairs(K)]


def _profile_point(con: _Contrasts, K: int, w: float, form: str, abseps: float, releps: float, run: ExactRun):
    """``(value, log value, bound)`` of β(w) (or β_pair) for one component."""
    jobs = _jobs(K, "pairwise" if form == "pairwise" else "top2", form)
    if form == "coarea":
        # two passes: every band with a small budget of points, then the randomised ones whose bound exceeds their
        # share of releps·β refined to that share (a band negligible beside β needs no relative accuracy of its own)
        args = []
        for rows in jobs:
            m, F, scale, rho = con.rows(rows)
            lo, hi = np.zeros(len(rows)), np.full(len(rows), np.inf)
            lo[0], hi[0] = -w, w
            closed = np.zeros(len(rows), bool)
            closed[0] = True
            args.append((m, F, lo, hi, closed, scale, rho))
        probs = [box_probability(m, F, lo, hi, cl, abseps=0.0, releps=releps, row_scale=sc, row_error=rh, seed=n,
                                 max_points=PILOT_POINTS) for n, (m, F, lo, hi, cl, sc, rh) in enumerate(args)]
        sampled = [n for n, p in enumerate(probs) if p.method == "sov"]
        share = releps * sum(p.value for p in probs) / math.sqrt(max(len(sampled), 1))
        for n in sampled:
            if probs[n].bound > share:
                m, F, lo, hi, cl, sc, rh = args[n]
                probs[n] = box_probability(m, F, lo, hi, cl, abseps=share, releps=releps, row_scale=sc,
                                           row_error=rh, seed=n)
        run.step(len(jobs))
        logs = [p.log for p in probs]
        top = max(logs)
        lv = top + math.log(sum(math.exp(x - top) for x in logs)) if top > -math.inf else -math.inf
        return float(sum(p.value for p in probs)), lv, combined_bound(probs)
    probs = []
    for n, rows in enumerate(jobs):
        m, F, scale, rho = con.rows(rows)
        probs.append(box_probability(m, F, w, None, abseps=abseps / math.sqrt(len(jobs)), row_scale=scale,
                                     row_error=rho, seed=n))
        run.step()
    v = max(1.0 - sum(p.value for p in probs), 0.0)
    return v, (math.log(v) if v > 0 else -math.inf), combined_bound(probs) + ROUNDING


def min_pair_sd(C) -> float:
    """The smallest standard deviation of a score difference :math:`a_i - a_j` for logits of covariance ``C (K, K)``."""
    C = to_numpy(C)
    pairs = itertools.combinations(range(len(C)), 2)
    return min(math.sqrt(max(C[i, i] + C[j, j] - 2 * C[i, j], 0.0)) for i, j in pairs)


# ------------------------------------------------------------------------------------------------- C_Σ


def interface_constant_closed(router, law, abseps: float = ABSEPS, where: str = "interface_constant_exact", *,
                              max_seconds: float | None = MAX_SECONDS, progress: bool | None = None,
                              releps: float = RELEPS) -> tuple[float, float]:
    """``(C_Σ, absolute error bound)`` of :func:`interface_constant_exact`."""
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    K = router.num_experts
    run = ExactRun(where, interface_constant_seconds(router, law), len(comps) * K * (K - 1) // 2, max_seconds,
                   progress)
    terms, logs, err = [], [], 0.0
    try:
        for weight, comp in comps:
            con = _Contrasts(router, comp, _all_pairs(K))
            for i, j in _all_pairs(K):
                m, F, scale, rho = con.rows(_pair_rows(K, i, j))
                s = float(np.linalg.norm(F[0]))
                if s == 0.0:
                    fail("router", where, "a router whose score differences g_ij have non-degenerate laws "
                         "(vᵀSv > 0)", f"pair {(i, j)} with vᵀSv = 0")
                lpsi = float(log_phi(m[0] / s)) - math.log(s)
                psi = math.exp(lpsi)
                if K > 2:
                    # condition on g_ij = 0: z = -m_g a/|a|² + z', z' ⟂ a; the rows a_i - a_k (k ∉ {i, j})
                    a = F[0] / s
                    rows = slice(1, K - 1)
                    Fr = F[rows] - np.outer(F[rows] @ a, a)
                    mr = m[rows] - (F[rows] @ a) * (m[0] / s)
                    p = box_probability(mr, Fr, 0.0, None, abseps=0.0, releps=releps, row_scale=scale[rows],
                                        row_error=rho[rows])
                    run.step()
                    pv, pl, pe = p.value, p.log, p.bound
                else:
                    pv, pl, pe = 1.0, 0.0, 0.0
                depth = 2.0 + abs(m[0] / s)
                rel = ROUNDING + 4.0 * float(rho[0]) * (1.0 + depth ** 2)
                terms.append(weight * psi * pv)
                logs.append(math.log(weight) + lpsi + pl if weight > 0 and pl > -math.inf else -math.inf)
                err += weight * (psi * pe + psi * pv * rel)
    finally:
        run.close()
    top = max(logs)
    lv = top + math.log(sum(math.exp(x - top) for x in logs)) if top > -math.inf else -math.inf
    total = float(sum(terms))
    finite_mass(total, lv, where, "the surface constant C_Σ")
    return total, err


def interface_constant_exact(router, law, *, abseps: float = ABSEPS, max_seconds: float | None = MAX_SECONDS,
                             progress: bool | None = None) -> float:
    r"""The surface constant :math:`C_\Sigma = \sum_{i<j} \int_{\Gamma_{ij}} p/|\nabla g_{ij}|\, dH^{d-1}` [beyond].

    :math:`\Gamma_{ij}` is the part of the surface :math:`\{g_{ij} = 0\}` on which i and j are the top
    two, so :math:`\beta(w) = 2w\,C_\Sigma + o(w)` (Prop. 3.5; for K = 2, :math:`C_\Sigma = \psi(0)`,
    (3.14)). By the coarea formula, for a linear router and a Gaussian component,

    .. math:: \int_{\Gamma_{ij}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \psi_{ij}(0)\; P\big(a_i - a_k > 0\ \ \forall k \ne i, j \;\big|\; g_{ij}(X) = 0\big),

    a (K−2)-row orthant probability of the conditional law, computed by projecting the contrast rows
    orthogonally to :math:`g_{ij}`'s row in the factor's space (no conditional covariance is formed), to
    ``RELEPS`` relative (exact to rounding at rank ≤ 2). Mixtures: the weighted sum over components.
    :func:`interface_constant_closed` returns the error bound.
    """
    return interface_constant_closed(router, law, abseps, max_seconds=max_seconds, progress=progress)[0]


# ----------------------------------------------------------------------------------------------- flips


def flip_probability_exact(router, other, law, *, abseps: float = ABSEPS, max_seconds: float | None = MAX_SECONDS,
                           progress: bool | None = None) -> float:
    r"""Probability that two linear routers pick different hard winners (2.9) under a Gaussian (mixture) law.

    With logits :math:`A = W x + b`, :math:`A' = W' x + b'` (jointly Gaussian),

    .. math:: P(k^*(X) \ne k'^*(X)) = 1 - \sum_k P\big(A_k \succ A_j,\ A'_k \succ A'_j\ \ \forall j \ne k\big),

    a sum of K box probabilities of 2(K−1) rows, where :math:`\succ` is ``>`` for ``j < k`` and ``≥`` for
    ``j > k`` (the lowest index wins a tie; this matters only for logits that tie identically), each to
    ``abseps/K`` absolutely. Binary routers: two rows (exact to rounding).
    """
    where = "flip_probability_exact"
    router = _linear_router(router, where)
    if not isinstance(other, LinearRouter):
        fail("other", where, "a LinearRouter (the closed form needs logits linear in x)", type(other).__name__,
             TypeError)
    if (other.num_experts, other.d) != (router.num_experts, router.d):
        fail("other", where, f"a LinearRouter with {router.num_experts} experts on R^{router.d} like router",
             f"{other.num_experts} experts on R^{other.d}")
    comps = _components(router, law, where)
    K = router.num_experts
    W = np.concatenate([to_numpy(router.weight), to_numpy(other.weight)])
    b = np.concatenate([to_numpy(router.bias), to_numpy(other.bias)])
    run = ExactRun(where, flip_probability_seconds(router, other, law), len(comps) * K, max_seconds, progress)
    same = 0.0
    try:
        for weight, comp in comps:
            F = to_numpy(comp.factor)
            for k in range(K):
                js = [j for j in range(K) if j != k]
                pairs = [(k, j) for j in js] + [(K + k, K + j) for j in js]
                D, D_lo = row_differences(W, pairs)
                c, c_lo = row_differences(b[:, None], pairs)
                con = contrast_law(D, c[:, 0], comp, D_lo, c_lo[:, 0])
                scale = np.linalg.norm(D, axis=1) * float(np.linalg.norm(F))
                closed = np.tile([j > k for j in js], 2)
                p = box_probability(con.mean, con.factor, 0.0, None, closed, abseps=abseps / K, row_scale=scale,
                                    row_error=con.rel_error)
                same += weight * p.value
                run.step()
    finally:
        run.close()
    return float(min(max(1.0 - same, 0.0), 1.0))

