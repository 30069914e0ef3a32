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
from ..closed.moments import SpanError, product_moment, region_moments
from ..closed.normal import condition_on_score, gaussian_components, phi, score_law
from ..estimators.reducer import Estimate, monte_carlo
from ..model.experts import LinearExperts
from ..model.gates import top_two
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.moe import HardTeacher, MoE, as_teacher
from ..model.routers import as_router
from ..model.routers import effective_linear

__all__ = ["hard_risk", "Profile", "profiled_hard_risk", "shape_gradient", "shape_derivative",
           "exact_cell_moments", "supports_exact", "SecondVariation", "shape_hessian", "shape_hessian_matrix",
           "hard_derivatives"]


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


def _tangent(params: dict[str, torch.Tensor], direction, param: str, where: str) -> list[torch.Tensor]:
    """A router direction (``{name: tensor}`` or a pair ``(dW, db)``) as tensors of the parameters' shapes."""
    if isinstance(direction, dict):
        unknown = set(direction) - set(params)
        if unknown:
            fail(param, where, f"a dict with keys among {list(params)}", sorted(unknown))
        tang = [direction.get(k, torch.zeros_like(p)) for k, p in params.items()]
    elif isinstance(direction, (list, tuple)):
        tang = list(direction)
    else:
        fail(param, where, "a dict {name: tensor} or a pair (dW, db)", type(direction).__name__, TypeError)
    tang = [check_finite(as_tensor(t, param, where, dtype=DTYPE), param, where) for t in tang]
    if len(tang) != len(params) or any(t.shape != p.shape for t, p in zip(tang, params.values())):
        fail(param, where, "tensors of the router parameters' shapes " +
             str({k: tuple(p.shape) for k, p in params.items()}), [tuple(t.shape) for t in tang])
    return [t.to(p) for t, p in zip(tang, params.values())]


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
    tang = _tangent(params, direction, "direction", where)
    _, (dW, db) = torch.func.jvp(lambda *v: tuple(effective_linear(router, *v)),
                                 tuple(p.detach() for p in params.values()), tuple(tang))
    try:
        total = _pair_integrals(W, b, WT, bT, theta, theta_t, comps, where, (_np(dW), _np(db)))
    except SpanError as e:
        _span_fail(where, e.args[0])
    return float(total)



# ------------------------------------------------------------------------------------------------
# Second variation (docs/shape_derivative.md §7)


def _condition(mean: np.ndarray, L: np.ndarray, a: np.ndarray, alpha: float):
    r"""Condition ``X = mean + L z`` on :math:`a\cdot X + \alpha = 0`: ``(density of a·X + α at 0, mean', L')``
    with ``L'`` a factor of :math:`L(I - uu^\top/|u|^2)`, ``u = Lᵀa``, truncated to its singular values above
    1e-12 of ``L``'s (rank revealing: no rounding-level column along ``a``); ``None`` with the constant value
    when :math:`a\cdot X` has no variance on the support."""
    u = L.T @ a
    s2 = float(u @ u)
    val = float(a @ mean + alpha)
    if math.sqrt(s2) <= 1e-11 * max(float(np.linalg.norm(a)) * float(np.linalg.norm(L, 2)), 1e-300):
        return None, val
    dens = math.exp(-0.5 * val * val / s2) / math.sqrt(2 * math.pi * s2)
    U, sv, _ = np.linalg.svd(L - np.outer(L @ u, u) / s2, full_matrices=False)
    keep = sv > 1e-12 * float(np.linalg.norm(L, 2))  # rank revealing against the parent's scale
    return (dens, mean - L @ u * (val / s2), U[:, keep] * sv[keep]), val


class _Refused(Exception):
    """The second variation does not exist here (a kink or a degenerate junction): carries the reason."""


def _moments(mean, L, A, alpha, f, what: str) -> tuple[np.ndarray, np.ndarray]:
    r"""``(E[x̃x̃ᵀ f² 1_R], E[x̃x̃ᵀ f 1_R])`` under ``X = mean + L z``, ``(d+1, d+1)`` each."""
    D = len(f)
    E = np.eye(D)
    ia, ib = np.triu_indices(D)
    fac = np.stack([E[ia], E[ib]], 1)  # (B, 2, D)
    f2 = np.concatenate([fac, np.broadcast_to(f, (len(ia), 2, D))], 1)
    f1 = np.concatenate([fac, np.broadcast_to(f, (len(ia), 1, D))], 1)
    out = []
    for F in (f2, f1):
        v, tied = product_moment(mean, L, F, A, alpha)
        if tied:
            raise _Refused(what)
        M = np.zeros((D, D))
        M[ia, ib] = v
        M[ib, ia] = v
        out.append(M)
    return out[0], out[1]


