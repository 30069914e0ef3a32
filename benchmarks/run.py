"""The issue-8 benchmark suite: time to reach 1% relative standard error, softhard against a plain-NumPy
baseline (``benchmarks/baseline.py``) measured in the same run; sampling throughput; peak memory.

Usage: ``python benchmarks/run.py [--out benchmarks/results.json] [--quick] [--cases gap top2 mlp throughput
memory coverage scale]``. ``--quick`` skips the peak-memory run (1e9 samples, about half an hour) and shortens the others.
Results are merged into ``--out`` (cases not run keep their previous entry) and printed as a table.

How each number is taken (also written into the JSON):

- softhard sampling methods run with ``target_rel_error=0.01`` (and ``min_n`` small) and stop by
  themselves: their time and sample count are measured, not extrapolated;
- the baseline runs a pilot of ``n0`` samples and is extrapolated to 1% by the 1/√n law:
  ``n = n0 (r0 / 0.01)²``, ``time = t0 · n / n0`` (marked ``extrapolated``);
- the kernel estimate of the coarea constant has a bandwidth that shrinks with n (h ∝ n^(-1/4)), so its
  relative error falls like n^(-3/8): it is extrapolated by that law;
- "exact" rows are closed forms (no standard error): their time is the time to compute them.

Everything runs single-threaded (OMP/MKL threads = 1, torch threads = 1) unless the environment sets
otherwise, on whatever CPU this is; other work on the machine slows every row alike, so ratios within
one run are fair. There is no CUDA device here: the CUDA figures are not taken (``device="cuda"`` runs
the same code).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline  # noqa: E402

import softhard as sh  # noqa: E402
from softhard.estimators.reducer import BLOCK, _block_generator  # noqa: E402
from softhard.results.io import atomic_write, to_jsonable  # noqa: E402

TARGET = 0.01
BUDGET = 1 << 30  # sample budget of the early-stopping runs (never reached)


def timed(f, *args, **kw):
    """``(result, seconds)``; a call under 50 ms is repeated (at most 51 times, 0.5 s) and the median is taken."""
    times = []
    while True:
        t0 = time.perf_counter()
        out = f(*args, **kw)
        times.append(time.perf_counter() - t0)
        if times[0] >= 0.05 or len(times) >= 51 or sum(times) > 0.5:
            return out, float(np.median(times))


def rel(value, stderr) -> float:
    return float(abs(stderr) / abs(value))


def softhard_row(name, f, **kw):
    """A softhard estimate run to the target (or a closed form): its time, samples and relative error."""
    est, t = timed(f, **kw)
    value = float(np.asarray(est.value).ravel()[0]) if isinstance(est, sh.Estimate) else float(est)
    stderr = float(np.asarray(est.stderr).ravel()[0]) if isinstance(est, sh.Estimate) else 0.0
    return {"method": name, "value": value, "stderr": stderr, "rel_error": rel(value, stderr) if stderr else 0.0,
            "n": getattr(est, "n", 0), "seconds": t, "extrapolated": False}


def baseline_row(f, n0, *args, law="1/sqrt(n)", power=2.0):
    """The baseline's pilot of ``n0`` samples, extrapolated to the target."""
    (value, stderr), t0 = timed(f, *args, n=n0)
    r0 = rel(value, stderr)
    n = n0 * (r0 / TARGET) ** power
    return {"method": "numpy baseline", "value": float(value), "stderr": float(stderr), "rel_error": TARGET,
            "pilot_n": n0, "pilot_rel_error": r0, "pilot_seconds": t0, "n": int(n), "seconds": t0 * n / n0,
            "extrapolated": f"from the pilot by the {law} law"}


def with_ratios(rows):
    base = next(r for r in rows if r["method"] == "numpy baseline")
    for r in rows:
        r["speedup_vs_baseline"] = base["seconds"] / r["seconds"] if r["seconds"] > 0 else math.inf
        r["samples_vs_baseline"] = base["n"] / r["n"] if r["n"] else None
    return rows


# --- the cases ----------------------------------------------------------------------------------------


