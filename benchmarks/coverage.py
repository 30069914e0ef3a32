"""Coverage of the reported 95 % intervals of the conditional and kernel estimators, ordinary and tail cases.

For every case of the grid (linear routers with K = 2, 3, 5, 8 experts in d = 2 under N((z, 0), I), z = 0, 2.5, 5
standard deviations, expert 0 pointing at the mean so that the interfaces move into the tail as z grows; and the
two tail reproducers of issue 19) and every estimator, ``Estimate.interval(0.95)`` is computed for ``--seeds``
seeds (400 by default) and compared with an independent reference (``benchmarks/references.py``: SciPy
quadrature of the definitions, no softhard code). Reported per cell: coverage with its binomial 95 % interval,
mean |z| (z = error ÷ (half-width of the 95 % interval / 1.96), the error in units of the reported uncertainty,
which for K = 2 is the rounding bound, every draw giving the same value; honest: 0.80 for a normal interval, 0.76
for QMC's t₁₅ one), runs declined (a kernel that predicts fewer than 100 samples in
its window declines with the reason) and seconds per run.

Usage: ``python benchmarks/coverage.py [--seeds 400] [--cases LABEL ...] [--cell-seconds S] [--out
benchmarks/coverage.json]`` (``--cases``: only the cases whose label contains one of these; ``--cell-seconds``: a
cell stops after S seconds and reports its coverage over the seeds it ran, in ``runs``); ``benchmarks/run.py
--cases coverage`` runs it too. One thread; about an hour for 400 seeds on a quiet machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import references as ref  # noqa: E402

import softhard as sh  # noqa: E402

WIDTH, TAU = 0.01, 0.05
KS, SHIFTS = (2, 3, 5, 8), (0.0, 2.5, 5.0)


def design(K: int):
    """Router ``(W, b)`` and experts ``(E, c)`` in d = 2: expert k points at angle 2πk/K, perturbed (seed K)."""
    rng = np.random.default_rng(K)
    ang = 2 * np.pi * np.arange(K) / K
    W = np.stack([np.cos(ang), np.sin(ang)], 1) + 0.15 * rng.standard_normal((K, 2))
    b = 0.1 * rng.standard_normal(K)
    return W, b, rng.standard_normal((K, 2)) / 2, 0.3 * rng.standard_normal(K)


def cases():
    """``(label, W, b, E, c, mean, estimators)``: the grid, then the issue's two tail reproducers (β only)."""
    out = [(f"K={K} z={z:g}", *design(K), [z, 0.0], "all") for K in KS for z in SHIFTS]
    W3 = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]])
    out.append(("reproducer 3: K=3 z=5.2", W3, np.zeros(3), None, None, [5.2, 0.0], "beta"))
    ang = 2 * np.pi * np.arange(6) / 6
    out.append(("regular K=6 z=4.5", np.stack([np.cos(ang), np.sin(ang)], 1), np.zeros(6), None, None, [4.5, 0.0],
                "beta"))
    return out


def estimators(W, b, E, c, mean):
    """``name -> (run(seed) -> Estimate, reference ())``."""
    law = sh.Gaussian(mean, np.eye(2))
    router = sh.LinearRouter(W, b)
    Wp, bp = ref.whiten(W, b, mean, np.eye(2))
    out = {"conditional beta(0.01), QMC n=4096": (
        lambda s: sh.boundary_mass(router, law, WIDTH, method="conditional", n=4096, seed=s),
        lambda: ref.beta(Wp, bp, WIDTH))}
    if E is None:
        return out
    moe = sh.MoE(router, sh.LinearExperts(E, c))
    Ep, cp = ref.whiten(E, c, mean, np.eye(2))
    out.update({
        "conditional gap(0.05), QMC n=1024": (
            lambda s: sh.risk_gap(moe, law, TAU, method="conditional", n=1024, seed=s),
            lambda: ref.risk_gap(Wp, bp, Ep, cp, TAU)),
        "conditional G1, QMC n=2048": (
            lambda s: sh.gap_slope(moe, law, method="conditional", n=2048, seed=s),
            lambda: ref.gap_slope(Wp, bp, Ep, cp)),
        "kernel psi_01(0), MC n=2^16": (
            lambda s: sh.coarea_constant(router, law, (0, 1), method="kernel", n=1 << 16, seed=s),
            lambda: ref.pair_density(Wp, bp, 0, 1)),
        "kernel C_Sigma, MC n=2^16": (
            lambda s: sh.interface_constant(router, law, method="kernel", n=1 << 16, seed=s),
            lambda: ref.interface_constant(Wp, bp)),
        "kernel G1, MC n=2^16": (
            lambda s: sh.gap_slope(moe, law, method="kernel", n=1 << 16, seed=s),
            lambda: ref.gap_slope(Wp, bp, Ep, cp)),
    })
    return out


