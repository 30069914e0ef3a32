"""Issue 6 check: exact shape gradient of the profiled hard risk against central finite differences (run: .venv/bin/python examples/shape_fd_check.py)."""
import numpy as np
import torch

from softhard import LinearRouter, binary_problem, profiled_hard_risk, shape_gradient, voronoi3_problem

for prob in (binary_problem(), voronoi3_problem()):
    for seed in (3, 11):
        g = torch.Generator().manual_seed(seed); K = prob.num_experts
        W = torch.randn(K, 2, generator=g, dtype=torch.float64); b = 0.3 * torch.randn(K, generator=g, dtype=torch.float64)
        sg = shape_gradient(LinearRouter(W, b), prob.teacher, prob.law)
        grad = np.concatenate([sg["weight"].value.ravel(), sg["bias"].value])
        L = lambda W_, b_: profiled_hard_risk(LinearRouter(W_, b_), prob.teacher, prob.law).risk.value
        fd = []
        for i in range(W.numel() + K):
            dW = torch.zeros(W.numel() + K, dtype=torch.float64); dW[i] = 1e-5
            fd.append((L(W + dW[:W.numel()].reshape(W.shape), b + dW[W.numel():]) - L(W - dW[:W.numel()].reshape(W.shape), b - dW[W.numel():])) / 2e-5)
        fd = np.array(fd)
        print(f"{prob.name} seed={seed}: |grad|={np.linalg.norm(fd):.4f} rel.err={np.linalg.norm(grad - fd) / np.linalg.norm(fd):.2e}")
