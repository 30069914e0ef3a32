r"""Theorem 4.5 and computable certificates for the soft–hard gap; the margin-tail fit (Assumption 4.2).

The proof of Theorem 4.5 runs through the exact identity (:math:`E[\xi \mid X] = 0`)

.. math:: L_\tau - L_0 = E\big[(f_0 - f_\tau)(2f^* - f_\tau - f_0)\big]

and Lemma 4.1, :math:`|f_\tau - f_0| \le \max_k |h_k - h_{k^*}|\,(1 - \pi^\tau_{k^*})` with
:math:`1 - \pi^\tau_{k^*} \le \min(1, \sum_{j\ge2} e^{-(a_{(1)} - a_{(j)})/\tau})`. Four bounds, from the
coarsest to the sharpest:

- :func:`theorem45_constant`: :math:`|L_\tau - L_0| \le C\tau^\alpha`,
  :math:`C = 4B_h(B_Y + B_h)(K-1)C_\Delta\Gamma(\alpha+1)`;
- :func:`gap_certificate`: :math:`4B_h(B_Y + B_h)\,E[\min(1, \sum_{j\ge2} e^{-(a_{(1)}-a_{(j)})/\tau})]`;
- :func:`local_gap_certificate` (no bounds B needed, so it applies to unbounded linear experts under a
  Gaussian law): :math:`E\big[R(X)\; 2\max_k|h_k - f^*|(X)\; \min(1, \sum_{j\ge2} e^{-(a_{(1)}-a_{(j)})/\tau})\big]`
  with :math:`R = \max_k |h_k - h_{k^*}|` — the same chain of inequalities taken pointwise
  (:math:`|2f^* - f_\tau - f_0| \le |f^* - f_\tau| + |f^* - f_0| \le 2\max_k |h_k - f^*|`, as
  :math:`f_\tau, f_0` are convex combinations of the :math:`h_k`);
- :func:`cauchy_schwarz_bound`: :math:`\sqrt{E(f_\tau - f_0)^2}\,\sqrt{E(2f^* - f_\tau - f_0)^2}`; it is
  an equality for a realizable teacher (:math:`f^* = f_0`).

Here :math:`B_Y` bounds :math:`|f^*| = |E[Y \mid X]|` (enough for the identity above) and :math:`B_h`
bounds :math:`|h_k|`; :func:`gap_certificate` checks both on its sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import check_float, check_grid, check_int, fail
from ..closed.boundary import pair_score
from ..closed.normal import gaussian_components, phi, score_law
from ..estimators.reducer import Estimate, sample_mean
from ..estimators.registry import Call, Quantity
from ..model.gates import tail_sum
from ..model.moe import hard_from, soft_from
from .mass import EPS_2TAU
from .door import finish, is_linear_gaussian, moe_call, temperature_grid

__all__ = ["theorem45_constant", "gap_certificate", "local_gap_certificate", "cauchy_schwarz_bound",
           "margin_slope_constant", "corollary44_bound", "lemma57_constant", "GAP_CERTIFICATE",
           "LOCAL_GAP_CERTIFICATE", "CAUCHY_SCHWARZ_BOUND"]

GAP_CERTIFICATE = Quantity("gap_certificate")
LOCAL_GAP_CERTIFICATE = Quantity("local_gap_certificate")
CAUCHY_SCHWARZ_BOUND = Quantity("cauchy_schwarz_bound")


def theorem45_constant(C_delta: float, alpha: float, B_Y: float, B_h: float, K: int) -> float:
    r"""The constant of Theorem 4.5, :math:`|L_\tau - L_0| \le C\tau^\alpha`:

    .. math:: C = 4 B_h (B_Y + B_h)(K - 1)\, C_\Delta\, \Gamma(\alpha + 1),

    from :math:`E[(K-1)e^{-\Delta/\tau}] = (K-1)\int_0^\infty \tau^{-1}e^{-t/\tau}\mu(\Delta \le t)\,dt
    \le (K-1)C_\Delta\Gamma(\alpha+1)\tau^\alpha` under Assumption 4.2 :math:`\mu(\Delta \le t) \le C_\Delta t^\alpha`
    (for all t > 0; with a tail bound on :math:`(0, t_0]` only, add :math:`(K-1)e^{-t_0/\tau}`) and
    Assumption 4.3 (:math:`|Y| \le B_Y`, :math:`|h_k| \le B_h`).
    """
    where = "theorem45_constant"
    C_delta = check_float(C_delta, "C_delta", where, 0.0, math.inf, low_open=False)
    alpha = check_float(alpha, "alpha", where, 0.0, math.inf)
    B_Y = check_float(B_Y, "B_Y", where, 0.0, math.inf, low_open=False)
    B_h = check_float(B_h, "B_h", where, 0.0, math.inf, low_open=False)
    K = check_int(K, "K", where, low=2)
    try:
        return 4 * B_h * (B_Y + B_h) * (K - 1) * C_delta * math.gamma(alpha + 1)
    except OverflowError:
        fail("alpha", where, "small enough for Γ(α + 1) to be finite (α < 171)", alpha)


def _lemma41(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r""":math:`\min(1, \sum_{j\ge2} e^{-(a_{(1)}-a_{(j)})/\tau})`, shape ``(N, T)``."""
    return torch.stack([tail_sum(a, float(tau)).clamp(max=1.0) for tau in t], dim=-1)


def _bound(quantity: Quantity, where: str, moe, law, taus, teacher, method, n, seed, target_rel_error, sampling,
           **options) -> Estimate:
    method = quantity.check_method(method, where)
    t, scalar = temperature_grid(taus, where)
    call = moe_call(where, moe, law, t, teacher, n, seed, target_rel_error, sampling, **options)
    return finish(quantity.estimate(call, method), scalar)


def _register_samplers(quantity: Quantity, terms_of, post=None):
    """Register "mc" and "qmc" for a bound whose per-sample terms are ``terms_of(call)`` ("mc" first: its
    standard error is the i.i.d. one, which the delta method of :func:`cauchy_schwarz_bound` needs)."""
    for name in ("mc", "qmc"):
        def run(c: Call, name=name) -> Estimate:
            est = sample_mean(terms_of(c), c.law, name, c.sampling)
            return post(est) if post else est
        quantity.register(name, applies=lambda c: None, summary=f"{name} over inputs")(run)


def gap_certificate(moe, law, taus, *, B_Y: float, B_h: float, teacher=None, method: str = "auto",
                    n: int | None = None, seed=0, target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""Sample certificate of Theorem 4.5 (its proof with the last step replaced by a sample mean):

    .. math:: |L_\tau - L_0| \le 4B_h(B_Y + B_h)\;
              E\Big[\min\Big(1, \sum_{j\ge 2} e^{-(a_{(1)}(X) - a_{(j)}(X))/\tau}\Big)\Big]

    (Lemma 4.1, ``gates.tail_sum``). ``B_Y`` must bound :math:`|f^*|` (the teacher signal; ``None`` is the
    hard-routed ``moe``) and ``B_h`` every :math:`|h_k|`: both are checked on every sample drawn, and a
    violation raises a ``ValueError`` (the certificate would not be one).

    Args:
        moe: any MoE; law: any law; taus: temperatures ``(T,)`` or a float; B_Y, B_h: the bounds;
        method: ``"auto"`` (= ``"mc"``), ``"mc"``, ``"qmc"``; n, seed, target_rel_error, sampling keywords: as
        in :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus`` (the bound, with its standard error).
    """
    where = "gap_certificate"
    B_Y = check_float(B_Y, "B_Y", where, 0.0, math.inf, low_open=False)
    B_h = check_float(B_h, "B_h", where, 0.0, math.inf, low_open=False)
    if not math.isfinite(4 * B_h * (B_Y + B_h)):
        fail("B_Y" if B_Y >= B_h else "B_h", where, "small enough for 4·B_h·(B_Y + B_h) to be finite",
             max(B_Y, B_h))
    return _bound(GAP_CERTIFICATE, where, moe, law, taus, teacher, method, n, seed, target_rel_error, sampling,
                  B_Y=B_Y, B_h=B_h)