def case_gap(quick: bool) -> dict:
    """Binary linear router, linear experts, X ~ N(m, S) in d = 16, teacher = the hard model: L_τ − L_0."""
    moe, law = gap_problem()
    Wr, br = moe.router.weight.numpy(), moe.router.bias.numpy()
    We, be = moe.experts.weight.numpy(), moe.experts.bias.numpy()
    mean, chol = law.mean.numpy(), law.scale_tril.numpy()
    out = {}
    for tau in (1e-2, 1e-3):
        rows = [softhard_row("softhard auto (= exact: 1-d quadrature)", sh.risk_gap, moe=moe, law=law, taus=tau,
                             method="auto"),
                softhard_row("softhard conditional (QMC)", sh.risk_gap, moe=moe, law=law, taus=tau,
                             method="conditional", n=BUDGET, seed=0, target_rel_error=TARGET, min_n=1024),
                softhard_row("softhard plain MC", sh.risk_gap, moe=moe, law=law, taus=tau, method="mc", n=BUDGET,
                             seed=0, target_rel_error=TARGET),
                baseline_row(lambda n: baseline.risk_gap(Wr, br, We, be, mean, chol, tau, n, seed=0),
                             1 << (19 if quick else 21))]
        out[f"tau={tau:g}"] = with_ratios(rows)
    return {"case": "risk gap, binary linear router, linear experts, Gaussian law, d = 16", "results": out}


def k8_problem():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 64, generator=g, dtype=torch.float64) / 8.0
    b = torch.randn(8, generator=g, dtype=torch.float64) * 0.1
    return sh.LinearRouter(W, b), sh.Gaussian.standard(64)


def case_top2(quick: bool) -> dict:
    """K = 8 linear router, d = 64, X ~ N(0, I): the top-two boundary mass β(w)."""
    r, law = k8_problem()
    W, b = r.weight.numpy(), r.bias.numpy()
    out = {}
    for w in (1e-2, 1e-3):
        rows = [softhard_row("softhard auto (= exact: Genz orthants, abs. error 1e-6)", sh.boundary_mass, router=r,
                             law=law, widths=w, method="auto"),
                softhard_row("softhard conditional (QMC)", sh.boundary_mass, router=r, law=law, widths=w,
                             method="conditional", n=BUDGET, seed=0, target_rel_error=TARGET, min_n=1024),
                softhard_row("softhard plain MC", sh.boundary_mass, router=r, law=law, widths=w, method="mc",
                             n=BUDGET, seed=0, target_rel_error=TARGET),
                baseline_row(lambda n: baseline.top2_mass(W, b, np.zeros(64), np.eye(64), w, n, seed=0),
                             1 << (19 if quick else 21))]
        out[f"w={w:g}"] = with_ratios(rows)
    return {"case": "top-two boundary mass, K = 8 linear router, d = 64, Gaussian law", "results": out}


def mlp_problem():
    return sh.MLPRouter(10, 4, (64,), seed=0), sh.Gaussian.standard(10)


def _layers(router):
    lin = [m for m in router.net if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in lin]


def _evaluations(router, law, f, **kw) -> float:
    """Router evaluations (points) per line of a line estimator, counted on a short run."""
    count = [0]
    hook = router.register_forward_hook(lambda m, i, o: count.__setitem__(0, count[0] + i[0].shape[0]))
    try:
        est = f(router, law, n=4096, seed=99, **kw)
    finally:
        hook.remove()
    return count[0] / est.n


def case_mlp(quick: bool) -> dict:
    """K = 4 MLP router (10 -> 64 -> 4, tanh), X ~ N(0, I_10): β(1e-2) and the coarea constant ψ_01(0)."""
    r, law = mlp_problem()
    layers = _layers(r)
    w = 1e-2
    beta = [softhard_row("softhard conditional (lines, QMC)", sh.boundary_mass, router=r, law=law, widths=w,
                         method="conditional", n=BUDGET, seed=0, target_rel_error=TARGET, min_n=1024),
            softhard_row("softhard plain MC", sh.boundary_mass, router=r, law=law, widths=w, method="mc", n=BUDGET,
                         seed=0, target_rel_error=TARGET),
            baseline_row(lambda n: baseline.mlp_top2_mass(layers, 10, w, n, seed=0), 1 << (18 if quick else 20))]
    beta[0]["router_evaluations_per_line"] = _evaluations(
        r, law, lambda rr, ll, **kw: sh.boundary_mass(rr, ll, w, method="conditional", **kw))
    # coarea: lines to the target; the kernel estimate (plain MC) at a fixed n, extrapolated by n^(-3/8)
    n_k = 1 << (18 if quick else 20)
    kern, t_k = timed(sh.coarea_constant, r, law, (0, 1), method="kernel", n=n_k, seed=0)
    r_k = rel(kern.value, kern.stderr)
    n_need = n_k * (r_k / TARGET) ** (8 / 3)
    coarea = [softhard_row("softhard conditional (lines, QMC)", sh.coarea_constant, router=r, law=law,
                           method="conditional", n=BUDGET, seed=0, target_rel_error=TARGET, min_n=1024),
              {"method": "softhard kernel (plain MC)", "value": kern.value, "stderr": kern.stderr, "rel_error": TARGET,
               "pilot_n": n_k, "pilot_rel_error": r_k, "pilot_seconds": t_k, "n": int(n_need),
               "seconds": t_k * n_need / n_k, "extrapolated": "from the pilot by the n^(-3/8) law",
               "bandwidth": kern.info["bandwidth"]},
              baseline_row(lambda n: baseline.mlp_coarea(layers, 10, (0, 1), kern.info["bandwidth"], n, seed=0),
                           n_k, law="n^(-3/8)", power=8 / 3)]
    coarea[0]["router_evaluations_per_line"] = _evaluations(
        r, law, lambda rr, ll, **kw: sh.coarea_constant(rr, ll, method="conditional", **kw))
    return {"case": "K = 4 MLP router (one hidden layer of 64), d = 10, Gaussian law",
            "results": {"beta(0.01)": with_ratios(beta), "coarea psi_01(0)": with_ratios(coarea)}}


