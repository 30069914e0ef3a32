r"""Training-time routing monitor: the inspection hooks, kept on inside a user's own training loop.

.. code-block:: python

    with RoutingMonitor(model, "routing.csv", every=50, writers=[SummaryWriter("runs/x")]) as mon:
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
            mon.step()
    print(mon.overhead)  # monitor CPU time / forward CPU time without it, measured in this run

For transformers' ``Trainer`` use :class:`softhard.RoutingCallback` (``softhard.inspect.io.callbacks``), which
drives this monitor from the Trainer's step events. Steps are counted by :meth:`RoutingMonitor.step`; the
forward calls of every ``every``-th step (0, N, 2N, ...) are recorded, other steps cost one flag test per
hook. Per MoE layer and recorded step it produces one row (CSV column = metric name ``<metric>``; every writer
gets ``moe/<metric>_layer_<i>``, :mod:`softhard.inspect.io.writers`) with

- ``boundary_mass_w{w}``: the share of tokens whose decision margin :math:`m \le w` (the layer's routing
  rule, :mod:`softhard.inspect.rules`; :math:`a_{(k)} - a_{(k+1)}` for top-k of the logits), i.e.
  :math:`\beta(w)` (2.13) of the step's tokens, with its standard error (CSV);
- ``margin_p{100q}``: the q-quantiles of :math:`m` (``margin_p50`` is the median);
- ``pred_flip_rate_bf16``: the predicted share of tokens whose selected set changes when the router
  :math:`a = W h + b` is computed in bfloat16 instead of the precision it ran in
  (:func:`softhard.inspect.price.flips.predicted_flip_rate` on each router call's input, weight and logits),
  with its standard error (CSV); empty, with a warning, for a router without a ``(K, d)`` ``weight``;
- ``load_imbalance``, ``load_min``, ``load_entropy`` and, for layers with at most ``max_expert_keys``
  experts, ``expert{j}_load``: expert loads relative to the balanced load
  (:func:`softhard.inspect.io.metrics.load_summary`);
- ``soft_hard_gap`` (with ``gap=True``): the mean over tokens of :math:`\lVert o^{dense}_i - o_i\rVert /
  \lVert o_i\rVert`, the relative gap between the block's output with fully dense soft routing and with the
  model's own (hard top-k) routing, both recomputed in eval mode on the block's recorded input (no dropout or
  jitter, no RNG use, no gradient, and with every hook inside the block suspended, so that e.g.
  transformers' router-logit recorders do not see the extra calls) — empty when the layout has no dense mode;
- ``overhead`` (CSV only): the running ratio of monitor time (hooks, :meth:`RoutingMonitor.step`, writers)
  to forward time without the monitor's hooks, so far (this step's writing is counted at the next one).
  Times are CPU seconds of the process (``time.process_time``), which waits caused by other processes on a
  shared machine do not inflate.

The CSV (optional: ``path=None`` writes none) also has ``step``, ``layer`` (the MoE layer's position among
those found), ``log_layer`` (the ``i`` of the scalar names: the model's decoder layer, the first integer of
the router's module path, as Megatron-Core numbers its layers; the position when that is missing or not
unique), ``module`` and ``tokens``; rows are kept in memory and the CSV is rewritten atomically at each
recorded step. Writers get values only, and nothing for a layer that saw no token in the step.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._validate import check_grid, check_int, fail
from ..estimators.reducer import mean_estimate
from .hooks import first_tensor, hooks_suspended
from .io.metrics import load_summary
from .io.writers import check_writers, moe_tag, tensorboard_writer
from .layouts import find_routers
from .price.flips import predicted_flip_rate
from .sensitivity import relative_change
from .stats import StreamMean

__all__ = ["RoutingMonitor", "log_layers"]

_META = ("step", "layer", "log_layer", "module", "tokens", "overhead")


def _modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    return [(m, m.training) for m in module.modules()]


def log_layers(sites) -> list[int]:
    """The ``i`` of ``moe/<metric>_layer_<i>`` for each site: the first integer of the router's module path
    (``model.layers.5.mlp.gate`` -> 5, the decoder layer, as Megatron-Core numbers layers), or the site's
    position among the MoE layers when a path has no integer or two sites would share one."""
    nums = []
    for s in sites:
        ints = [int(p) for p in s.name.split(".") if p.isdigit()]
        nums.append(ints[0] if ints else None)
    if None in nums or len(set(nums)) != len(nums):
        return [s.index for s in sites]
    return nums


class _Buffer:
    """What the router hook collected for one layer during the current step."""

    def __init__(self):
        self.margins, self.flips, self.counts = [], [], None


class RoutingMonitor:
    """Log per-layer boundary mass, margin quantiles, predicted bf16 flips, expert loads and (optionally) the
    soft-vs-hard gap every ``every`` steps, to a CSV and to scalar writers (module docstring).

    Args:
        model: the model being trained (any ``nn.Module`` with MoE layers, see :func:`find_routers`).
        path: the CSV file to write, or ``None`` for none.
        every: record every ``every``-th step (counted by :meth:`step`).
        widths: the ``w`` of the boundary-mass metrics, shape ``(W,)``.
        quantiles: margin quantiles to log, each in [0, 1].
        gap: compute the soft-vs-hard gap (two extra block evaluations per recorded step and layer).
        tensorboard: a log directory: TensorBoard event files are written there (needs ``tensorboard``, the
            ``monitor`` extra).
        writers: scalar writers (anything with ``add_scalar(tag, value, step)``), one or a list; flushed, not
            closed, by the monitor.
        max_expert_keys: per-expert loads are logged for layers with at most this many experts (0: never).
        router_path, layers, top_k: as in :func:`find_routers`.
    """

    def __init__(self, model: torch.nn.Module, path=None, *, every: int = 100, widths=(0.01, 0.1, 1.0),
                 quantiles=(0.01, 0.1, 0.5), gap: bool = True, tensorboard=None, writers=None,
                 max_expert_keys: int = 16, router_path: str | None = None, layers=None, top_k: int | None = None):
        where = "RoutingMonitor"
        self.model = model
        self.path = None if path is None else Path(path)
        self.every = check_int(every, "every", where)
        self.widths = [float(w) for w in check_grid(widths, "widths", where)]
        self.quantiles = [float(q) for q in check_grid(quantiles, "quantiles", where)]
        if max(self.quantiles) > 1:
            fail("quantiles", where, "values in [0, 1]", self.quantiles)
        for name, grid, key in (("widths", self.widths, self._mass_key), ("quantiles", self.quantiles, self._q_key)):
            if len({key(v) for v in grid}) != len(grid):
                fail(name, where, "values that differ in their first 6 significant digits (they name metrics)", grid)
        self.gap = bool(gap)
        self.max_expert_keys = check_int(max_expert_keys, "max_expert_keys", where, 0)
        self.writers = check_writers(writers, where)
        self.sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
        self.log_layers = log_layers(self.sites)
        self.rows: list[dict] = []
        self.steps = 0
        self.paused = False
        self.seconds_forward = self.seconds_hooks = self.seconds_flush = 0.0
        self._tb_dir, self._own = tensorboard, []
        self._no_flips: set[int] = set()
        self._handles = []
        self._reset()

    @staticmethod
    def _mass_key(w: float) -> str:
        return f"boundary_mass_w{w:g}"

    @staticmethod
    def _q_key(q: float) -> str:
        return f"margin_p{100 * q:g}"

    # -- bookkeeping ---------------------------------------------------------------------------
    def _reset(self):
        self._buf = {s.index: _Buffer() for s in self.sites}
        self._gaps = {s.index: StreamMean() for s in self.sites}

    @property
    def recording(self) -> bool:
        """Whether the forward calls of the current step are recorded."""
        return not self.paused and self.steps % self.every == 0

    @property
    def overhead(self) -> float:
        """Monitor time (in the hooks and in :meth:`step`) / forward time without the hooks, over the whole
        run so far (nan before any forward call)."""
        base = self.seconds_forward - self.seconds_hooks
        return (self.seconds_hooks + self.seconds_flush) / base if base > 0 else float("nan")

    def begin(self, step: int) -> None:
        """Start step number ``step`` (recorded when ``step % every == 0``), dropping anything recorded since the
        last :meth:`step` (e.g. evaluation forwards), and resume recording (for drivers such as the Trainer
        callback, which number steps themselves)."""
        self.steps, self.paused = int(step), False
        self._reset()

    # -- hooks -----------------------------------------------------------------------------------
    def _router_hook(self, site):
        def hook(module, args, output):
            if not self.recording:
                return None
            t0 = time.process_time()
            with torch.no_grad():
                routed = site.read(args, output)
                logits = routed.logits.detach()
                m = site.rule.margin(logits)
                flips = self._predict_flips(site, args, logits)
                sel = routed.selected.reshape(-1)
                counts = torch.bincount(sel[sel >= 0].long(), minlength=site.num_experts).cpu().numpy()
                b = self._buf[site.index]
                b.margins.append(m.cpu().numpy())
                if flips is not None:
                    b.flips.append((flips.n, flips.value, flips.stderr))
                b.counts = counts if b.counts is None else b.counts + counts
            self.seconds_hooks += time.process_time() - t0
            return None

        return hook

    def _predict_flips(self, site, args, logits):
        """The bf16 flip prediction of one router call (an Estimate over its tokens), or ``None`` (warned once
        per layer) when the router is not a linear map ``W h + b`` of its first input that we can read."""
        w = getattr(site.router, "weight", None)
        h = args[0] if args and isinstance(args[0], torch.Tensor) else None
        K = logits.shape[-1]
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[0] == K and h is not None \
                and h.shape[-1] == w.shape[1] and h.numel() // w.shape[1] == logits.shape[0]:
            bias = getattr(site.router, "bias", None)
            bias = bias.detach() if isinstance(bias, torch.Tensor) and tuple(bias.shape) == (K,) else None
            return predicted_flip_rate(h.detach().reshape(-1, w.shape[1]), w.detach(), logits, rule=site.rule,
                                       bias=bias, precision="bf16")
        if site.index not in self._no_flips:
            self._no_flips.add(site.index)
            warnings.warn(f"RoutingMonitor: no bf16 flip prediction for layer {site.index} ({site.name}): its "
                          f"router is not a linear map with a ({K}, d) weight of its input; pred_flip_rate_bf16 "
                          f"is left empty.", stacklevel=2)
        return None

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
        if self._tb_dir is not None:
            self._own = [tensorboard_writer(self._tb_dir)]
        m = self.model
        self._handles = [m.register_forward_pre_hook(self._root_pre), m.register_forward_hook(self._root_post)]
        for s in self.sites:
            self._handles.append(s.router.register_forward_hook(self._router_hook(s)))
            if self.gap:
                self._handles.append(s.block.register_forward_hook(self._block_hook(s), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        for w in self.writers:
            if callable(getattr(w, "flush", None)):
                w.flush()
        for w in self._own:
            w.close()
        self._own = []

    # -- the callback ------------------------------------------------------------------------------
    def step(self) -> list[dict]:
        """End a training step: on a recorded step, add its rows (returned), rewrite the CSV and write the
        scalars."""
        new = []
        if self.recording and any(b.margins for b in self._buf.values()):
            t0 = time.process_time()
            new = [self._row(s) for s in self.sites]
            for row in new:
                row["overhead"] = self.overhead
            self.rows += new
            if self.path is not None:
                self._write()
            self._emit(new)
            self.seconds_flush += time.process_time() - t0
        self._reset()
        self.steps += 1
        return new

    def _row(self, s) -> dict:
        b = self._buf[s.index]
        m = np.concatenate(b.margins) if b.margins else np.empty(0)
        row = {"step": self.steps, "layer": s.index, "log_layer": self.log_layers[s.index], "module": s.name,
               "tokens": int(m.size)}
        near = mean_estimate((m[:, None] <= np.asarray(self.widths)).astype(np.float64)) if m.size else None
        for i, w in enumerate(self.widths):
            key = self._mass_key(w)
            row[key] = float(near.value[i]) if near is not None else math.nan
            row[f"{key}_stderr"] = float(near.stderr[i]) if near is not None else math.nan
        qs = np.quantile(m, self.quantiles) if m.size else [math.nan] * len(self.quantiles)
        for q, v in zip(self.quantiles, qs):
            row[self._q_key(q)] = float(v)
        # the step's mean over tokens from the per-call means; its error from the per-call errors (calls as strata)
        n, mean, se = (np.array(v, dtype=np.float64) for v in zip(*b.flips)) if b.flips else ([], [], [])
        N = float(np.sum(n))
        row["pred_flip_rate_bf16"] = float(np.sum(n * mean) / N) if N else math.nan
        row["pred_flip_rate_bf16_stderr"] = float(np.sqrt(np.sum((n * se) ** 2)) / N) if N else math.nan
        counts = b.counts if b.counts is not None else np.zeros(s.num_experts)
        row.update(load_summary(counts, self.max_expert_keys))
        if self.gap:
            g = self._gaps[s.index].estimate()
            row["soft_hard_gap"], row["soft_hard_gap_stderr"] = g.value, g.stderr
        return row

    def _emit(self, rows):
        writers = self.writers + self._own
        for row in rows:
            if not row["tokens"]:
                continue
            for key, v in row.items():
                if key not in _META and not key.endswith("_stderr") and not (isinstance(v, float) and math.isnan(v)):
                    for w in writers:
                        w.add_scalar(moe_tag(key, row["log_layer"]), v, row["step"])
        for w in writers:
            if callable(getattr(w, "flush", None)):
                w.flush()

    def _write(self):
        from ..results.io import atomic_write, csv_text
        from ..results.table import Table

        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        atomic_write(self.path, csv_text(Table(self.path.stem, cols, self.rows)))