def _second_order(W, b, WT, bT, theta, theta_t, comps):
    r"""Exact first and second variations of :math:`L_0` in the effective logits ``(W, b)`` at fixed experts.

    Returns ``grad (p,)``, ``H (p, p)`` (the bilinear form ``e1ᵀ H e2``, not yet symmetrised), ``Bmix``
    ``(K, d+1, p)`` (:math:`\partial_\varphi\partial_{\theta_k} L_0`) and ``A (K, d+1, d+1)``
    (:math:`E[\tilde x\tilde x^\top 1_{C_k}]`), with ``p = K(d+1)`` ordered as ``(W.ravel(), b)``. Raises
    :class:`_Refused` where a student interface coincides with a teacher interface or a junction is degenerate.
    """
    K, d = W.shape
    p = K * (d + 1)

    def sel(k, l):
        Dm = np.zeros((d + 1, p))
        Dm[:d, k * d:(k + 1) * d] += np.eye(d)
        Dm[:d, l * d:(l + 1) * d] -= np.eye(d)
        Dm[d, K * d + k] += 1.0
        Dm[d, K * d + l] -= 1.0
        return Dm

    grad, H, Bmix = np.zeros(p), np.zeros((p, p)), np.zeros((K, d + 1, p))
    A = np.zeros((K, d + 1, d + 1))
    for weight, comp in comps:
        mean, L, S = _np(comp.mean), _np(comp.scale_tril), _np(comp.cov)
        for k in range(K):
            for m in range(len(WT)):
                At, alt = _cell_rows(WT, bT, m)
                As, als = _cell_rows(W, b, k)
                T, _ = region_moments(mean, L, np.concatenate([As, At]), np.concatenate([als, alt]))
                A[k] += weight * T[..., d]
            for l in range(K):
                if l == k:
                    continue
                v, c = W[k] - W[l], float(b[k] - b[l])
                cond, val = _condition(mean, L, v, c)
                if cond is None:
                    if abs(val) <= 1e-11 * (1.0 + abs(c)):
                        raise _Refused(f"experts {k} and {l} tie on the whole space")
                    continue
                psi, mc, Lc = cond
                psi *= weight
                s2 = float(v @ S @ v)
                m_g = float(v @ mean) + c
                Sv1 = np.append(S @ v, 0.0)
                others = [j for j in range(K) if j not in (k, l)]
                As, als = W[k] - W[others], b[k] - b[others]
                Dkl = sel(k, l)
                for m in range(len(WT)):
                    At, alt = _cell_rows(WT, bT, m)
                    rows, offs = np.concatenate([As, At]), np.concatenate([als, alt])
                    f = theta_t[m] - theta[k]
                    M2, N2 = _moments(mc, Lc, rows, offs, f, f"interface ({min(k, l)}, {max(k, l)}) coincides "
                                      "with a teacher interface (a kink: L_0 has one-sided derivatives only)")
                    m1 = N2 @ f
                    grad += psi * Dkl.T @ m1
                    Bmix[k] += -2.0 * psi * N2 @ Dkl
                    inner = 2.0 * float(f @ Sv1) * N2 + np.outer(Sv1, m1) + np.outer(m1, Sv1) + m_g * M2
                    H -= (psi / s2) * Dkl.T @ inner @ Dkl
                    for r in range(len(rows)):
                        edge, _ = _condition(mc, Lc, rows[r], float(offs[r]))
                        if edge is None:  # constant on the interface: decided inside _moments
                            continue
                        psi_r, m2c, L2c = edge
                        keep = np.arange(len(rows)) != r
                        M2r, _ = _moments(m2c, L2c, rows[keep], offs[keep], f,
                                          f"a junction of interface ({min(k, l)}, {max(k, l)}) lies on another "
                                          "interface (a degenerate junction)")
                        H -= (psi * psi_r / s2) * float(Sv1[:d] @ rows[r]) * Dkl.T @ M2r @ Dkl
                        if r < len(others):  # the student's own junction: g_kl = g_kl' = 0
                            H += psi * psi_r * sel(k, others[r]).T @ M2r @ Dkl
    return grad, H, Bmix, A