def case_throughput(quick: bool) -> dict:
    """Plain sampling: samples/s of boundary_mass (K = 8, d = 64) against drawing the Gaussian inputs alone."""
    r, law = k8_problem()
    n = 1 << (20 if quick else 22)
    widths = [0.01, 0.1, 0.5, 1.0]
    sh.boundary_mass(r, law, widths, method="mc", n=BLOCK, seed=1)  # warm-up
    est, t = timed(sh.boundary_mass, r, law, widths, method="mc", n=n, seed=0)
    blocks = n // BLOCK
    floors = {}
    for name, make, draw in [
            ("numpy SFC64 (the reducer's generator)", lambda b: _block_generator(0, b),
             lambda gen: gen.standard_normal((BLOCK, 64))),
            ("numpy PCG64", lambda b: np.random.default_rng(b), lambda gen: gen.standard_normal((BLOCK, 64))),
            ("torch.randn float64", lambda b: torch.Generator().manual_seed(b),
             lambda gen: torch.randn(BLOCK, 64, generator=gen, dtype=torch.float64))]:
        t0 = time.perf_counter()
        for b in range(blocks):
            draw(make(b))
        floors[name] = n / (time.perf_counter() - t0)
    floor = max(floors.values())
    rate = n / t
    return {"case": "plain sampling throughput, boundary_mass, K = 8 linear router, d = 64",
            "results": {"samples": n, "softhard_samples_per_s": rate, "floor_samples_per_s": floors,
                        "fraction_of_fastest_floor": rate / floor, "value": est.value.tolist()}}


MEMORY_SCRIPT = """
import os, resource, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
n = int(float(sys.argv[1]))
from softhard import Gaussian, LinearRouter, boundary_mass
g = torch.Generator().manual_seed(0)  # the problem of k8_problem()
W = torch.randn(8, 64, generator=g, dtype=torch.float64) / 8.0
b = torch.randn(8, generator=g, dtype=torch.float64) * 0.1
t0 = time.perf_counter()
est = boundary_mass(LinearRouter(W, b), Gaussian.standard(64), [0.01, 0.1, 0.5, 1.0], method="mc", n=n, seed=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t0, *est.value.tolist())
"""


