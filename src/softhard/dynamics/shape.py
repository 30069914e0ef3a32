r"""The hard risk as a function of the partition: profiled hard risk and its shape gradient (paper §5).

- :func:`hard_risk`: :math:`L_0 = E[(Y - h_{k^*(X)}(X))^2]` (2.11) of a student MoE.
- :func:`profiled_hard_risk`: :math:`L_0^{prof}(\varphi) = \min_\theta L_0(\theta, \varphi)`, affine least
  squares on every hard cell of the router φ.
- :func:`shape_gradient` / :func:`shape_derivative`: the router derivative of :math:`L_0` at fixed
  experts (at the profiled experts it is the derivative of :math:`L_0^{prof}`, envelope theorem) from the
  shape-derivative formula, Prop. 5.10 in computable form [recon], derived in ``docs/shape_derivative.md``:

  .. math:: \partial_\eta L_0 = \sum_{i<j} \psi_{ij}(0)\;
            E\big[(\partial_\varphi g_{ij}(X)\cdot\eta)\,\ell_{ij}(X)\,1_{\Gamma_{ij}}(X) \,\big|\, g_{ij}(X) = 0\big],
            \qquad \ell_{ij} = (f^* - h_i)^2 - (f^* - h_j)^2 \quad (5.7)

  with :math:`\Gamma_{ij}` the part of :math:`\{g_{ij} = 0\}` where i and j are the top two and, where
  :math:`f^*` jumps on the interface, its trace from the side being invaded (5.8): the side
  :math:`g_{ij} < 0` where :math:`\partial g_{ij}\cdot\eta > 0`, the side :math:`g_{ij} > 0` elsewhere.

Two methods. ``"exact"``: a linear (or :class:`~softhard.model.routers.UnitLinearRouter`) student router,
affine experts, a linear teacher partition with affine experts and a Gaussian or Gaussian-mixture law:
everything reduces to Gaussian moments (up to order 3) over polyhedra (:func:`softhard.closed.region_moments`).
Accuracy: ~1e-15 relative against an independent polar-coordinate quadrature; constraints whose normals are
parallel to 1e-12 (relative singular value) are merged, an absolute error of at most ~1e-12 (a student interface
within ~1e-12 rad of a teacher interface). ``"mc"``: any law, router and teacher, with standard errors from the one
reducer; the conditional expectation is the slab average
:math:`\psi(0)E[F\mid g=0] = \lim_{h\to0} E[F\,1\{|g|\le h\}]/(2h)` (bias :math:`O(h^2)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_int, check_seed, fail
from ..closed.moments import SpanError, region_moments
from ..closed.normal import condition_on_score, gaussian_components, phi, score_law
from ..estimators.reducer import Estimate, monte_carlo
from ..model.experts import LinearExperts
from ..model.gates import top_two
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.moe import HardTeacher, MoE, as_teacher
from ..model.routers import as_router
from ..model.routers import effective_linear

__all__ = ["hard_risk", "Profile", "profiled_hard_risk", "shape_gradient", "shape_derivative",
           "exact_cell_moments", "supports_exact"]


def _cell_rows(W: np.ndarray, b: np.ndarray, k: int, skip=()) -> tuple[np.ndarray, np.ndarray]:
    """Constraints ``a_k - a_l > 0`` (l ≠ k, l not in ``skip``) of the hard cell k of logits ``W x + b``."""
    others = [l for l in range(len(W)) if l != k and l not in skip]
    return W[k] - W[others], b[k] - b[others]


# ------------------------------------------------------------------------------------------------


def _np(t) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _linear_teacher(teacher, where: str):
    """``(W*, b*, Θ* (K_T, d+1), σ²)`` of a hard-routed teacher with a linear partition and affine experts."""
    if not isinstance(teacher, HardTeacher):
        fail("teacher", where, "a PartitionTeacher or HardTeacher for the exact method", type(teacher).__name__,
             TypeError)
    lin = effective_linear(teacher.moe.router)
    if lin is None or not isinstance(teacher.moe.experts, LinearExperts):
        fail("teacher", where, "a linear partition with LinearExperts for the exact method",
             type(teacher.moe.router).__name__, TypeError)
    e = teacher.moe.experts
    return _np(lin[0]), _np(lin[1]), np.concatenate([_np(e.weight), _np(e.bias)[:, None]], 1), teacher.noise_std ** 2


def _linear_router(router, where: str) -> tuple[np.ndarray, np.ndarray]:
    lin = effective_linear(router)
    if lin is None:
        fail("router", where, "a LinearRouter or UnitLinearRouter for the exact method", type(router).__name__,
             TypeError)
    return _np(lin[0]), _np(lin[1])


def _components(law, d: int, where: str):
    law = as_law(law, where)
    if law.d != d:
        fail("law", where, f"a law on R^{d}", f"a law on R^{law.d}")
    return gaussian_components(law, where)


def _common(method, n, seed, where: str) -> str:
    """Check the arguments every method shares (``n`` and ``seed`` too when the exact method ignores them)."""
    if not isinstance(method, str) or method not in ("mc", "exact"):
        fail("method", where, "one of 'mc', 'exact'", method)
    check_int(n, "n", where)
    check_seed(seed, where)
    return method


def _span_fail(where: str, q) -> None:
    fail("law", where, "such that the cell boundaries span at most 2 whitened directions for the exact method "
                       "(use method='mc')", f"{q} directions")


def supports_exact(router, teacher, law) -> bool:
    """Whether the ``"exact"`` method applies: a linear (or unit-linear) router, a teacher with a linear
    partition and affine experts, a Gaussian or Gaussian-mixture law, and cell boundaries spanning at most
    two directions (``d <= 2``, or two experts and two teacher cells)."""
    tr = getattr(getattr(teacher, "moe", None), "router", None)
    if effective_linear(router) is None or tr is None or effective_linear(tr) is None:
        return False
    if not isinstance(teacher.moe.experts, LinearExperts) or not isinstance(law, (Gaussian, GaussianMixture)):
        return False
    return law.d <= 2 or (router.num_experts == 2 and tr.num_experts == 2)


def exact_cell_moments(router, teacher, law, where: str = "exact_cell_moments") -> np.ndarray:
    r"""Second moments :math:`M_{km} = E[\tilde x\tilde x^\top 1\{X \in C_k \cap \Omega_m\}]`, :math:`\tilde x=(x, 1)`.

    ``C_k`` are the hard cells of the linear student ``router``, :math:`\Omega_m` the teacher's cells.
    Returns an array of shape ``(K_S, K_T, d+1, d+1)`` (exact Gaussian moments; mixtures summed).
    """
    W, b = _linear_router(router, where)
    WT, bT, _, _ = _linear_teacher(teacher, where)
    d = W.shape[1]
    out = np.zeros((len(W), len(WT), d + 1, d + 1))
    for weight, comp in _components(law, d, where):
        mean, L = _np(comp.mean), _np(comp.scale_tril)
        for k in range(len(W)):
            As, als = _cell_rows(W, b, k)
            for m in range(len(WT)):
                At, alt = _cell_rows(WT, bT, m)
                try:
                    T, _ = region_moments(mean, L, np.concatenate([As, At]), np.concatenate([als, alt]))
                except SpanError as e:
                    _span_fail(where, e.args[0])
                out[k, m] += weight * T[..., d]
    return out


def _exact_estimate(v) -> Estimate:
    v = np.asarray(v, dtype=np.float64)
    return Estimate(float(v) if v.ndim == 0 else v, 0.0 if v.ndim == 0 else np.zeros_like(v), 0, "exact")


def hard_risk(moe, teacher, law, *, method: str = "mc", n: int = 1 << 18, seed=0, progress: bool = False) -> Estimate:
    r"""Hard risk (2.11) :math:`L_0 = E[(Y - h_{k^*(X)}(X))^2] = E[(f^* - f_0)^2] + \sigma^2` (5.3).

    ``method="exact"``: :math:`\sum_{k,m} (\theta^*_m - \theta_k)^\top M_{km} (\theta^*_m - \theta_k) + \sigma^2`
    with :math:`M_{km}` from :func:`exact_cell_moments` (affine experts :math:`\theta_k = (w_k, c_k)`).
    """
    if not isinstance(moe, MoE):
        fail("moe", "hard_risk", "a softhard MoE", type(moe).__name__, TypeError)
    if _common(method, n, seed, "hard_risk") == "exact":
        M = exact_cell_moments(moe.router, teacher, law, "hard_risk")
        _, _, theta_t, s2 = _linear_teacher(teacher, "hard_risk")
        e = moe.experts
        if not isinstance(e, LinearExperts):
            fail("moe", "hard_risk", "an MoE with LinearExperts for the exact method", type(e).__name__, TypeError)
        theta = np.concatenate([_np(e.weight), _np(e.bias)[:, None]], 1)
        diff = theta_t[None, :, :] - theta[:, None, :]
        return _exact_estimate(np.einsum("kma,kmab,kmb->", diff, M, diff) + s2)
    law = as_law(law, "hard_risk", moe.d)
    teacher = as_teacher(teacher, moe, "hard_risk")
    return monte_carlo(lambda x: teacher.conditional_risk(x, moe.hard(x)), law, n, seed, progress=progress)


@dataclass(frozen=True)
class Profile:
    r"""Profiled hard risk :math:`L_0^{prof}(\varphi)` with its minimising affine experts.

    Attributes:
        risk: :class:`~softhard.estimators.reducer.Estimate` of :math:`L_0^{prof}` (stderr 0 for ``"exact"``; for
            ``"mc"`` the standard error of the risk of the fitted experts, ignoring the fit's own noise).
        experts: the per-cell least-squares experts (:class:`~softhard.model.experts.LinearExperts`, K outputs).
        cell_mass: :math:`\mu(C_k)` of the hard cells, shape ``(K,)``.
    """

    risk: Estimate
    experts: LinearExperts
    cell_mass: np.ndarray

    def moe(self, router) -> MoE:
        """The MoE ``(router, profiled experts)``."""
        return MoE(router, self.experts)


def _least_squares(A: np.ndarray, bvec: np.ndarray) -> np.ndarray:
    """Per-cell normal equations ``A_k θ_k = b_k``; minimum-norm for (near-)empty cells."""
    return np.stack([np.linalg.lstsq(A[k], bvec[k], rcond=1e-12)[0] for k in range(len(A))])


def profiled_hard_risk(router, teacher, law, *, method: str = "exact", n: int = 1 << 18, seed=0,
                       progress: bool = False) -> Profile:
    r"""Profiled hard risk: affine least squares on every hard cell :math:`C_k` of ``router``.

    .. math:: \theta_k = \arg\min_\theta E[(f^* - \theta\cdot\tilde X)^2 1_{C_k}]
              = A_k^{-1} b_k,\quad A_k = E[\tilde X\tilde X^\top 1_{C_k}],\ b_k = E[\tilde X f^* 1_{C_k}],
              \qquad L_0^{prof} = \sigma^2 + \sum_k \big(E[f^{*2} 1_{C_k}] - b_k^\top \theta_k\big)

    Args:
        router: the student router (any router for ``"mc"``; linear or unit-linear for ``"exact"``).
        teacher: a teacher (a linear :class:`~softhard.dynamics.teacher.PartitionTeacher` with affine experts for "exact").
        law: input law (Gaussian or mixture for ``"exact"``).
        method: ``"exact"`` or ``"mc"`` (moments and risk estimated from the ``(law, n, seed)`` stream).
    """
    where = "profiled_hard_risk"
    if _common(method, n, seed, where) == "exact":
        M = exact_cell_moments(router, teacher, law, where)
        _, _, th, s2 = _linear_teacher(teacher, where)
        A = M.sum(1)
        bvec = np.einsum("kmab,mb->ka", M, th)
        c = np.einsum("ma,kmab,mb->k", th, M, th)
        theta = _least_squares(A, bvec)
        risk = _exact_estimate(float(np.sum(c - np.einsum("ka,ka->k", bvec, theta))) + s2)
        return Profile(risk, LinearExperts(theta[:, :-1], theta[:, -1]), A[:, -1, -1])
    r = as_router(router, where=where)
    law = as_law(law, where, r.d)
    teacher = as_teacher(teacher, where=where)
    K, d = r.num_experts, law.d

    def moment_terms(x):
        xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        one = torch.nn.functional.one_hot(torch.argmax(r(x), -1), K).to(x.dtype)
        fs = teacher.signal(x)
        outer = (xt[:, :, None] * xt[:, None, :]).reshape(len(x), 1, -1)
        return torch.cat([one[:, :, None] * outer, one[:, :, None] * (xt * fs[:, None])[:, None, :]], 2).reshape(
            len(x), -1)

    mom = np.asarray(monte_carlo(moment_terms, law, n, seed, progress=progress).value).reshape(K, -1)
    A = mom[:, :(d + 1) ** 2].reshape(K, d + 1, d + 1)
    theta = _least_squares(A, mom[:, (d + 1) ** 2:])
    experts = LinearExperts(theta[:, :-1], theta[:, -1])
    risk = monte_carlo(lambda x: teacher.conditional_risk(x, MoE(r, experts).hard(x)), law, n, seed)
    return Profile(risk, experts, A[:, -1, -1])


def _router_tensors(router) -> dict[str, torch.Tensor]:
    """The router's parameters (its buffers ``weight``/``bias`` for a frozen linear router)."""
    params = dict(router.named_parameters())
    return params if params else {k: v for k, v in router.named_buffers() if k in ("weight", "bias")}


def _pair_integrals(W, b, WT, bT, theta, theta_t, comps, where, eta=None):
    r"""Per pair (i, j): :math:`\sum_c \omega_c\psi_{ij,c}(0) E_c[\tilde x\,\ell_{ij} 1_\Gamma \mid g_{ij}=0]`
    (``eta`` None, shape (K, K, d+1); refused where a trace matters) or the directional sum of
    :math:`\psi E[(\tilde\eta_{ij}\cdot\tilde x)\ell_{ij} 1_\Gamma\mid g=0]` with the invaded side's traces."""
    K, d = W.shape
    vec = np.zeros((K, K, d + 1))
    total = 0.0
    for i in range(K):
        for j in range(i + 1, K):
            v, c0 = W[i] - W[j], float(b[i] - b[j])
            if not np.any(v):
                continue
            As, als = _cell_rows(W, b, i, skip=(j,))
            delta = theta[j] - theta[i]
            for weight, comp in comps:
                m_g, s = score_law(torch.as_tensor(v, dtype=comp.mean.dtype), c0, comp)
                if s == 0.0:
                    continue
                psi = weight * float(phi(m_g / s)) / s
                cond = condition_on_score(comp, torch.as_tensor(v, dtype=comp.mean.dtype), c0)
                mean, L = _np(cond.mean), _np(cond.scale_tril)
                for m in range(len(WT)):
                    At, alt = _cell_rows(WT, bT, m)
                    sig = 2 * theta_t[m] - theta[i] - theta[j]
                    A, al = np.concatenate([As, At]), np.concatenate([als, alt])
                    if eta is None:
                        T, tied = region_moments(mean, L, A, al)
                        if tied:
                            T2, _ = region_moments(mean, L, A, al, np.ones(len(A)))
                            if not np.allclose(np.einsum("abc,b,c->a", T, delta, sig),
                                               np.einsum("abc,b,c->a", T2, delta, sig), rtol=1e-9, atol=1e-12):
                                fail("router", where, "a router whose interfaces are transverse to the teacher's "
                                     "(where they coincide L_0 has one-sided derivatives only; use "
                                     "shape_derivative with a direction)", f"interface ({i}, {j})")
                        vec[i, j] += psi * np.einsum("abc,b,c->a", T, delta, sig)
                        continue
                    et = np.concatenate([eta[0][i] - eta[0][j], [eta[1][i] - eta[1][j]]])
                    if not np.any(et):
                        continue
                    for side in (-1.0, 1.0):  # s > 0 invades the side g < 0, s < 0 the side g > 0
                        rows = np.concatenate([A, -side * et[None, :-1]])
                        offs = np.concatenate([al, [-side * et[-1]]])
                        tie = np.concatenate([side * np.sign(A @ v), [-1.0]])
                        T, _ = region_moments(mean, L, rows, offs, tie)
                        total += psi * float(np.einsum("abc,a,b,c->", T, et, delta, sig))
    return vec if eta is None else total


def _exact_setup(router, teacher, law, experts, where):
    W, b = _linear_router(router, where)
    WT, bT, theta_t, _ = _linear_teacher(teacher, where)
    comps = _components(law, W.shape[1], where)
    if experts is None:
        experts = profiled_hard_risk(router, teacher, law, method="exact").experts
    if not isinstance(experts, LinearExperts) or experts.num_experts != len(W):
        fail("experts", where, f"LinearExperts with {len(W)} experts (or None for the profiled ones)",
             type(experts).__name__, TypeError)
    theta = np.concatenate([_np(experts.weight), _np(experts.bias)[:, None]], 1)
    return W, b, WT, bT, theta, theta_t, comps


def shape_gradient(router, teacher, law, experts=None, *, method: str = "exact", n: int = 1 << 18, seed=0,
                   bandwidth: float = 0.05, progress: bool = False) -> dict[str, Estimate]:
    r"""Router gradient of the hard risk from the shape-derivative formula (Prop. 5.10, computable form).

    .. math:: \nabla_\varphi L_0 = \sum_{i<j}\psi_{ij}(0)\,
              E\big[\nabla_\varphi g_{ij}(X)\,\ell_{ij}(X)\,1_{\Gamma_{ij}}(X) \,\big|\, g_{ij}(X) = 0\big],\qquad
              \ell_{ij} = (f^*-h_i)^2 - (f^*-h_j)^2

    (derivation: ``docs/shape_derivative.md``). With ``experts=None`` the experts are the profiled ones,
    so this is :math:`\nabla_\varphi L_0^{prof}` (envelope theorem). It is a gradient only where
    :math:`f^*` is continuous across the student's interfaces; where an interface coincides with a teacher
    interface the exact method refuses (use :func:`shape_derivative`).

    Args:
        router: the student router. ``"exact"``: LinearRouter or UnitLinearRouter (the gradient is chained to
            its raw ``weight``/``bias``); ``"mc"``: any router (autograd of :math:`g_{ij}` in its parameters).
        teacher, law: as in :func:`profiled_hard_risk`.
        experts: fixed student experts (LinearExperts for "exact"), or ``None`` for the profiled experts.
        method: ``"exact"`` or ``"mc"`` (slab estimator of half-width ``bandwidth`` in logit units on the
            ``(law, n, seed)`` stream; the profile, when needed, uses the same stream).

    Returns:
        ``{parameter name: Estimate}``, each value of the parameter's shape (stderr 0 for "exact").
    """
    where = "shape_gradient"
    h = check_float(bandwidth, "bandwidth", where, 0.0, math.inf)
    if _common(method, n, seed, where) == "exact":
        W, b, WT, bT, theta, theta_t, comps = _exact_setup(router, teacher, law, experts, where)
        try:
            vec = _pair_integrals(W, b, WT, bT, theta, theta_t, comps, where)
        except SpanError as e:
            _span_fail(where, e.args[0])
        g = vec.sum(1) - vec.sum(0)  # +ψE[x̃ℓ] for i, −ψE[x̃ℓ] for j
        params = _router_tensors(router)
        _, pullback = torch.func.vjp(lambda *v: tuple(effective_linear(router, *v)),
                                     *(p.detach() for p in params.values()))
        grads = pullback((torch.as_tensor(g[:, :-1], dtype=DTYPE), torch.as_tensor(g[:, -1], dtype=DTYPE)))
        return {k: _exact_estimate(_np(gr)) for k, gr in zip(params, grads)}
    r = as_router(router, where=where)
    return _shape_gradient_mc(r, as_teacher(teacher, where=where), as_law(law, where, r.d), experts, n, seed, h,
                              progress)


def _shape_gradient_mc(router, teacher, law, experts, n, seed, h, progress) -> dict[str, Estimate]:
    if experts is None:
        experts = profiled_hard_risk(router, teacher, law, method="mc", n=n, seed=seed).experts
    params = {k: v.detach() for k, v in _router_tensors(router).items()}
    names, shapes = list(params), [p.shape for p in params.values()]
    K = router.num_experts

    def logits(p, xi):
        return torch.func.functional_call(router, p, (xi[None],))[0]

    jac = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))

    def terms(x):
        a, hx, fs = router(x), experts(x), teacher.signal(x)
        _, first, second = top_two(a)
        out = torch.zeros(len(x), sum(int(np.prod(s)) for s in shapes), dtype=x.dtype)
        for i in range(K):
            for j in range(i + 1, K):
                sel = ((a[:, i] - a[:, j]).abs() <= h) & (((first == i) & (second == j))
                                                         | ((first == j) & (second == i)))
                if not bool(sel.any()):
                    continue
                J = jac(params, x[sel])  # {name: (S, K, *shape)}
                dg = torch.cat([(J[k][:, i] - J[k][:, j]).reshape(int(sel.sum()), -1) for k in names], 1)
                ell = (fs[sel] - hx[sel, i]) ** 2 - (fs[sel] - hx[sel, j]) ** 2
                out[sel] += dg * (ell / (2 * h))[:, None]
        return out

    est = monte_carlo(terms, law, n, seed, progress=progress)
    out, start = {}, 0
    for k, s in zip(names, shapes):
        size = int(np.prod(s))
        sl = est[start:start + size]
        out[k] = Estimate(np.asarray(sl.value).reshape(s), np.asarray(sl.stderr).reshape(s), est.n, "mc", est.seed)
        start += size
    return out


