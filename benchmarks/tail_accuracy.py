"""Issue 19: accuracy of the Gaussian closed forms in the tails and under ill-conditioning, against 50-digit mpmath,
and the cost of the exact paths.

Usage::

    # before: main's code before issue 19 (a checkout of it under /tmp/before)
    PYTHONPATH=/tmp/before/src python benchmarks/tail_accuracy.py --cases binary k3 --label before \
        --out benchmarks/tail_accuracy.json
    PYTHONPATH=src python benchmarks/tail_accuracy.py --cases binary k3 kexperts cost --label after \
        --out benchmarks/tail_accuracy.json
    python benchmarks/tail_accuracy.py --table --out benchmarks/tail_accuracy.json   # the tables, side by side

``binary`` and ``k3`` use only the public API that main had before issue 19 (``boundary_mass``), so the "before"
column is this script run with ``PYTHONPATH`` pointing at main's ``src``. Every reference is computed here in
50-digit mpmath from the float64 inputs as given (the float64 matrices are the exact problem):

- ``binary``: β(0.001) of a binary router whose interface sits z = 0..37 standard deviations out (issue 19,
  reproducer 2): relative error and the reported ``error_bound``;
- ``k3``: K = 3 experts in d = 2 (logits of rank 2, correlated) under a law with condition number 1e10, the leading
  expert ahead by 0..52 (β from 1e-2 down to 1e-242);
- ``kexperts``: K = 3..6 with exactly independent logits built from laws of condition number 1 to 1e12 (given by an
  exact factor), shifts 0 to 30σ: |error| against ``error_bound`` (the bound must hold) and seconds;
- ``cost``: seconds of one box probability by its number of levels (the constants of
  ``softhard.closed.boundary.box_seconds``) and of ``boundary_mass(method="exact")`` for K = 3..7 beside its
  prediction.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mpmath  # noqa: E402
import numpy as np  # noqa: E402

import softhard as sh  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# the 50-digit references the tests check against (mpmath.mp.dps = 50 is set there)
from test_closed_tails import ill_conditioned, k3_reference, mass_ref, quad_scaled  # noqa: E402


def rel(value, ref) -> float:
    return float(abs(mpmath.mpf(float(value)) - ref) / ref) if ref != 0 else (0.0 if value == 0 else math.inf)


def estimate(fn):
    """``(value, error_bound, error)``; an exception (an underflow error) is reported by name."""
    try:
        est = fn()
        return float(est.value), float(getattr(est, "error_bound", 0.0)), None
    except Exception as e:  # noqa: BLE001 - the benchmark reports what the library did
        return None, None, type(e).__name__


def case_binary() -> list[dict]:
    rows = []
    for z in range(0, 38):
        router = sh.LinearRouter.binary([1.0, 0.0], b=float(z))
        v, bound, err = estimate(lambda: sh.boundary_mass(router, sh.Gaussian.standard(2), 0.001))
        ref = mass_ref(-z - 0.001, -z + 0.001)
        rows.append({"z": z, "reference": float(ref), "value": v, "error_bound": bound, "exception": err,
                     "rel_error": None if v is None else rel(v, ref),
                     "bound_holds": None if v is None else bool(abs(mpmath.mpf(v) - ref) <= mpmath.mpf(bound))})
    for z in (38.5, 39.0, 40.0):  # beyond the float64 range
        router = sh.LinearRouter.binary([1.0, 0.0], b=z)
        v, bound, err = estimate(lambda: sh.boundary_mass(router, sh.Gaussian.standard(2), 0.001))
        rows.append({"z": z, "reference": mpmath.nstr(mass_ref(-z - 0.001, -z + 0.001), 4), "value": v,
                     "error_bound": bound,
                     "exception": err, "rel_error": None, "bound_holds": None})
    return rows


def case_k3() -> list[dict]:
    S = ill_conditioned(2, 1e10, 11)
    lam, V = np.linalg.eigh(S)
    W = np.array([[1.0, 0.3], [-0.4, 1.0], [0.2, -0.8]]) @ np.stack([V[:, 1], V[:, 0] * 1e5])
    w, rows = 0.02, []
    for lead in (0.0, 10.0, 20.0, 30.0, 40.0, 52.0):
        b = np.array([lead, 0.0, 0.1])
        total = k3_reference(W, b, np.zeros(2), S, w)
        v, bound, err = estimate(lambda: sh.boundary_mass(sh.LinearRouter(W, b), sh.Gaussian(np.zeros(2), S), w,
                                                          method="exact"))
        rows.append({"lead": lead, "reference": float(total), "value": v, "error_bound": bound, "exception": err,
                     "rel_error": None if v is None else rel(v, total),
                     "bound_holds": None if v is None else bool(abs(mpmath.mpf(v) - total) <= mpmath.mpf(bound))})
    return rows


def _independent(K, d, cond, z, seed):
    """Exactly independent logits from a law given by the exact factor F = Q diag(√λ), Q = I − J/2 on blocks of 4
    (entries ±1/2), router rows c_k Q[:, k]: WF = diag(c_k √λ_k) exactly; expert 0 ahead by z√2 sd."""
    rng = np.random.default_rng(seed)
    Q = np.kron(np.eye(d // 4), np.eye(4) - 0.5 * np.ones((4, 4)))
    lam = np.geomspace(1.0, 1.0 / cond, d)
    rng.shuffle(lam)
    sq = np.sqrt(lam)
    idx = rng.choice(d, K, replace=False)
    c = rng.uniform(0.7, 1.4, K) / sq[idx]
    W = (Q[:, idx] * c).T
    m = rng.normal(0.0, 1.0, d)
    b = np.concatenate([[z * math.sqrt(2.0)], rng.normal(0.0, 0.3, K - 1)]) - W @ m
    sd = [mpmath.mpf(c[k]) * mpmath.mpf(sq[idx[k]]) for k in range(K)]
    means = [mpmath.fsum(mpmath.mpf(x) * mpmath.mpf(y) for x, y in zip(W[k], m)) + mpmath.mpf(b[k]) for k in range(K)]
    return sh.LinearRouter(W, b), sh.Gaussian.from_factor(m, Q * sq), means, sd


def _beta_independent(mu, sd, w):
    K, total = len(mu), mpmath.mpf(0)
    for i in range(K):
        for j in range(K):
            if i == j:
                continue

            def f(y, i=i, j=j):
                inner = mass_ref((y - mu[i]) / sd[i], (y + w - mu[i]) / sd[i])
                rest = mpmath.fprod(mpmath.ncdf((y - mu[k]) / sd[k]) for k in range(K) if k not in (i, j))
                return mpmath.npdf(y, mu[j], sd[j]) * inner * rest
            prec = 1 / sd[i] ** 2 + 1 / sd[j] ** 2
            peak, scale = (mu[i] / sd[i] ** 2 + mu[j] / sd[j] ** 2) / prec, 1 / mpmath.sqrt(prec)
            pts = {float(peak + k * scale) for k in (-10, -4, -1.5, 0, 1.5, 4, 10)}
            pts |= {float(cc + k * s) for cc, s in ((mu[i], sd[i]), (mu[j], sd[j])) for k in (-4, 0, 4)}
            total += quad_scaled(f, [-mpmath.inf] + sorted(pts) + [mpmath.inf], peak)
    return total


KEXPERT_CASES = [(3, 4, 1e12, 30.0, 1e-3), (3, 4, 1.0, 0.0, 0.5), (4, 4, 1e8, 20.0, 1e-3), (4, 4, 1e12, 0.0, 0.3),
                 (4, 8, 1e4, 8.0, 0.05), (5, 8, 1e4, 8.0, 0.01), (5, 8, 1e12, 20.0, 1e-3), (6, 8, 1e12, 3.0, 0.05),
                 (6, 8, 1.0, 12.0, 1e-3)]


def case_kexperts() -> list[dict]:
    from softhard.closed.boundary import boundary_mass_closed

    rows = []
    for K, d, cond, z, w in KEXPERT_CASES:
        router, law, mu, sd = _independent(K, d, cond, z, seed=K * 100 + int(z))
        t0 = time.perf_counter()
        v, bound, forms = boundary_mass_closed(router, law, [w])
        seconds = time.perf_counter() - t0
        ref = _beta_independent(mu, sd, w)
        err = abs(mpmath.mpf(float(v[0])) - ref)
        rows.append({"K": K, "d": d, "cond": cond, "z": z, "w": w, "form": forms[0], "reference": float(ref),
                     "value": float(v[0]), "rel_error": float(err / ref), "error_bound": float(bound[0]),
                     "rel_bound": float(bound[0] / v[0]) if v[0] else None, "bound_holds": bool(err <= bound[0]),
                     "seconds": seconds})
        print(rows[-1], flush=True)
    return rows


def case_cost() -> dict:
    from softhard.closed import boundary, normal

    levels = []
    for q in range(1, 9):
        rng = np.random.default_rng(q)
        F = rng.standard_normal((q, q)) + 2 * np.eye(q)
        times = []
        for s in range(3):
            t0 = time.perf_counter()
            normal.box_probability(rng.normal(0.3, 0.3, q), F, 0.0, seed=s)
            times.append(time.perf_counter() - t0)
        levels.append({"levels": q, "seconds": float(np.median(times)), "predicted": boundary.box_seconds(q)})
        print(levels[-1], flush=True)
    exact = []
    for K in range(3, 8):
        g = np.random.default_rng(K)
        router = sh.LinearRouter(g.standard_normal((K, 8)), g.standard_normal(K) * 0.3)
        law = sh.Gaussian.standard(8)
        for w in (1e-3, 1.0):
            t0 = time.perf_counter()
            sh.boundary_mass(router, law, w, method="exact")
            exact.append({"K": K, "w": w, "seconds": time.perf_counter() - t0,
                          "predicted": boundary.boundary_mass_seconds(router, law, np.array([w]))})
            print(exact[-1], flush=True)
    return {"box_by_levels": levels, "boundary_mass_exact": exact}


CASES = {"binary": case_binary, "k3": case_k3, "kexperts": case_kexperts, "cost": case_cost}


def _fmt(x, spec=".2g"):
    return x if isinstance(x, str) else format(x, spec)


def _cell(r) -> tuple[str, str]:
    """(relative error, error_bound / value) of one row, or what the library did instead."""
    if r is None:
        return "", ""
    if r["exception"]:
        return r["exception"], ""
    if r["rel_error"] is None:
        return f"value {r['value']:.3g}", ""
    bound = "0 (value 0)" if not r["value"] else f"{r['error_bound'] / abs(r['value']):.2g}"
    return f"{r['rel_error']:.2g}", bound


def table(results: dict) -> str:
    """Markdown tables of a results file ``{label: {case: {"rows": ...}}}``: before beside after where both ran."""
    labels = [x for x in ("before", "after") if x in results] or list(results)
    out = []
    for case, key, head in (("binary", "z", "| z | reference β(0.001) |"),
                            ("k3", "lead", "| lead | reference β(0.02) |")):
        runs = {lab: {r[key]: r for r in results[lab][case]["rows"]} for lab in labels if case in results[lab]}
        if not runs:
            continue
        keys = next(iter(runs.values())).keys()
        out += [head + "".join(f" {lab}: rel. error | {lab}: error_bound / β |" for lab in runs),
                "|---|---|" + "---|---|" * len(runs)]
        for k in keys:
            ref = next(iter(runs.values()))[k]["reference"]
            cells = "".join(" {} | {} |".format(*_cell(runs[lab].get(k))) for lab in runs)
            out.append(f"| {k} | {_fmt(ref, '.4g')} |{cells}")
        out.append("")
    if "kexperts" in results.get("after", {}):
        out += ["| K | d | condition | z | w | form | reference β | rel. error | error_bound / β | bound holds | s |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["after"]["kexperts"]["rows"]:
            out.append(f"| {r['K']} | {r['d']} | {r['cond']:.0e} | {r['z']:g} | {r['w']:g} | {r['form']} | "
                       f"{r['reference']:.4g} | {r['rel_error']:.2g} | {r['rel_bound']:.2g} | {r['bound_holds']} | "
                       f"{r['seconds']:.2f} |")
        out.append("")
    if "cost" in results.get("after", {}):
        cost = results["after"]["cost"]["rows"]
        out += ["| levels | box_probability s | predicted |", "|---|---|---|"]
        out += [f"| {r['levels']} | {r['seconds']:.3g} | {r['predicted']:.3g} |" for r in cost["box_by_levels"]]
        out += ["", "| K | w | boundary_mass exact s | predicted |", "|---|---|---|---|"]
        out += [f"| {r['K']} | {r['w']:g} | {r['seconds']:.3g} | {r['predicted']:.3g} |"
                for r in cost["boundary_mass_exact"]]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=["binary", "k3"], choices=list(CASES))
    ap.add_argument("--out", default=None, help="JSON file to merge the results into")
    ap.add_argument("--label", default="after", help="a label stored with the results (e.g. before/after)")
    ap.add_argument("--table", action="store_true", help="only print the tables of --out (before beside after)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    results = {}
    for name in args.cases:
        t0 = time.perf_counter()
        results[name] = {"rows": CASES[name](), "seconds": time.perf_counter() - t0, "label": args.label}
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else {}
        old.setdefault(args.label, {}).update(results)
        path.write_text(json.dumps(old, indent=1, default=float))
    print(table({args.label: results}))


if __name__ == "__main__":
    main()