def case_memory(n: float) -> dict:
    """Peak memory (max RSS) of a fresh interpreter running plain MC boundary_mass on n samples."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, check=True)
    rss, secs, *values = out.stdout.split()
    return {"case": f"peak memory, plain MC boundary_mass on {n:.0e} samples (K = 8, d = 64)",
            "results": {"samples": int(n), "max_rss_MiB": int(rss) / 1024, "seconds": float(secs),
                        "beta": [float(v) for v in values]}}


# --- the registry: every method of a quantity to 1 %, and what the default call takes ---------------------

CAP = 1 << 22  # sampling runs stop here and are extrapolated to the target by the 1/sqrt(n) law


def method_row(quantity: str, point: str, method: str, call) -> dict:
    """One registered method run to 1 % (sampling; extrapolated past ``CAP``) or once (closed form)."""
    import warnings

    from softhard.estimators.reducer import TargetNotReached

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TargetNotReached)
        est, t = timed(call, method=method, target_rel_error=TARGET, max_samples=CAP, seed=0)
    r = float(np.max(np.asarray(est.rel_error)))
    extra = est.method != "exact" and r > TARGET
    scale = (r / TARGET) ** 2 if extra else 1.0
    return {"quantity": quantity, "point": point, "method": method, "value": float(np.ravel(est.value)[0]),
            "rel_error": TARGET if extra else r, "n": int(est.n * scale), "seconds": t * scale, "extrapolated": extra,
            "error_bound": float(np.max(np.asarray(est.error_bound)))}


def registry_points():
    """(quantity, point, call(**kw)) for the targets of issue 13: β at K = 2, 4, 8 and three widths (d = 64),
    the risk gap of the §7.1-like design at three temperatures (d = 16)."""
    out = []
    for K in (2, 4, 8):
        g = torch.Generator().manual_seed(K)
        r = sh.LinearRouter(torch.randn(K, 64, generator=g, dtype=torch.float64) / 8.0,
                            torch.randn(K, generator=g, dtype=torch.float64) * 0.1)
        law = sh.Gaussian.standard(64)
        for w in (1e-1, 1e-2, 1e-3):
            out.append(("boundary_mass", f"K={K} w={w:g}",
                        lambda r=r, law=law, w=w, **kw: sh.boundary_mass(r, law, w, **kw)))
    moe, law = gap_problem()
    for tau in (1e-1, 1e-2, 1e-3):
        out.append(("risk_gap", f"tau={tau:g}", lambda tau=tau, **kw: sh.risk_gap(moe, law, tau, **kw)))
    return out


def case_auto(quick: bool) -> dict:
    """Every applicable method of each quantity to 1 % relative error, and the default call (no ``method``)."""
    from softhard.quantities import QUANTITIES

    rows = []
    for quantity, point, call in registry_points():
        methods = list(QUANTITIES[quantity].methods)
        if quick:
            methods = [m for m in methods if m not in ("mc",)]
        per = []
        for m in methods:
            try:
                per.append(method_row(quantity, point, m, call))
            except ValueError as e:  # the method does not apply here
                if "applies here" not in str(e):
                    raise
        est, t = timed(call, target_rel_error=TARGET, seed=0)
        best = min(per, key=lambda r: r["seconds"])
        for r in per:
            r["chosen_by_auto"] = r["method"] == est.method
        rows += per
        rows.append({"quantity": quantity, "point": point, "method": f"default (auto -> {est.method})",
                     "value": float(np.ravel(est.value)[0]), "rel_error": float(np.max(np.asarray(est.rel_error))),
                     "n": est.n, "seconds": t, "extrapolated": False, "chosen_by_auto": True,
                     "vs_fastest": t / best["seconds"], "fastest": best["method"]})
    return {"case": "registry: time to 1 % per method, and the default call", "results": rows}


def gap_problem():
    """The §7.1-like design of the gap benchmarks: binary linear router, linear experts, correlated Gaussian, d = 16."""
    g = torch.Generator().manual_seed(1)
    d = 16
    v = torch.randn(d, generator=g, dtype=torch.float64)
    moe = sh.MoE(sh.LinearRouter.binary(v / v.norm(), b=0.2),
                 sh.LinearExperts(torch.randn(2, d, generator=g, dtype=torch.float64) / 4, [0.1, -0.1]))
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    law = sh.Gaussian(0.1 * torch.randn(d, generator=g, dtype=torch.float64), A @ A.T + 0.5 * torch.eye(d))
    return moe, law


STARTUP = {"import torch": "import torch", "import softhard": "import softhard",
           "from softhard import boundary_mass": "from softhard import boundary_mass",
           "softhard --help": None, "softhard reproduce --help": None}


def case_startup(quick: bool) -> dict:
    """Wall time of fresh interpreters (median of 5): imports and the command line's help."""
    exe = Path(sys.executable).with_name("softhard")
    out = {}
    for name, code in STARTUP.items():
        cmd = [sys.executable, "-c", code] if code else [str(exe), *name.split()[1:]]
        times = []
        for _ in range(3 if quick else 5):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    out["softhard over torch"] = out["from softhard import boundary_mass"] - out["import torch"]
    return {"case": "start-up (median wall seconds of fresh processes)", "results": out}