def _raw_chain(router, params: dict[str, torch.Tensor]):
    """``(J (p_eff, p_raw), second)``: the Jacobian of the effective logits ``(W.ravel(), b)`` in the raw
    parameters, and ``second(g)``: the Hessian of ``g · eff(raw)`` (zero for a LinearRouter)."""
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    raw0 = torch.cat([p.detach().reshape(-1).to(DTYPE) for p in params.values()])

    def eff(raw):
        parts = torch.split(raw, sizes)
        W, b = effective_linear(router, *(t.reshape(s) for t, s in zip(parts, shapes)))
        return torch.cat([W.reshape(-1), b.reshape(-1)])

    J = torch.func.jacrev(eff)(raw0)

    def second(g: np.ndarray) -> np.ndarray:
        gt = torch.as_tensor(g, dtype=DTYPE)
        return _np(torch.func.hessian(lambda r: gt @ eff(r))(raw0))

    return _np(J), second


@dataclass(frozen=True)
class SecondVariation:
    r"""First and second variations of the hard risk in a router's raw parameters (exact).

    Attributes:
        gradient: :math:`\nabla_\varphi L_0`, shape ``(p,)`` (``p``: the router's raw parameters flattened in
            order, ``weight (K, d)`` then ``bias (K,)``).
        hessian: :math:`\nabla^2_\varphi L_0`, ``(p, p)`` symmetric, at fixed experts, or of the profiled
            risk :math:`L_0^{prof}` (``profiled``: the full tangent :math:`(\eta, D\theta^*(\varphi)\eta)`).
        profiled: which of the two; asymmetry: the largest entry of :math:`|H - H^\top|/2` before
            symmetrising, relative to :math:`\max|H|` (the formula is not symmetric term by term; rounding only).
    """

    gradient: np.ndarray
    hessian: np.ndarray
    profiled: bool
    asymmetry: float

    def eigenvalues(self, directions: np.ndarray | None = None) -> np.ndarray:
        """Ascending eigenvalues of the Hessian, restricted to the span of the orthonormal columns of
        ``directions (p, q)`` when given (e.g. the complement of the gauge and scale directions)."""
        H = self.hessian if directions is None else directions.T @ self.hessian @ directions
        return np.linalg.eigvalsh(0.5 * (H + H.T))


def _second_variation(router, teacher, law, experts, profiled: bool, where: str) -> SecondVariation:
    if profiled and experts is not None:
        fail("experts", where, "None when profiled=True (the profiled experts θ*(φ) are used)",
             type(experts).__name__, TypeError)
    W, b, WT, bT, theta, theta_t, comps = _exact_setup(router, teacher, law, experts, where)
    try:
        grad, H, Bmix, A = _second_order(W, b, WT, bT, theta, theta_t, comps)
    except _Refused as e:
        fail("router", where, "a router whose interfaces are transverse to the teacher's, with non-degenerate "
             "junctions (where the second variation exists)", str(e))
    except SpanError as e:
        fail("law", where, "such that every interface is cut by at most one further direction for the exact "
                           "second variation (d <= 2, or two experts and two teacher cells)", f"{e.args[0]} directions")
    if profiled:
        K, D = A.shape[0], A.shape[1]
        mass = A[:, -1, -1]
        if np.any(mass <= 1e-12):
            fail("router", where, "a router whose hard cells all have positive mass (Assumption 5.14: a unique "
                 "expert minimiser θ*(φ))", f"cell masses {mass.tolist()}")
        for k in range(K):  # Schur complement: H_φφ − H_φθ (∇²_θθ L_0)⁻¹ H_θφ, ∇²_θθ L_0 = 2 A_k per cell
            H = H - Bmix[k].T @ np.linalg.solve(2.0 * A[k], Bmix[k])
    scale = max(float(np.abs(H).max()), 1e-300)
    asym = float(np.abs(H - H.T).max()) / 2 / scale
    H = 0.5 * (H + H.T)
    params = _router_tensors(router)
    J, second = _raw_chain(router, params)
    return SecondVariation(J.T @ grad, J.T @ H @ J + second(grad), profiled, asym)