def cell(run, truth: float, seeds, budget: float = math.inf) -> dict:
    """Coverage over ``seeds`` (in order), stopping after ``budget`` seconds of the cell (the seeds run so far count)."""
    hits, zs, declined, reason, secs, n = 0, [], 0, None, [], 0
    start = time.perf_counter()
    for s in seeds:
        if time.perf_counter() - start > budget:
            break
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = run(s)
        except ValueError as e:
            if "must be a method that applies here" not in str(e):
                raise
            declined += 1
            reason = str(e).split("needs ", 1)[-1].split(". Got")[0]
            continue
        secs.append(time.perf_counter() - t0)
        lo, hi = est.interval(0.95)
        hits += bool(lo <= truth <= hi)
        half = (hi - lo) / (2 * 1.96)  # the reported uncertainty: stderr, or the rounding bound where it dominates
        zs.append((est.value - truth) / half if half > 0 else math.inf * np.sign(est.value - truth))
        n += 1
    out = {"runs": n, "declined": declined, "reason": reason, "truth": truth}
    if n:
        lo, hi = stats.binomtest(hits, n).proportion_ci(0.95) if n else (math.nan, math.nan)
        out.update(coverage=hits / n, coverage_ci=[lo, hi], mean_abs_z=float(np.mean(np.abs(zs))),
                   seconds=float(np.mean(secs)))
    return out


def run(n_seeds: int = 400, out: str | Path | None = None, only=None, budget: float = math.inf) -> dict:
    """``only``: labels (substrings) of the cases to run; ``budget``: seconds per cell (fewer seeds where it ends)."""
    torch.set_num_threads(1)
    seeds = range(n_seeds)
    results = []
    for label, W, b, E, c, mean, _ in cases():
        if only and not any(o in label for o in only):
            continue
        for name, (fn, truth) in estimators(W, b, E, c, mean).items():
            t0 = time.perf_counter()
            r = cell(fn, float(truth()), seeds, budget)
            r.update(case=label, estimator=name, seeds=n_seeds, cell_seconds=time.perf_counter() - t0)
            results.append(r)
            print(row(r), flush=True)
    entry = {"case": f"coverage of the reported 95 % intervals, {n_seeds} seeds per cell", "seeds": n_seeds,
             "results": results}
    if out is not None:
        Path(out).write_text(json.dumps(entry, indent=1))
    return entry


def row(r: dict) -> str:
    if not r["runs"]:
        return f"| {r['case']} | {r['estimator']} | declined ({r['declined']}/{r['declined']}): {r['reason']} | | | |"
    lo, hi = r["coverage_ci"]
    dec = f" ({r['declined']} declined)" if r["declined"] else ""
    if r["runs"] + r["declined"] < r.get("seeds", 0):
        dec += f" ({r['runs'] + r['declined']} of {r['seeds']} seeds: --cell-seconds)"
    return (f"| {r['case']} | {r['estimator']} | {r['coverage']:.1%} [{lo:.1%}, {hi:.1%}]{dec} | "
            f"{r['mean_abs_z']:.2f} | {r['truth']:.6g} | {r['seconds']:.3f} |")


def table(entry: dict) -> str:
    head = ["| case | estimator | coverage [95 % CI] | mean abs z | reference | s/run |", "|---|---|---|---|---|---|"]
    return "\n".join(head + [row(r) for r in entry["results"]])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--out", default="benchmarks/coverage.json")
    ap.add_argument("--cases", nargs="*", help="run only the cases whose label contains one of these")
    ap.add_argument("--cell-seconds", type=float, default=math.inf,
                    help="stop a cell after this many seconds (its coverage over the seeds run so far)")
    args = ap.parse_args(argv)
    print(table(run(args.seeds, args.out, args.cases, args.cell_seconds)))


if __name__ == "__main__":
    main()
