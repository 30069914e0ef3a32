r"""Lines through a Gaussian (mixture) law with the Crofton weight [beyond]: unbiased surface integrals for any
router.

Lines :math:`X(t) = m + L(z + t e)`, e uniform on the sphere, z standard normal on :math:`e^\perp`,
t ~ N(0, 1). Crossings of a level set are found on a grid (refined near the set) and by Illinois regula
falsi; for a surface :math:`\Sigma = \{f = c\}` and :math:`H \ge 0`

.. math:: \int_\Sigma \frac{p\,H}{|\nabla f|}\,dH^{d-1}
          = \frac{1}{\kappa_d}\,E\Big[\sum_{t_c:\,f(X(t_c)) = c}
            \frac{\varphi(t_c)\,H(X(t_c))}{|L^\top\nabla f(X(t_c))|}\Big],
          \qquad \kappa_d = E|e_1| = \frac{\Gamma(d/2)}{\sqrt\pi\,\Gamma((d+1)/2)},

unbiased with bounded terms where :math:`|\nabla f| \ge c_0` (Assumption 3.4), even for lines that cross
several times. It gives ψ_ij(0) (3.8), β(w) (level sets of Δ at a random level :math:`s = wU`) and
:math:`G_1`. Derivation: ``docs/estimators.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import DTYPE
from ..closed.normal import phi
from ..closed.risk import g1_bracket
from ..model.gates import top_two
from ..model.moe import HardTeacher, MoE, Teacher
from ..model.routers import cast_to_module
from .reducer import Estimate, Sampling
from .score_space import StandardDraws, by_component, gaussian_factors, pick_component, run_conditional

__all__ = ["crofton_constant", "coarea_lines", "boundary_mass_lines", "gap_slope_lines", "line_draw_seconds"]


_T_MAX = 6.0  # lines are searched on t ∈ [-6, 6]: crossings beyond carry weight φ(t) < 6.1e-9


_GRID = 32  # coarse cells on [-T, T]


_REFINE = 8  # sub-cells of a flagged cell


_DEPTH = 3  # levels of refinement where the winner changes twice inside a sub-cell


_ROOT_TOL = 1e-11  # bracket width at which a crossing is accepted


_ROOT_ITERS = 60


def crofton_constant(d: int) -> float:
    r""":math:`\kappa_d = E|e\cdot n| = \Gamma(d/2)/(\sqrt\pi\,\Gamma((d+1)/2))` for e uniform on the unit
    sphere of ℝ^d and any unit vector n (κ_1 = 1, κ_2 = 2/π)."""
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


class _Lines:
    r"""Lines :math:`X(t) = x_0 + t\,\dot x` with :math:`x_0 = m_c + L_c z`, :math:`\dot x = L_c e` from draws
    ``(N, 2 + 2d)`` = (component uniform, level uniform, ξ (d), η (d)): :math:`e = \eta/|\eta|`,
    :math:`z = \xi - (\xi\cdot e)e`. Then ``X(t)`` with ``t ~ N(0, 1)`` has the law of the component."""

    def __init__(self, router, law):
        self.router, self.d = router, law.d
        self.weights, self.means, self.factors = gaussian_factors(law)
        self.kappa = crofton_constant(law.d)

    @property
    def draws(self) -> StandardDraws:
        return StandardDraws(2, 2 * self.d)

    def setup(self, draws: torch.Tensor):
        dev, d = draws.device, self.d
        self.comp = pick_component(self.weights, draws[:, 0])
        self.level = draws[:, 1]
        xi, eta = draws[:, 2:2 + d], draws[:, 2 + d:]
        e = eta / eta.norm(dim=1, keepdim=True)
        z = xi - (xi * e).sum(1, keepdim=True) * e
        self.x0, self.dx = torch.empty_like(z), torch.empty_like(z)
        F = [f.to(dev) for f in self.factors]
        by_component(self.comp, len(self.means), lambda c, m: (self.means[c].to(dev) + z[m] @ F[c].T, e[m] @ F[c].T),
                      self.x0, self.dx)

    def logits(self, rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Router logits at ``X(t)``: ``rows (B,)`` line indices, ``t (B, m)`` -> ``(B, m, K)``."""
        x = self.x0[rows, None, :] + t[..., None] * self.dx[rows, None, :]
        a = self.router(cast_to_module(self.router, x.reshape(-1, self.d)))
        return a.to(DTYPE).reshape(*t.shape, a.shape[-1])

    def point(self, rows, t):
        return self.x0[rows] + t[:, None] * self.dx[rows]

    def grad_norm(self, rows: torch.Tensor, t: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        r""":math:`|L_c^\top \nabla_x (a_i - a_j)|` at ``X(t)`` (per-row pairs), by autograd: ``(B,)``."""
        x = cast_to_module(self.router, self.point(rows, t)).detach().requires_grad_(True)
        with torch.enable_grad():
            a = self.router(x)
            (g,) = torch.autograd.grad((a.gather(1, i[:, None]) - a.gather(1, j[:, None])).sum(), x)
        g = g.to(DTYPE)
        out = torch.empty(g.shape[0], dtype=DTYPE, device=g.device)
        by_component(self.comp[rows], len(self.means), lambda c, m: ((g[m] @ self.factors[c].to(g)).norm(dim=1),),
                      out)
        return out


def _near(v: torch.Tensor) -> torch.Tensor:
    """Cells ``(N, G)`` of grid values ``v (N, G+1)`` where ``|v|`` comes within the largest change of ``v``
    over the cell and its two neighbours of 0: where a pair of crossings could hide inside the cell."""
    step = (v[:, 1:] - v[:, :-1]).abs()
    step = torch.maximum(step, torch.maximum(torch.nn.functional.pad(step[:, 1:], (0, 1)),
                                             torch.nn.functional.pad(step[:, :-1], (1, 0))))
    return torch.minimum(v[:, 1:].abs(), v[:, :-1].abs()) <= step


def _pair_value(a: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """:math:`a_i - a_j` for logits ``a (B, K)`` and per-row indices ``i, j (B,)``."""
    return a.gather(1, i[:, None])[:, 0] - a.gather(1, j[:, None])[:, 0]


def _illinois(fn, tl: torch.Tensor, tr: torch.Tensor, fl: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
    """Roots of ``fn(idx, t) -> (B,)`` in the brackets ``[tl, tr]`` (``fl > 0`` and ``fr <= 0`` or the reverse),
    vectorised over brackets: the Illinois variant of regula falsi (superlinear; the bracket is kept)."""
    tl, tr, fl, fr = tl.clone(), tr.clone(), fl.clone(), fr.clone()
    side = torch.zeros_like(tl)
    active = torch.arange(tl.shape[0], device=tl.device)
    for _ in range(_ROOT_ITERS):
        active = active[(tr[active] - tl[active]) > _ROOT_TOL]
        if active.numel() == 0:
            break
        a, b, fa, fb, sd = tl[active], tr[active], fl[active], fr[active], side[active]
        tm = (a * fb - b * fa) / (fb - fa)
        tm = torch.where((tm > a) & (tm < b), tm, 0.5 * (a + b))
        fm = fn(active, tm)
        right = (fm > 0) == (fa > 0)  # the root is in [tm, b]
        tl[active], fl[active] = torch.where(right, tm, a), torch.where(right, fm, torch.where(sd == -1, fa / 2, fa))
        tr[active], fr[active] = torch.where(right, b, tm), torch.where(right, torch.where(sd == 1, fb / 2, fb), fm)
        side[active] = right.to(side) * 2 - 1
        hit = active[fm == 0]
        tl[hit] = tr[hit] = tm[fm == 0]
    return 0.5 * (tl + tr)


@dataclass
class _Level:
    """Cells ``[ts[f, k], ts[f, k+1]]`` of lines ``rows[f]`` with logits ``a (F, R+1, K)`` at the points;
    ``leaf (F, R)``: the sub-cells not refined further."""

    rows: torch.Tensor
    ts: torch.Tensor
    a: torch.Tensor
    leaf: torch.Tensor


def _dips(v: torch.Tensor) -> torch.Tensor:
    """Cells ``(F, R)`` of fine-grid values ``v (F, R+1)`` where ``|v|`` may dip to 0 and back inside the cell:
    ``|v|`` falls into the cell and rises out of it (neighbouring slopes), and the smaller endpoint value is
    within the second difference there (16 times a parabola's dip over one cell)."""
    d = v[:, 1:] - v[:, :-1]
    before = torch.cat([d[:, :1], d[:, :-1]], 1)
    after = torch.cat([d[:, 1:], d[:, -1:]], 1)
    sgn = torch.where(v[:, :-1] > 0, 1.0, -1.0).to(v)
    return (before * sgn < 0) & (after * sgn > 0) & (torch.minimum(v[:, 1:].abs(), v[:, :-1].abs())
                                                      <= (after - before).abs())


class _Scan:
    """Router logits along lines: a coarse grid of ``t ∈ [-6, 6]``; the cells that ``flag(logits (N, G+1, K))
    -> (N, G)`` selects refined into ``_REFINE`` sub-cells; and, up to ``_DEPTH`` levels, sub-cells refined
    again where a watched function ``watch(logits) -> [(F, R+1), ...]`` may dip to 0 and back inside
    (:func:`_dips`) or, with ``changes``, where the winner changes twice. A leaf sub-cell is taken to
    hold at most one crossing of each watched function."""

    def __init__(self, lines: _Lines, flag, watch, changes: bool = False):
        N, dev = lines.x0.shape[0], lines.x0.device
        t = torch.linspace(-_T_MAX, _T_MAX, _GRID + 1, dtype=DTYPE, device=dev)
        a = lines.logits(torch.arange(N, device=dev), t.expand(N, -1))
        rows, cell = flag(a).nonzero(as_tuple=True)
        self.lines, self.missed, self.changes = lines, 0, []
        self.levels = [self._level(rows, t[cell], t[cell + 1], a[rows, cell], a[rows, cell + 1])]
        L = 0
        while L < len(self.levels):
            lev, last = self.levels[L], L + 1 >= _DEPTH
            refine = torch.zeros_like(lev.leaf)
            if not last:
                for v in watch(lev.a, lev.rows):
                    refine |= _dips(v)
                if changes:  # Δ dips to 0 where the winner changes: that V is resolved, not refined
                    win = lev.a.argmax(-1)
                    refine &= win[:, 1:] == win[:, :-1]
            if changes:
                f, k, tc, i, j, ok = self._winner_changes(lev, lev.leaf & ~refine)
                if last:
                    self.missed += int((~ok).sum())
                else:
                    refine[f[~ok], k[~ok]] = True
                self.changes.append((f[ok], k[ok], tc[ok], i[ok], j[ok], f[~ok], k[~ok]))
            if bool(refine.any()):
                lev.leaf &= ~refine
                bf, bk = refine.nonzero(as_tuple=True)
                self.levels.append(self._level(lev.rows[bf], lev.ts[bf, bk], lev.ts[bf, bk + 1], lev.a[bf, bk],
                                               lev.a[bf, bk + 1]))
            L += 1

    def _level(self, rows, t0, t1, a0, a1) -> _Level:
        ts = t0[:, None] + (t1 - t0)[:, None] * torch.linspace(0, 1, _REFINE + 1, dtype=DTYPE, device=t0.device)
        a = torch.cat([a0[:, None], self.lines.logits(rows, ts[:, 1:-1]), a1[:, None]], 1)
        return _Level(rows, ts, a, torch.ones(ts.shape[0], _REFINE, dtype=torch.bool, device=ts.device))

    def roots(self, lev: _Level, f, k, value):
        """Roots of ``value(logits (B, K), idx) -> (B,)`` in the sub-cells ``(f, k)`` (a sign change there)."""
        r = lev.rows[f]
        fn = lambda idx, tt: value(self.lines.logits(r[idx], tt[:, None])[:, 0], idx)  # noqa: E731
        ar = torch.arange(f.shape[0], device=f.device)
        return _illinois(fn, lev.ts[f, k], lev.ts[f, k + 1], value(lev.a[f, k], ar), value(lev.a[f, k + 1], ar))

    def pair_crossings(self, i: int, j: int):
        """All crossings ``(rows, t_c)`` of :math:`g_{ij} = 0` (leaf sub-cells with a sign change)."""
        out_r, out_t = [], []
        for lev in self.levels:
            g = lev.a[..., i] - lev.a[..., j]
            f, k = (((g[:, 1:] > 0) != (g[:, :-1] > 0)) & lev.leaf).nonzero(as_tuple=True)
            out_r.append(lev.rows[f])
            out_t.append(self.roots(lev, f, k, lambda la, idx: la[:, i] - la[:, j]))
        return torch.cat(out_r), torch.cat(out_t)

    def _winner_changes(self, lev: _Level, leaf: torch.Tensor):
        """``(f, k, t_c, i, j, ok)`` for the sub-cells ``(f, k)`` of ``leaf`` where the winner changes from i
        (before ``t_c``) to j (after); ``ok``: i and j are the top two at ``t_c`` (else two changes hide there)."""
        win = lev.a.argmax(-1)
        f, k = ((win[:, 1:] != win[:, :-1]) & leaf).nonzero(as_tuple=True)
        i, j = win[f, k], win[f, k + 1]
        tc = self.roots(lev, f, k, lambda la, idx: _pair_value(la, i[idx], j[idx]))
        la = self.lines.logits(lev.rows[f], tc[:, None])[:, 0]
        rest = la.scatter(1, i[:, None], -math.inf).scatter(1, j[:, None], -math.inf).amax(1)
        ok = torch.minimum(la.gather(1, i[:, None]), la.gather(1, j[:, None]))[:, 0] >= rest
        return f, k, tc, i, j, ok

    def winner_changes(self):
        """Crossings of the top-two interface per level: ``(f, k, t_c, i, j, bad_f, bad_k)``, i the winner before
        ``t_c`` and j after, on leaf sub-cells; ``(bad_f, bad_k)``: leaf sub-cells of the last level with two
        changes, left out (counted in ``missed``)."""
        return self.changes

    def level_crossings(self, s: torch.Tensor):
        r"""Crossings ``(rows, t)`` of :math:`\Delta = s_{row}` (``s (N,) > 0``). Δ dips to 0 at every winner
        change, so a sub-cell with a change is split there; sub-cells left out by :meth:`winner_changes`
        are skipped."""
        R, LO, HI, VLO, VHI = [], [], [], [], []
        for lev, (f, k, tc, _, _, bf, bk) in zip(self.levels, self.changes):
            delta = top_two(lev.a)[0] - s[lev.rows, None]  # (F, R+1)
            changed = ~lev.leaf.clone()
            changed[f, k] = changed[bf, bk] = True
            f0, k0 = (((delta[:, 1:] > 0) != (delta[:, :-1] > 0)) & ~changed).nonzero(as_tuple=True)
            left, right = delta[f, k] > 0, delta[f, k + 1] > 0  # Δ = s on [t_k, t_c] / on [t_c, t_k+1]
            fl, kl, fr, kr = f[left], k[left], f[right], k[right]
            sl, sr = s[lev.rows[fl]], s[lev.rows[fr]]
            R += [lev.rows[f0], lev.rows[fl], lev.rows[fr]]
            LO += [lev.ts[f0, k0], lev.ts[fl, kl], tc[right]]
            HI += [lev.ts[f0, k0 + 1], tc[left], lev.ts[fr, kr + 1]]
            VLO += [delta[f0, k0], delta[fl, kl], -sr]
            VHI += [delta[f0, k0 + 1], -sl, delta[fr, kr + 1]]
        rows = torch.cat(R)
        srow = s[rows]
        fn = lambda idx, tt: top_two(self.lines.logits(rows[idx], tt[:, None])[:, 0])[0] - srow[idx]  # noqa: E731
        return rows, _illinois(fn, torch.cat(LO), torch.cat(HI), torch.cat(VLO), torch.cat(VHI))


def _line_run(router, law, terms_of_lines, opts: Sampling, sampling: str, info: dict) -> Estimate:
    """Reduce per-line terms ``terms_of_lines(lines) -> (N, ...)`` with the one reducer."""
    lines = _Lines(router, law)

    def terms(d):
        lines.setup(d)
        return terms_of_lines(lines)

    return run_conditional(terms, lines.draws, opts, sampling,
                           {"estimator": "lines + Crofton weight", "grid": (_T_MAX, _GRID, _REFINE), **info})


def coarea_lines(router, law, pair: tuple[int, int], opts: Sampling, sampling: str = "qmc") -> Estimate:
    r"""Line estimate of the coarea constant :math:`\psi_{ij}(0)` (3.8) for any router under a Gaussian
    (mixture) law (module docstring, item 3; unbiased, no bandwidth):

    .. math:: \psi_{ij}(0) = \frac1{\kappa_d} E\Big[\sum_{t_c:\,g_{ij}(X(t_c)) = 0}
              \frac{\varphi(t_c)}{|L^\top \nabla g_{ij}(X(t_c))|}\Big].
    """
    i, j = pair

    def terms(lines):
        g = lambda a, rows: [a[..., i] - a[..., j]]  # noqa: E731
        rows, tc = _Scan(lines, lambda a: _near(a[..., i] - a[..., j]), g).pair_crossings(i, j)
        I = torch.full_like(rows, i)
        gn = lines.grad_norm(rows, tc, I, torch.full_like(rows, j))
        return _scatter(lines.x0.shape[0], rows, phi(tc) / (lines.kappa * gn))

    return _line_run(router, law, terms, opts, sampling, {})


def boundary_mass_lines(router, law, widths: torch.Tensor, opts: Sampling, sampling: str = "qmc") -> Estimate:
    r"""Line estimate of β(w) (2.13) for any router under a Gaussian (mixture) law: with a level
    :math:`s = wU`, U ~ U(0, 1) (module docstring, item 3, applied to the level sets of Δ),

    .. math:: \beta(w) = \int_0^w f_\Delta(s)\,ds = w\,E\Big[\frac1{\kappa_d}\sum_{t_c:\,\Delta(X(t_c)) = s}
              \frac{\varphi(t_c)}{|L^\top\nabla(a_{(1)} - a_{(2)})(X(t_c))|}\Big],

    so the relative variance does not grow as w → 0. ``widths (W,)``; returns an :class:`Estimate` over them.
    """
    w = widths.to(DTYPE)
    missed = [0]

    def terms(lines):
        N = lines.x0.shape[0]
        s = lines.level[:, None] * w.to(lines.level)[None, :]  # (N, W)

        def flag(a):  # cells near Δ = 0 or Δ = s, or with a change of winner
            delta, win, _ = top_two(a)
            near = _near(delta) | (win[:, 1:] != win[:, :-1])
            for q in range(s.shape[1]):
                near |= _near(delta - s[:, q:q + 1])
            return near

        def watch(a, rows):
            delta = top_two(a)[0]
            return [delta] + [delta - s[rows, q, None] for q in range(s.shape[1])]

        scan = _Scan(lines, flag, watch, changes=True)
        out = torch.zeros(N, w.shape[0], dtype=DTYPE, device=lines.x0.device)
        for q in range(w.shape[0]):
            if float(w[q]) == 0.0:
                continue
            rows, tc = scan.level_crossings(s[:, q])
            la = lines.logits(rows, tc[:, None])[:, 0]
            _, i, j = top_two(la)
            out[:, q] = float(w[q]) * _scatter(N, rows, phi(tc) / (lines.kappa * lines.grad_norm(rows, tc, i, j)))
        missed[0] += scan.missed
        return out

    est = _line_run(router, law, terms, opts, sampling, {})
    return est.replace(info={"unresolved_crossings": missed[0]})


def gap_slope_lines(moe: MoE, law, teacher: Teacher, opts: Sampling, sampling: str = "qmc") -> Estimate:
    r"""Line estimate of :math:`G_1` (paper.md §3 [beyond]) for any MoE under a Gaussian (mixture) law:

    .. math:: G_1 = \frac1{\kappa_d} E\Big[\sum_{t_c} \frac{\varphi(t_c)}{|L^\top\nabla g_{ij}|}
              \big[(2\ln2 - 1)D^2 + 2\ln2\,(D(f^*_+ - h_i) - D(f^*_- - h_j))\big](X(t_c))\Big]

    over the crossings :math:`t_c` of the top-two interface, i the winner before and j after,
    :math:`D = h_i - h_j`, :math:`f^*_\pm` the teacher just before / after (``t_c ∓ 1e-7``; exact traces
    for the student's own hard model).
    """
    same = isinstance(teacher, HardTeacher) and teacher.moe is moe
    missed = [0]

    def terms(lines):
        N = lines.x0.shape[0]
        scan = _Scan(lines, lambda a: _near(top_two(a)[0]) | (a.argmax(-1)[:, 1:] != a.argmax(-1)[:, :-1]),
                     lambda a, rows: [top_two(a)[0]], changes=True)
        changes = scan.winner_changes()
        missed[0] += scan.missed
        rows = torch.cat([lev.rows[c[0]] for lev, c in zip(scan.levels, changes)])
        tc, i, j = (torch.cat([c[q] for c in changes]) for q in (2, 3, 4))
        x = lines.point(rows, tc)
        h = moe.experts(cast_to_module(moe.experts, x)).to(DTYPE)
        hi_, hj = h.gather(1, i[:, None])[:, 0], h.gather(1, j[:, None])[:, 0]
        if same:
            fp, fm = hi_, hj
        else:
            fp = teacher._signal(lines.point(rows, tc - 1e-7)).to(DTYPE)
            fm = teacher._signal(lines.point(rows, tc + 1e-7)).to(DTYPE)
        D = hi_ - hj
        bracket = g1_bracket(D, fp, hi_, fm, hj)
        return _scatter(N, rows, phi(tc) * bracket / (lines.kappa * lines.grad_norm(rows, tc, i, j)))

    est = _line_run(moe.router, law, terms, opts, sampling, {})
    return est.replace(info={"unresolved_crossings": missed[0]})


def _scatter(n: int, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=DTYPE, device=v.device).index_add_(0, rows, v)


def line_draw_seconds(router, law, evaluations: int = 150) -> float:
    """Cost model of one line (seconds, one thread): its two Gaussian vectors and about ``evaluations`` router
    evaluations (grid, refinement, roots; 100 for β and 55 for ψ(0) on the K = 4 MLP, docs/estimators.md §3)."""
    from .reducer import draw_seconds
    from .registry import evaluation_seconds

    return 2e-5 + 2 * draw_seconds(law) + evaluations * evaluation_seconds(router, law.d)
