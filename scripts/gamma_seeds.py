"""Is the uniform-gap exponent's error bar honest? Run :func:`softhard.uniform_gap` over several seeds and compare the
spread of the exponent with its stated standard error and with the exact exponent (docs/landscape.md).

The family is the binary problem's default Γ-family (``run_landscape``: the teacher-equivalent student and 23 points of
a box of radius 0.3 around it, family seed 0), τ = 0.0025…0.04, n = 2¹⁷ draws; only the
sampling seed changes. Usage: ``python scripts/gamma_seeds.py [--seeds 8] [--n 131072] [--family-seeds]``
(``--family-seeds``: the family's seed changes with the sampling seed, as in ``run_landscape``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from softhard import binary_problem, random_family, uniform_gap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=1 << 17)
    ap.add_argument("--family-seeds", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prob = binary_problem()
    template = prob.teacher_student()
    taus = [0.0025, 0.005, 0.01, 0.02, 0.04]
    rows = []
    for seed in range(args.seeds):
        fam = random_family(template, 24, 0.3, seed if args.family_seeds else 0)
        r = uniform_gap(template, prob.teacher, prob.law, fam, taus, n=args.n, seed=seed)
        rows.append({"seed": seed, "alpha": r.alpha, "alpha_stderr": r.alpha_stderr, "alpha_exact": r.alpha_exact,
                     "z": r.alpha_z})
        print(json.dumps(rows[-1]), flush=True)
    a = np.array([r["alpha"] for r in rows])
    se = np.array([r["alpha_stderr"] for r in rows])
    dev = a - np.array([r["alpha_exact"] for r in rows])
    z = dev / se
    print(json.dumps({"seeds": args.seeds, "n": args.n, "family_seeds": args.family_seeds,
                      "alpha_mean": float(a.mean()), "alpha_sd_over_seeds": float(a.std(ddof=1)),
                      "stderr_mean": float(se.mean()), "stderr_rms": float(math.sqrt((se ** 2).mean())),
                      "deviation_from_exact_rms": float(math.sqrt((dev ** 2).mean())),
                      "z_rms": float(math.sqrt((z ** 2).mean())), "alpha_exact": rows[0]["alpha_exact"]}))


if __name__ == "__main__":
    main()
