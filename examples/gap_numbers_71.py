"""Issue 3 closing numbers for the §7.1 design: G_1, gap/τ, the bounds (run: .venv/bin/python examples/gap_numbers_71.py)."""
import math
import time

import numpy as np
import torch

import softhard as sh

moe = sh.MoE(sh.LinearRouter.binary([1.0, 0.0]), sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))
law = sh.Gaussian.standard(2)
taus = [0.1, 0.01, 0.001]
N = 1 << 22
t0 = time.time()
print("G1 exact", sh.gap_slope(moe, law))
print("G1 kernel", sh.gap_slope(moe, law, method="kernel", n=N, seed=11))
ex = sh.risk_gap_exact(moe, law, taus)
mc = sh.risk_gap(moe, law, taus, method="mc", n=N, seed=12)
for i, t in enumerate(taus):
    print(f"tau={t:g} gap_exact={ex[i]:.6e} gap/tau exact={ex[i]/t:.6f}  MC gap/tau={mc.value[i]/t:.5f} ± {mc.stderr[i]/t:.5f} (n={mc.n})")
cs = sh.cauchy_schwarz_bound(moe, law, taus, n=N, seed=12)
loc = sh.local_gap_certificate(moe, law, taus, n=N, seed=12)
for i, t in enumerate(taus):
    print(f"tau={t:g} CS={cs.value[i]:.6e}±{cs.stderr[i]:.1e} ratio={cs.value[i]/ex[i]:.4f}  local={loc.value[i]:.6e}±{loc.stderr[i]:.1e} ratio={loc.value[i]/ex[i]:.3f}")
tail = sh.margin_tail(moe.router, law, n=N, seed=13)
print("margin tail", tail, "(exact slope 2psi(0) =", 2 / math.sqrt(2 * math.pi), ")")
print("theorem45: B_h = inf for the Gaussian design -> constant", math.inf)
print("entropy slope exact", sh.entropy_slope(moe.router, law), "MC E[H]/tau", (lambda e: (e.value/np.array(taus), e.stderr/np.array(taus)))(sh.gate_entropy_mean(moe.router, law, taus, method="mc", n=N, seed=14)))
box = sh.Uniform([-3.0, -3.0], [3.0, 3.0])
gb = sh.risk_gap(moe, box, taus, method="mc", n=N, seed=15)
tb = sh.margin_tail(moe.router, box, n=N, seed=16, t_max=1.0)
C = sh.theorem45_constant(tb.C, tb.alpha, 3.0, 3.0, 2)
cert = sh.gap_certificate(moe, box, taus, B_Y=3.0, B_h=3.0, n=N, seed=15)
print("box tail", tb, "theorem45 C (fitted)", C, "C (exact C_delta=1/3, alpha=1)", sh.theorem45_constant(1/3, 1, 3, 3, 2))
for i, t in enumerate(taus):
    print(f"box tau={t:g} gap={gb.value[i]:.5e}±{gb.stderr[i]:.1e} gap/tau={gb.value[i]/t:.4f}  thm45 C*tau^alpha={C*t**tb.alpha:.4e} ratio={C*t**tb.alpha/gb.value[i]:.2f}  cert={cert.value[i]:.4e}±{cert.stderr[i]:.1e} ratio={cert.value[i]/gb.value[i]:.2f}")
print("seconds", time.time() - t0)
