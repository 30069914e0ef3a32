"""Throughput and memory of the core estimator ``boundary_mass`` (not run by the tests).

For a K = 8, d = 64 linear router and X ~ N(0, I_64) it prints, from one run:

- samples/second of ``softhard.boundary_mass`` on a grid of widths;
- samples/second of (a) a plain NumPy implementation written the obvious way (draw x in chunks,
  logits = x @ W.T + b, sort, count) and (b) a per-sample Python loop with NumPy (on fewer samples),
  with the ratios; all three estimates are printed so that they can be compared;
- the peak memory (max RSS) of a fresh subprocess running ``boundary_mass`` on 1e6 and 1e8 samples,
  beside a subprocess that only imports softhard.

Usage: ``python benchmarks/bench_core.py [--n 2097152] [--n-loop 20000] [--memory 1e6 1e8]``.
The 1e8 run takes a few minutes; ``--memory`` with no values skips the memory part.
Everything runs single-threaded unless ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``
are set: the same footing for torch and NumPy, and on a loaded 2-core machine several OpenMP threads
make torch 10–20× slower.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from softhard import Gaussian, LinearRouter, boundary_mass  # noqa: E402

K, D = 8, 64
WIDTHS = np.array([0.01, 0.1, 0.5, 1.0])
CHUNK = 1 << 16


def problem():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(K, D, generator=g, dtype=torch.float64) / np.sqrt(D)
    b = torch.randn(K, generator=g, dtype=torch.float64) * 0.1
    return W, b


def plain_numpy(W: np.ndarray, b: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The obvious vectorised NumPy version: chunks of x, logits, sort, count."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(WIDTHS))
    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        x = rng.standard_normal((m, D))
        s = np.sort(x @ W.T + b, axis=1)
        margin = s[:, -1] - s[:, -2]
        counts += (margin[:, None] <= WIDTHS).sum(0)
        done += m
    return counts / n


def python_loop(W: np.ndarray, b: np.ndarray, n: int, seed: int) -> np.ndarray:
    """One sample at a time in a Python loop, with NumPy for the algebra."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(WIDTHS))
    for _ in range(n):
        s = np.sort(W @ rng.standard_normal(D) + b)
        counts += (s[-1] - s[-2]) <= WIDTHS
    return counts / n


def timed(f, *args):
    t0 = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t0


def fmt(p: np.ndarray, n: int) -> str:
    se = np.sqrt(p * (1 - p) / n)
    return "  ".join(f"{v:.5f}±{s:.5f}" for v, s in zip(p, se))


MEMORY_SCRIPT = """
import resource, sys, torch
n = int(float(sys.argv[1]))
if n > 0:
    from softhard import Gaussian, LinearRouter, boundary_mass
    g = torch.Generator().manual_seed(0)  # the problem of bench_core.problem()
    W = torch.randn(8, 64, generator=g, dtype=torch.float64) / 8.0
    b = torch.randn(8, generator=g, dtype=torch.float64) * 0.1
    est = boundary_mass(LinearRouter(W, b), Gaussian.standard(64), [0.01, 0.1, 0.5, 1.0], method="mc", n=n, seed=0)
    print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {est.info['seconds']:.1f} {est.value.tolist()}")
else:
    import softhard  # noqa: F401
    print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} 0 []")
"""


def peak_memory(n: float) -> tuple[float, float, str]:
    """(max RSS in MiB, seconds, values) of a fresh interpreter running boundary_mass on n samples."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, check=True)
    rss_kib, secs, values = out.stdout.strip().split(" ", 2)
    return int(rss_kib) / 1024, float(secs), values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 21, help="samples for boundary_mass and plain NumPy")
    ap.add_argument("--n-loop", type=int, default=20_000, help="samples for the per-sample Python loop")
    ap.add_argument("--memory", type=float, nargs="*", default=[1e6, 1e8], help="sample sizes for the RSS runs")
    args = ap.parse_args()

    print(f"K={K} d={D} widths={WIDTHS.tolist()} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load(1 min)={os.getloadavg()[0]:.2f}")
    W, b = problem()
    router, law = LinearRouter(W, b), Gaussian.standard(D)
    Wn, bn = W.numpy(), b.numpy()

    boundary_mass(router, law, WIDTHS, method="mc", n=1 << 16, seed=1)  # warm-up
    est, t_sh = timed(lambda: boundary_mass(router, law, WIDTHS, method="mc", n=args.n, seed=0))
    p_np, t_np = timed(plain_numpy, Wn, bn, args.n, 0)
    p_loop, t_loop = timed(python_loop, Wn, bn, args.n_loop, 0)
    rate_sh, rate_np, rate_loop = args.n / t_sh, args.n / t_np, args.n_loop / t_loop

    print(f"{'method':<34}{'samples':>10}{'seconds':>10}{'samples/s':>14}{'ratio':>9}   beta(w) ± se")
    print(f"{'softhard.boundary_mass':<34}{args.n:>10}{t_sh:>10.2f}{rate_sh:>14,.0f}{1:>9.2f}   "
          + "  ".join(f"{v:.5f}±{s:.5f}" for v, s in zip(est.value, est.stderr)))
    print(f"{'(a) plain NumPy, chunked':<34}{args.n:>10}{t_np:>10.2f}{rate_np:>14,.0f}{rate_sh / rate_np:>9.2f}   "
          + fmt(p_np, args.n))
    print(f"{'(b) per-sample Python loop + NumPy':<34}{args.n_loop:>10}{t_loop:>10.2f}{rate_loop:>14,.0f}"
          f"{rate_sh / rate_loop:>9.1f}   " + fmt(p_loop, args.n_loop))
    print("ratio = softhard samples/s ÷ that method's samples/s (same run)")

    if args.memory:
        base, _, _ = peak_memory(0)
        print(f"peak RSS, fresh subprocess: import softhard only: {base:.0f} MiB")
        for n in args.memory:
            rss, secs, values = peak_memory(n)
            print(f"peak RSS, fresh subprocess: boundary_mass n={n:.0e}: {rss:.0f} MiB ({secs:.0f} s, beta = {values})")


if __name__ == "__main__":
    main()