# --- table --------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = []
    for key in ("gap", "top2", "mlp"):
        if key not in results:
            continue
        lines.append(f"\n{results[key]['case']}: time to {TARGET:.0%} relative standard error")
        lines.append(f"  {'':<18}{'method':<58}{'value':>11}{'rel.err':>9}{'samples':>12}{'seconds':>10}"
                     f"{'speedup':>9}")
        for sub, rows in results[key]["results"].items():
            for r in rows:
                star = "*" if r["extrapolated"] else " "
                lines.append(f"  {sub:<18}{r['method']:<58}{r['value']:>11.5g}{r['rel_error']:>9.2%}"
                             f"{r['n']:>12,}{r['seconds']:>9.3g}{star}{r['speedup_vs_baseline']:>8.3g}x")
                if "router_evaluations_per_line" in r:
                    lines.append(f"  {'':<18}  (router evaluations per line: {r['router_evaluations_per_line']:.0f})")
        lines.append("  * extrapolated from a shorter pilot run (1/sqrt(n) law; the kernel estimate: n^(-3/8)); "
                     "speedup = baseline seconds / seconds")
    if "auto" in results:
        lines.append(f"\n{results['auto']['case']}")
        lines.append(f"  {'quantity':<15}{'point':<14}{'method':<34}{'value':>11}{'rel.err':>9}{'samples':>12}"
                     f"{'seconds':>10}  auto?")
        for r in results["auto"]["results"]:
            star = "*" if r["extrapolated"] else " "
            tail = f"  {r['vs_fastest']:.2f}x the fastest ({r['fastest']})" if "vs_fastest" in r else (
                "  <- auto" if r["chosen_by_auto"] else "")
            lines.append(f"  {r['quantity']:<15}{r['point']:<14}{r['method']:<34}{r['value']:>11.5g}"
                         f"{r['rel_error']:>9.2%}{r['n']:>12,}{r['seconds']:>9.3g}{star}{tail}")
        lines.append("  * extrapolated from a run capped at 2^22 samples by the 1/sqrt(n) law")
    if "coverage" in results:
        import coverage

        lines.append(f"\n{results['coverage']['case']}\n" + coverage.table(results["coverage"]))
    if "scale" in results:
        import scale

        lines.append(f"\n{results['scale']['case']}\n" + scale.table(results["scale"]))
    if "startup" in results:
        lines.append(f"\n{results['startup']['case']}")
        for k, v in results["startup"]["results"].items():
            lines.append(f"  {k:<36}{v:6.2f} s")
    if "throughput" in results:
        t = results["throughput"]["results"]
        lines.append(f"\n{results['throughput']['case']}: {t['softhard_samples_per_s']:,.0f} samples/s = "
                     f"{t['fraction_of_fastest_floor']:.0%} of drawing the inputs alone "
                     + ", ".join(f"{k}: {v:,.0f}/s" for k, v in t["floor_samples_per_s"].items()))
    if "memory" in results:
        m = results["memory"]["results"]
        lines.append(f"\n{results['memory']['case']}: max RSS {m['max_rss_MiB']:.0f} MiB ({m['seconds']:.0f} s)")
    return "\n".join(lines)


def case_coverage(quick: bool) -> dict:
    """Coverage of the 95 % intervals of the conditional and kernel estimators (benchmarks/coverage.py): 400 seeds
    per cell (100 with --quick)."""
    import coverage

    return coverage.run(100 if quick else 400)


def case_scale(quick: bool) -> dict:
    """Every quantity's default against every method at K = 16–256, d = 32–4096 (benchmarks/scale.py; --quick:
    K = 16, 64 and d = 32, 1024)."""
    import scale

    return scale.run((16, 64) if quick else (16, 64, 256), (32, 1024) if quick else (32, 1024, 4096))


CASES = {"auto": case_auto, "startup": case_startup, "gap": case_gap, "top2": case_top2, "mlp": case_mlp,
         "throughput": case_throughput, "coverage": case_coverage, "scale": case_scale}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--quick", action="store_true", help="skip the 1e9-sample memory run; shorter pilots")
    ap.add_argument("--cases", nargs="*", default=[*CASES, "memory"], choices=[*CASES, "memory"])
    ap.add_argument("--memory-n", type=float, default=1e9)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out)
    for name in args.cases:
        if name == "memory" and args.quick:
            continue
        entry = case_memory(args.memory_n) if name == "memory" else CASES[name](args.quick)
        entry["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "softhard": sh.__version__,
                            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                            "load_1min": os.getloadavg()[0], "quick": args.quick,
                            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else "not available: CUDA figures not taken"}
        results = json.loads(out.read_text()) if out.exists() else {}  # merged at write time: runs may overlap
        results[name] = to_jsonable(entry)
        atomic_write(out, json.dumps(results, indent=1))
    print(table(json.loads(out.read_text())) if out.exists() else "")


if __name__ == "__main__":
    main()
