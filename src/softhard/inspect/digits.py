r"""A small MoE trained by softhard on scikit-learn's digits: the "trained router" workload.

``load_digits`` ships with scikit-learn (1797 images of 8×8 pixels, 10 classes; no download). The
model embeds an image, applies ``layers`` residual top-k MoE blocks and a linear classifier head:

.. math:: h_0 = \tanh(E x), \qquad h_{\ell} = h_{\ell-1} + \sum_{j \in S_\ell} \pi_j\, e_{\ell j}(h_{\ell-1}),
          \qquad \pi_j = \frac{e^{a_j}}{\sum_{i \in S_\ell} e^{a_i}}

with router logits :math:`a = G_\ell h_{\ell-1}` (an ``nn.Linear`` gate), :math:`S_\ell` the top-k of
:math:`a` (lowest index first on ties, as ``torch.topk``) and MLP experts. The gate is a plain
``nn.Linear`` named ``gate`` beside ``experts``, so :func:`softhard.inspect.find_routers` finds it (output
format ``logits``, rule: softmax over the top-k of the logits); dividing the gate's output by τ is exactly the
block at temperature τ, and ``top_k = K`` is its fully dense soft routing.

Training is full-batch Adam on a seeded 80/20 split, float64, deterministic for a seed (a few seconds on
one CPU core; it runs single-threaded and restores the thread count); parameters are initialised from
the seed, the global RNG is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._validate import DTYPE, check_int, check_seed
from ..estimators.reducer import resolve_seed

__all__ = ["TopKMoE", "DigitsMoE", "DigitsResult", "digits_data", "train_digits_moe", "DIGITS"]

DIGITS = "softhard:digits"  # the model name of this MoE in `softhard inspect` (runner and hardening share it)
MOE_LAYERS = 2  # MoE layers of softhard:digits (known before training, so --layers is checked first)


class TopKMoE(nn.Module):
    """Top-k MoE block ``(N, d) -> (N, d)``: ``gate`` (``nn.Linear(d, K)``), ``experts`` (``K`` tanh MLPs d→h→d)."""

    def __init__(self, d: int, num_experts: int, top_k: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d, num_experts, dtype=DTYPE)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden, dtype=DTYPE), nn.Tanh(), nn.Linear(hidden, d, dtype=DTYPE))
            for _ in range(num_experts))
        self.num_experts, self.top_k = num_experts, top_k

    def forward(self, x):
        a = self.gate(x)
        top, idx = torch.topk(a, self.top_k, dim=-1)
        w = torch.softmax(top, dim=-1)  # (N, k)
        h = torch.stack([e(x) for e in self.experts], dim=1)  # (N, K, d)
        chosen = h.gather(1, idx[:, :, None].expand(-1, -1, h.shape[-1]))  # (N, k, d)
        return (w[:, :, None] * chosen).sum(1)


class DigitsMoE(nn.Module):
    """Digits classifier ``x (N, 64) -> class logits (N, 10)`` with residual top-k MoE blocks."""

    def __init__(self, *, width: int = 32, num_experts: int = 4, top_k: int = 2, layers: int = 2, hidden: int = 32,
                 seed: int = 0):
        super().__init__()
        self.embed = nn.Linear(64, width, dtype=DTYPE)
        self.blocks = nn.ModuleList(TopKMoE(width, num_experts, top_k, hidden) for _ in range(layers))
        self.head = nn.Linear(width, 10, dtype=DTYPE)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = m.in_features ** -0.5
                    m.weight.uniform_(-bound, bound, generator=g)
                    m.bias.uniform_(-bound, bound, generator=g)

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """All 1797 digits in a seeded order: ``x (1797, 64)`` float64 in [0, 1], labels ``(1797,)``, and the
    original sample index of each row."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(data.target))
    x = torch.as_tensor(data.data[order] / 16.0, dtype=DTYPE)
    return x, torch.as_tensor(data.target[order]), order


@dataclass
class DigitsResult:
    """A trained :class:`DigitsMoE` with its data (``x``, ``y`` in the seeded order), the train/test split
    (first ``n_train`` rows train), accuracies and the seed."""

    model: DigitsMoE
    x: torch.Tensor
    y: torch.Tensor
    n_train: int
    train_accuracy: float
    test_accuracy: float
    seed: int


def train_digits_moe(seed=0, *, steps: int = 300, num_experts: int = 4, top_k: int = 2, layers: int = MOE_LAYERS,
                     lr: float = 0.02, progress: bool = False) -> DigitsResult:
    """Train :class:`DigitsMoE` by full-batch Adam (cross-entropy) on 80% of the digits; returns the model in
    eval mode with train and test accuracy. Deterministic for ``seed``."""
    check_seed(seed, "train_digits_moe")
    seed = resolve_seed(seed, "train_digits_moe")
    steps = check_int(steps, "steps", "train_digits_moe")
    K = check_int(num_experts, "num_experts", "train_digits_moe", low=2)
    k = check_int(top_k, "top_k", "train_digits_moe", 1, K - 1)
    x, y, _ = digits_data(seed)
    n_train = int(0.8 * len(y))
    model = DigitsMoE(num_experts=K, top_k=k, layers=check_int(layers, "layers", "train_digits_moe"), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="training digits MoE", leave=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to threading (restored below)
    try:
        for _ in it:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:n_train]), y[:n_train])
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    acc = (pred == y).to(DTYPE)
    return DigitsResult(model, x, y, n_train, float(acc[:n_train].mean()), float(acc[n_train:].mean()), seed)