def shape_hessian_matrix(router, teacher, law, experts=None, *, profiled: bool = False) -> SecondVariation:
    r"""The exact second variation of the hard risk in the router's raw parameters (Prop. 5.10 at second order,
    Assumption 5.14), with the first variation; derivation in ``docs/shape_derivative.md`` §7.

    .. math:: D^2L_0[\eta_1,\eta_2] = \sum_{k\ne l}\sum_m\Big(E\big[c_{km}\,s^1_{kl}s^2_{kl}\,\delta'(g_{kl})\,
              1_{R_{kl}\cap\Omega_m}\big] + \sum_{l'\ne k,l} E\big[c_{km}\,s^2_{kl}s^1_{kl'}\,\delta(g_{kl})
              \delta(g_{kl'})\,1_{R_{kl}\setminus l'\,\cap\,\Omega_m}\big]\Big)

    with :math:`c_{km} = (h^*_m - h_k)^2`, :math:`s^i_{kl} = \partial g_{kl}\cdot\eta_i`,
    :math:`R_{kl} = \{g_{kl'} > 0,\ l' \ne k, l\}`; the δ' term is integrated by parts along :math:`S\nabla g`
    into an interface term (Gaussian moments of order ≤ 4 on :math:`\{g_{kl} = 0\}`) and edge terms where
    the interface meets a teacher interface or another student interface (order ≤ 4 on a codimension-2 flat).
    ``profiled=True``: the second variation of :math:`L_0^{prof}(\varphi) = L_0(\theta^*(\varphi), \varphi)` along
    the full tangent :math:`(\eta, D\theta^*(\varphi)\eta)`, i.e. the Schur complement
    :math:`H_{\varphi\varphi} - H_{\varphi\theta}H_{\theta\theta}^{-1}H_{\theta\varphi}` with
    :math:`H_{\theta\theta} = 2E[\tilde x\tilde x^\top 1_{C_k}]` per cell. A UnitLinearRouter's raw parameters are
    chained in (with the curvature of its normalisation times the first variation).

    Exact (Gaussian moments in closed form) for a LinearRouter or UnitLinearRouter, affine experts, a teacher
    with a linear partition and affine experts and a Gaussian or Gaussian-mixture law, where each interface is cut
    by at most one further direction (``d <= 2``, or two experts and two teacher cells). Refused (``ValueError``)
    where the second variation does not exist: a student interface that coincides with a teacher interface
    (a kink, :func:`shape_derivative` gives the one-sided first variations) or a junction lying on another
    interface.

    Args:
        router, teacher, law: as in :func:`shape_gradient` (exact method).
        experts: fixed LinearExperts, or ``None`` for the profiled experts held fixed.
        profiled: the second variation of :math:`L_0^{prof}` instead (``experts`` must be ``None``).

    Returns:
        :class:`SecondVariation` (gradient ``(p,)``, Hessian ``(p, p)``).
    """
    return _second_variation(router, teacher, law, experts, bool(profiled), "shape_hessian_matrix")


def shape_hessian(router, teacher, law, direction, direction2=None, experts=None, *, profiled: bool = False) -> float:
    r"""Second variation of the hard risk along a router direction η (or mixed, along η and η₂), exact.

    .. math:: D^2_{\eta\eta_2}L_0 = \frac{\partial^2}{\partial t\,\partial t_2}
              L_0(\varphi + t\eta + t_2\eta_2)\Big|_{0}

    at fixed experts (``experts``, or the profiled experts held fixed when ``None``), or with ``profiled=True``
    the second variation of :math:`L_0^{prof}` along the full tangent :math:`(\eta, D\theta^*(\varphi)\eta)`
    (Assumption 5.14: negative at a hard saddle). Formula, applicability and refusals:
    :func:`shape_hessian_matrix`.

    Args:
        router: LinearRouter or UnitLinearRouter; teacher, law: as in :func:`shape_gradient`.
        direction, direction2: ``{name: tensor}`` over the router's raw parameters or pairs ``(dW, db)``
            (``direction2=None``: the same as ``direction``).
        experts: fixed LinearExperts or ``None``; profiled: see above.

    Returns:
        the second variation (float).
    """
    where = "shape_hessian"
    _linear_router(router, where)
    params = _router_tensors(router)
    e1 = torch.cat([t.reshape(-1) for t in _tangent(params, direction, "direction", where)])
    e2 = e1 if direction2 is None else torch.cat([t.reshape(-1) for t in _tangent(params, direction2, "direction2",
                                                                                    where)])
    sv = _second_variation(router, teacher, law, experts, bool(profiled), where)
    return float(_np(e1) @ sv.hessian @ _np(e2))