def _certificate_terms(c: Call):
    moe, teacher, t, B_Y, B_h = c.model, c.teacher, c.grid, c.options["B_Y"], c.options["B_h"]

    def terms(x):
        a, h = moe._scores(x)
        fs = teacher._signal(x)
        for name, val, bound, what in (("B_h", h, B_h, "|h_k(x)|"), ("B_Y", fs, B_Y, "|f*(x)|")):
            val = val.abs().max()
            if float(val) > bound:
                fail(name, c.where, f"a bound on {what} over the law's support", f"{bound:g} with a sample at "
                     f"{float(val):.4g}")
        return 4 * B_h * (B_Y + B_h) * _lemma41(a, t)
    return terms


_register_samplers(GAP_CERTIFICATE, _certificate_terms)


def local_gap_certificate(moe, law, taus, *, teacher=None, method: str = "auto", n: int | None = None, seed=0,
                          target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""Theorem 4.5's chain of inequalities taken pointwise (module docstring), needing no bounds B:

    .. math:: |L_\tau - L_0| \le E\Big[\max_k |h_k - h_{k^*}|\cdot 2\max_k |h_k - f^*| \cdot
              \min\Big(1, \sum_{j\ge 2} e^{-(a_{(1)} - a_{(j)})/\tau}\Big)\Big].

    Methods and keywords as :func:`gap_certificate`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus``.
    """
    return _bound(LOCAL_GAP_CERTIFICATE, "local_gap_certificate", moe, law, taus, teacher, method, n, seed,
                  target_rel_error, sampling)


def _local_terms(c: Call):
    moe, teacher, t = c.model, c.teacher, c.grid

    def terms(x):
        a, h = moe._scores(x)
        spread = (h - hard_from(a, h)[:, None]).abs().max(-1).values
        reach = 2 * (h - teacher._signal(x)[:, None]).abs().max(-1).values
        return (spread * reach)[:, None] * _lemma41(a, t)
    return terms


_register_samplers(LOCAL_GAP_CERTIFICATE, _local_terms)


def cauchy_schwarz_bound(moe, law, taus, *, teacher=None, method: str = "auto", n: int | None = None, seed=0,
                         target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""Cauchy–Schwarz bound on the gap, finite for unbounded experts:

    .. math:: |L_\tau - L_0| = \big|E[(f_0 - f_\tau)(2f^* - f_\tau - f_0)]\big|
              \le \sqrt{E(f_\tau - f_0)^2}\;\sqrt{E(2f^* - f_\tau - f_0)^2} =: \sqrt{m_1 m_2}.

    Both means come from one sample; the standard error is the delta method's,
    :math:`\mathrm{se}^2 = \nabla b^\top \hat\Sigma \nabla b / n`,
    :math:`\nabla b = \tfrac12(\sqrt{m_2/m_1}, \sqrt{m_1/m_2})` with :math:`\hat\Sigma` the sample
    covariance of the two per-sample terms. An equality when the teacher is realizable (:math:`f^* = f_0`).
    Methods and keywords as :func:`gap_certificate` (a target applies to every sampled moment).

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus``.
    """
    return _bound(CAUCHY_SCHWARZ_BOUND, "cauchy_schwarz_bound", moe, law, taus, teacher, method, n, seed,
                  target_rel_error, sampling)


def _cs_terms(c: Call):
    moe, teacher, t = c.model, c.teacher, c.grid

    def terms(x):
        a, h = moe._scores(x)
        ft, f0 = soft_from(a, h, t), hard_from(a, h)[:, None]
        t1, t2 = (ft - f0) ** 2, (2 * teacher._signal(x)[:, None] - ft - f0) ** 2
        return torch.stack([t1, t2, t1 * t1, t2 * t2, t1 * t2], dim=1)  # (N, 5, T)
    return terms


def _delta_method(est: Estimate) -> Estimate:
    m1, m2, s11, s22, s12 = np.asarray(est.value)
    c11, c22, c12 = s11 - m1 ** 2, s22 - m2 ** 2, s12 - m1 * m2
    b = np.sqrt(m1 * m2)
    with np.errstate(divide="ignore", invalid="ignore"):
        g1, g2 = 0.5 * np.sqrt(m2 / m1), 0.5 * np.sqrt(m1 / m2)
        var = np.where(b > 0, g1 * g1 * c11 + g2 * g2 * c22 + 2 * g1 * g2 * c12, 0.0)
    se = np.sqrt(np.clip(var, 0.0, None) / est.n)
    return est.replace(value=b, stderr=se, info={"stderr": "delta method"})


_register_samplers(CAUCHY_SCHWARZ_BOUND, _cs_terms, _delta_method)


def _pair_sup(router, law, w0: float, where: str) -> float:
    r""":math:`\sum_{i<j}\sup_{|s|\le w_0}\psi_{ij}(s)` for a linear router under a Gaussian (mixture) law (per
    component the normal density's largest value on the interval; summed over components, an upper bound of
    the mixture's, equal for one component)."""
    if not is_linear_gaussian(router, law):
        fail("router", where, "a LinearRouter under a Gaussian or GaussianMixture law (the constant needs the "
             "closed-form level-set profiles ψ_ij)", type(router).__name__, TypeError)
    K = router.num_experts
    total = 0.0
    for i in range(K):
        for j in range(i + 1, K):
            v, c = pair_score(router, (i, j))
            for w, comp in gaussian_components(law, where):
                m_g, s = score_law(v.detach(), c, comp)
                if s == 0.0:
                    fail("router", where, "scores g_ij with non-degenerate laws (vᵀSv > 0)", f"pair ({i}, {j})")
                total += w * float(phi(max(abs(m_g) - w0, 0.0) / s)) / s
    return total


def margin_slope_constant(router, law, w0: float) -> float:
    r"""The constant :math:`C_1` of Prop. 3.7 on :math:`(0, w_0]`: :math:`\beta(w) \le \beta_{pair}(w) \le C_1 w`.

    .. math:: \beta_{pair}(w) \le \sum_{i<j}\mu(|g_{ij}| \le w) = \sum_{i<j}\int_{-w}^{w}\psi_{ij}(s)\,ds
              \le 2w\sum_{i<j}\sup_{|s|\le w_0}\psi_{ij}(s) =: C_1 w \qquad (0 < w \le w_0)

    with :math:`\psi_{ij}(s)` the level-set profile (3.8) (:func:`softhard.quantities.coarea.level_set_profile`),
    exact for a LinearRouter under a Gaussian (mixture) law. As :math:`w_0 \to 0`,
    :math:`C_1 \to 2\sum_{i<j}\psi_{ij}(0)` (= :math:`2C_\Sigma` for K = 2, Prop. 3.5). Derivation:
    ``docs/landscape.md`` §5.
    """
    where = "margin_slope_constant"
    w0 = check_float(w0, "w0", where, 0.0, math.inf, low_open=False)
    return 2.0 * _pair_sup(router, law, w0, where)


def corollary44_bound(router, law, taus, *, B: float, w0: float) -> np.ndarray:
    r"""The explicit gap bound of Cor. 4.4 [recon] for squared loss with :math:`|Y|, |h_k| \le B` (Assumption 4.3):

    .. math:: |L_\tau - L_0| \le 8B^2(K-1)\big(C_1\tau + e^{-w_0/\tau}\big)

    from :math:`|(Y-f_\tau)^2 - (Y-f_0)^2| \le 4B|f_\tau - f_0|`, :math:`|f_\tau - f_0| \le 2B(1 - \pi_{max})
    \le 2B(K-1)e^{-\Delta/\tau}` (Lemma 4.1) and the layer-cake formula
    :math:`E[e^{-\Delta/\tau}] = \int_0^\infty \tau^{-1}e^{-w/\tau}\beta(w)\,dw \le C_1\tau + e^{-w_0/\tau}` with
    :math:`\beta(w) \le C_1 w` on :math:`(0, w_0]` (:func:`margin_slope_constant`; the mass beyond :math:`w_0` is
    bounded by 1). Linear router, Gaussian (mixture) law; ``taus`` ``(T,)``; returns ``(T,)``.
    """
    where = "corollary44_bound"
    B = check_float(B, "B", where, 0.0, math.inf, low_open=False)
    w0 = check_float(w0, "w0", where, 0.0, math.inf)
    t = check_grid(taus, "taus", where, low=0.0, low_open=True).double().numpy()
    C1 = 2.0 * _pair_sup(router, law, w0, where)
    return 8 * B * B * (router.num_experts - 1) * (C1 * t + np.exp(-w0 / t))


def lemma57_constant(router, law, eps: float = EPS_2TAU, *, w0: float | None = None) -> float:
    r"""The constant :math:`C_\varepsilon` of Lemma 5.7 [recon], :math:`m_\varepsilon(\tau) \le C_\varepsilon\tau`.

    With :math:`\lambda_\varepsilon = \log((1-\varepsilon)/\varepsilon) + \log(K-1)`, Remark 5.4 gives
    :math:`m_\varepsilon(\tau) \le \mu(\Delta < \lambda_\varepsilon\tau) \le \beta_{pair}(\lambda_\varepsilon\tau)`, so by
    :func:`margin_slope_constant`

    .. math:: m_\varepsilon(\tau) \le 2\lambda_\varepsilon\tau\sum_{i<j}\sup_{|s|\le\lambda_\varepsilon\tau}\psi_{ij}(s).

    ``w0=None``: the first-order constant :math:`C_\varepsilon = 2\lambda_\varepsilon\sum_{i<j}\psi_{ij}(0)`
    (:math:`\limsup_{\tau\to0} m_\varepsilon(\tau)/\tau \le C_\varepsilon`, equality for K = 2);
    ``w0``: a constant valid for every :math:`\tau \le w_0/\lambda_\varepsilon`,
    :math:`2\lambda_\varepsilon\sum_{i<j}\sup_{|s|\le w_0}\psi_{ij}(s)`. Linear router, Gaussian (mixture) law.
    """
    where = "lemma57_constant"
    eps = check_float(eps, "eps", where, 0.0, 0.5)
    w0 = 0.0 if w0 is None else check_float(w0, "w0", where, 0.0, math.inf)
    sup = _pair_sup(router, law, w0, where)
    return 2.0 * (math.log((1 - eps) / eps) + math.log(router.num_experts - 1)) * sup