def shape_derivative(router, teacher, law, direction, experts=None) -> float:
    r"""One-sided directional derivative :math:`\lim_{t\downarrow0}(L_0(\varphi + t\eta) - L_0(\varphi))/t` (exact).

    .. math:: D_\eta L_0 = \sum_{i<j}\psi_{ij}(0)\,E\big[s_{ij}(X)\,\ell_{ij}(X; f^*_{\mathrm{inv}})\,1_{\Gamma_{ij}}
              \,\big|\, g_{ij} = 0\big], \qquad s_{ij} = \partial_\varphi g_{ij}\cdot\eta

    where :math:`f^*_{\mathrm{inv}}` is the trace of :math:`f^*` from the invaded side: from
    :math:`\{g_{ij}<0\}` where :math:`s_{ij}>0`, from :math:`\{g_{ij}>0\}` where :math:`s_{ij}<0` (5.8). At an
    interface that coincides with a teacher interface, :math:`D_\eta \ne -D_{-\eta}` (a kink): call it with
    η and −η for the two one-sided derivatives (:func:`shape_gradient` refuses such a router). A coinciding
    interface is recognised because the law conditioned on it has a rank-revealing factor
    (:class:`~softhard.model.laws.Gaussian`), on which the teacher's constraint is exactly constant.

    Args:
        router: LinearRouter or UnitLinearRouter; teacher, law, experts: as in :func:`shape_gradient`.
        direction: ``{name: tensor}`` over the router's raw parameters (``weight (K, d)``, ``bias (K,)``),
            or a pair ``(dW, db)``.

    Returns:
        the directional derivative (float).
    """
    where = "shape_derivative"
    W, b, WT, bT, theta, theta_t, comps = _exact_setup(router, teacher, law, experts, where)
    params = _router_tensors(router)
    if isinstance(direction, dict):
        unknown = set(direction) - set(params)
        if unknown:
            fail("direction", where, f"a dict with keys among {list(params)}", sorted(unknown))
        tang = [direction.get(k, torch.zeros_like(p)) for k, p in params.items()]
    elif isinstance(direction, (list, tuple)):
        tang = list(direction)
    else:
        fail("direction", where, "a dict {name: tensor} or a pair (dW, db)", type(direction).__name__, TypeError)
    tang = [check_finite(as_tensor(t, "direction", where, dtype=DTYPE), "direction", where) for t in tang]
    if len(tang) != len(params) or any(t.shape != p.shape for t, p in zip(tang, params.values())):
        fail("direction", where, "tensors of the router parameters' shapes " +
             str({k: tuple(p.shape) for k, p in params.items()}), [tuple(t.shape) for t in tang])
    tang = [t.to(p) for t, p in zip(tang, params.values())]
    _, (dW, db) = torch.func.jvp(lambda *v: tuple(effective_linear(router, *v)),
                                 tuple(p.detach() for p in params.values()), tuple(tang))
    try:
        total = _pair_integrals(W, b, WT, bT, theta, theta_t, comps, where, (_np(dW), _np(db)))
    except SpanError as e:
        _span_fail(where, e.args[0])
    return float(total)

