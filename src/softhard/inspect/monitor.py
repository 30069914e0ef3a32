r"""Training-time routing monitor: the inspection hooks, kept on inside a user's own training loop.

.. code-block:: python

    with RoutingMonitor(model, "routing.csv", every=50) as mon:
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            mon.step()
    print(mon.overhead)  # monitor CPU time / forward CPU time without it, measured in this run

Steps are counted by :meth:`RoutingMonitor.step`; the forward calls of every ``every``-th step (0, N,
2N, ...) are recorded, other steps cost one flag test per hook. Per MoE layer and recorded step the CSV
gets one row with

- ``near_tie_w{w}``: the share of tokens whose decision margin :math:`m \le w` (the layer's routing rule,
  :mod:`softhard.inspect.rules`; :math:`a_{(k)} - a_{(k+1)}` for top-k of the logits), with its standard
  error, i.e. :math:`\beta(w)` of the step's tokens;
- ``margin_q{q}``: quantiles of :math:`m`;
- ``soft_hard_gap``: the mean over tokens of :math:`\lVert o^{dense}_i - o_i\rVert / \lVert o_i\rVert`,
  the relative gap between the block's output with fully dense soft routing and with the model's own
  (hard top-k) routing, both recomputed in eval mode on the block's recorded input (no dropout or jitter,
  no RNG use, no gradient, and with every hook inside the block suspended, so that e.g. transformers'
  router-logit recorders do not see the extra calls) — empty when the layout has no dense mode;
- ``overhead``: the running ratio of monitor time (hooks and :meth:`RoutingMonitor.step`) to forward
  time without the monitor's hooks, so far (this step's CSV writing is counted at the next one). Times
  are CPU seconds of the process (``time.process_time``), which waits caused by other processes on a
  shared machine do not inflate.

Rows are kept in memory and the CSV is rewritten atomically at each recorded step. TensorBoard scalars
are written too when ``tensorboard`` is a directory and the ``tensorboard`` package is installed;
otherwise a warning is issued once and the CSV alone is written.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._validate import check_grid, check_int, fail
from ..estimators.reducer import mean_estimate
from .hooks import first_tensor, hooks_suspended
from .layouts import find_routers
from .sensitivity import relative_change
from .stats import StreamMean

__all__ = ["RoutingMonitor"]


def _modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    return [(m, m.training) for m in module.modules()]


class RoutingMonitor:
    """Log per-layer near-tie mass, top-k margin quantiles and the soft-vs-hard gap every ``every`` steps.

    Args:
        model: the model being trained (any ``nn.Module`` with MoE layers, see :func:`find_routers`).
        path: the CSV file to write.
        every: record every ``every``-th step (counted by :meth:`step`).
        widths: the ``w`` of the near-tie columns, shape ``(W,)``.
        quantiles: top-k margin quantiles to log, each in [0, 1].
        gap: compute the soft-vs-hard gap (two extra block evaluations per recorded step and layer).
        tensorboard: a log directory for TensorBoard scalars (optional; skipped if not installed).
        router_path, layers, top_k: as in :func:`find_routers`.
    """

    def __init__(self, model: torch.nn.Module, path, *, every: int = 100, widths=(0.01, 0.1, 1.0),
                 quantiles=(0.01, 0.1, 0.5), gap: bool = True, tensorboard=None, router_path: str | None = None,
                 layers=None, top_k: int | None = None):
        where = "RoutingMonitor"
        self.model, self.path = model, Path(path)
        self.every = check_int(every, "every", where)
        self.widths = [float(w) for w in check_grid(widths, "widths", where)]
        self.quantiles = [float(q) for q in check_grid(quantiles, "quantiles", where)]
        if max(self.quantiles) > 1:
            fail("quantiles", where, "values in [0, 1]", self.quantiles)
        self.gap = bool(gap)
        self.sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
        self.rows: list[dict] = []
        self.steps = 0
        self.seconds_forward = self.seconds_hooks = self.seconds_flush = 0.0
        self._tb_dir, self._tb = tensorboard, None
        self._handles = []
        self._reset()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _reset(self):
        self._margins = {s.index: [] for s in self.sites}
        self._gaps = {s.index: StreamMean() for s in self.sites}

    @property
    def recording(self) -> bool:
        """Whether the forward calls of the current step are recorded."""
        return self.steps % self.every == 0

    @property
    def overhead(self) -> float:
        """Monitor time (in the hooks and in :meth:`step`) / forward time without the hooks, over the whole
        run so far (nan before any forward call)."""
        base = self.seconds_forward - self.seconds_hooks
        return (self.seconds_hooks + self.seconds_flush) / base if base > 0 else float("nan")

    # -- hooks -----------------------------------------------------------------------------------
    def _router_hook(self, site):
        def hook(module, args, output):
            if not self.recording:
                return None
            t0 = time.process_time()
            with torch.no_grad():
                routed = site.read(args, output)
                self._margins[site.index].append(site.rule.margin(routed.logits.detach()).cpu().numpy())
            self.seconds_hooks += time.process_time() - t0
            return None

        return hook

    def _block_hook(self, site):
        def hook(module, args, kwargs, output):
            if not self.recording:
                return None
            dense = site.layout.densify(site)
            if dense is None:
                return None
            t0 = time.process_time()
            modes = _modes(module)
            try:
                module.eval()
                with torch.no_grad(), hooks_suspended(module):
                    hard = first_tensor(module(*args, **kwargs))
                    with dense:
                        soft = first_tensor(module(*args, **kwargs))
                self._gaps[site.index].add(relative_change(soft, hard))
            finally:
                for m, mode in modes:
                    m.training = mode
            self.seconds_hooks += time.process_time() - t0
            return None

        return hook

    def _root_pre(self, module, args):
        self._t_start = time.process_time()

    def _root_post(self, module, args, output):
        self.seconds_forward += time.process_time() - self._t_start

    def __enter__(self):
        m = self.model
        self._handles = [m.register_forward_pre_hook(self._root_pre), m.register_forward_hook(self._root_post)]
        for s in self.sites:
            self._handles.append(s.router.register_forward_hook(self._router_hook(s)))
            if self.gap:
                self._handles.append(s.block.register_forward_hook(self._block_hook(s), with_kwargs=True))
        if self._tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("RoutingMonitor: tensorboard is not installed; writing the CSV only.", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(self._tb_dir))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # -- the callback ------------------------------------------------------------------------------
    def step(self) -> list[dict]:
        """End a training step: on a recorded step, add its rows (returned) and rewrite the CSV."""
        new = []
        if self.recording and any(len(v) for v in self._margins.values()):
            t0 = time.process_time()
            for s in self.sites:
                m = np.concatenate(self._margins[s.index]) if self._margins[s.index] else np.empty(0)
                row = {"step": self.steps, "layer": s.index, "module": s.name, "tokens": int(m.size)}
                near = mean_estimate((m[:, None] <= np.asarray(self.widths)).astype(np.float64)) if m.size else None
                for i, w in enumerate(self.widths):
                    row[f"near_tie_w{w:g}"] = float(near.value[i]) if near is not None else float("nan")
                    row[f"near_tie_w{w:g}_stderr"] = float(near.stderr[i]) if near is not None else float("nan")
                for q in self.quantiles:
                    row[f"margin_q{q:g}"] = float(np.quantile(m, q)) if m.size else float("nan")
                g = self._gaps[s.index].estimate()
                row["soft_hard_gap"], row["soft_hard_gap_stderr"] = g.value, g.stderr
                new.append(row)
                if self._tb is not None:
                    for key, v in row.items():
                        if key not in ("step", "layer", "module", "tokens"):
                            self._tb.add_scalar(f"routing/layer{s.index}/{key}", v, self.steps)
            for row in new:
                row["overhead"] = self.overhead
            self.rows += new
            self._write()
            self.seconds_flush += time.process_time() - t0
        self._reset()
        self.steps += 1
        return new

    def _write(self):
        from ..results.io import csv_text, atomic_write
        from ..results.table import Table

        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        atomic_write(self.path, csv_text(Table(self.path.stem, cols, self.rows)))