def hard_derivatives(moe, teacher, law) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact gradient and Hessian of the hard risk :math:`L_0(\theta, \varphi)` (2.11) in all of an MoE's trainable
    parameters, in ``moe.named_parameters()`` order (the order of
    :class:`~softhard.dynamics.params.ParamSpace`).

    Blocks: router–router from :func:`shape_hessian_matrix` (fixed experts); expert–expert
    :math:`\partial^2_{\theta_k}L_0 = 2E[\tilde x\tilde x^\top 1_{C_k}]`; router–expert
    :math:`\partial_\eta\partial_{\theta_k}L_0 = -2\sum_{l\ne k}\psi_{kl}(0)E[\tilde x\,(f^*-h_k)\,s_{kl}\,
    1_{R_{kl}}\mid g_{kl}=0]` (the cell :math:`C_k` gains where :math:`s_{kl} > 0`); gradients
    :math:`\partial_{\theta_k}L_0 = -2E[\tilde x(f^* - h_k)1_{C_k}]` and the shape gradient (5.7). Same applicability
    and refusals as :func:`shape_hessian_matrix`; affine experts (:class:`~softhard.model.experts.LinearExperts`).

    Returns:
        ``(gradient (p,), hessian (p, p))``, float64 NumPy arrays.
    """
    where = "hard_derivatives"
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    if not isinstance(moe.experts, LinearExperts):
        fail("moe", where, "an MoE with LinearExperts", type(moe.experts).__name__, TypeError)
    router = moe.router
    W, b, WT, bT, theta, theta_t, comps = _exact_setup(router, teacher, law, moe.experts, where)
    try:
        grad, H, Bmix, A = _second_order(W, b, WT, bT, theta, theta_t, comps)
    except _Refused as e:
        fail("moe", where, "an MoE whose interfaces are transverse to the teacher's, with non-degenerate junctions "
             "(where the second variation exists)", str(e))
    except SpanError as e:
        fail("law", where, "such that every interface is cut by at most one further direction (d <= 2, or two "
                           "experts and two teacher cells)", f"{e.args[0]} directions")
    K, D = A.shape[0], A.shape[1]
    M = exact_cell_moments(router, teacher, law, where)
    bvec = np.einsum("kmab,mb->ka", M, theta_t)
    g_theta = (-2.0 * (bvec - np.einsum("kab,kb->ka", A, theta))).ravel()
    J, second = _raw_chain(router, _router_tensors(router))
    H = 0.5 * (H + H.T)
    H_rr = J.T @ H @ J + second(grad)
    H_re = np.concatenate([J.T @ Bmix[k].T for k in range(K)], 1)  # (p_raw, K(d+1)), θ_k blocks
    H_ee = np.zeros((K * D, K * D))
    for k in range(K):
        H_ee[k * D:(k + 1) * D, k * D:(k + 1) * D] = 2.0 * A[k]
    g_full = np.concatenate([J.T @ grad, g_theta])
    H_full = np.block([[H_rr, H_re], [H_re.T, H_ee]])
    # positions of the named parameters in the full vector [router raw..., θ_0, ..., θ_{K-1}]
    p_raw = J.shape[1]
    raw_names = list(_router_tensors(router))
    offsets = np.cumsum([0] + [t.numel() for t in _router_tensors(router).values()])
    idx = []
    for name, prm in moe.named_parameters():
        if name.startswith("router.") and name[7:] in raw_names:
            i = raw_names.index(name[7:])
            idx += list(range(offsets[i], offsets[i + 1]))
        elif name == "experts.weight":
            idx += [p_raw + k * D + j for k in range(K) for j in range(D - 1)]
        elif name == "experts.bias":
            idx += [p_raw + k * D + D - 1 for k in range(K)]
        else:
            fail("moe", where, "an MoE whose trainable parameters are the router's weight/bias and the experts' "
                 "weight/bias", name)
    idx = np.asarray(idx, dtype=int)
    return g_full[idx], H_full[np.ix_(idx, idx)]
