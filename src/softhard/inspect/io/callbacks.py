r"""transformers' ``Trainer`` callback: the training-time routing monitor, logging where the Trainer logs.

.. code-block:: python

    from softhard import RoutingCallback

    args = TrainingArguments("out", report_to=["tensorboard", "wandb"], ...)
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[RoutingCallback(every=50)])
    trainer.train()   # moe/boundary_mass_w0.1_layer_3, moe/margin_p10_layer_3, ... every 50 steps

Each ``every``-th optimizer step (global steps ``every, 2·every, ...``, the Trainer's ``logging_steps``
convention), the router calls of all its forward passes (every micro-batch under gradient accumulation) are
recorded by :class:`softhard.inspect.RoutingMonitor` and, at the end of the step, written as
``moe/<metric>_layer_<i>`` scalars at that global step (metrics and names: :mod:`softhard.inspect.monitor`,
:mod:`softhard.inspect.io.writers`). Forward calls outside training steps (evaluation) are not recorded. In
distributed training only the main process (``state.is_world_process_zero``) monitors, on its own tokens.
"""

from __future__ import annotations

import os
import time

from ..._validate import check_int, fail
from ..monitor import RoutingMonitor
from .writers import MissingExtra, WandbWriter, check_writers, tensorboard_writer

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - transformers is in the models extra
    raise MissingExtra("RoutingCallback needs the 'transformers' package, which is not installed: "
                       "pip install 'softhard[models]'.") from e

__all__ = ["RoutingCallback", "NAMED_WRITERS"]

NAMED_WRITERS = ("tensorboard", "wandb")


class RoutingCallback(TrainerCallback):
    """Routing metrics of the model being trained, every ``every`` steps, to TensorBoard, W&B or any writer.

    Args:
        writers: where to write: writers (anything with ``add_scalar(tag, value, step)``) and/or the names
            ``"tensorboard"`` (event files in ``tensorboard_dir``) and ``"wandb"`` (the active W&B run, e.g. the
            one the Trainer's ``WandbCallback`` started); default: the names among ``args.report_to``.
        every: record every ``every``-th optimizer step.
        widths, quantiles, gap, max_expert_keys, router_path, layers, top_k: as in
            :class:`softhard.inspect.RoutingMonitor` (``gap`` is off by default here: it costs two extra
            evaluations of every MoE block per recorded step).
        csv: also write every row, with standard errors and token counts, to this CSV file.
        tensorboard_dir: the event-file directory for ``"tensorboard"``; default ``$TENSORBOARD_LOGGING_DIR``
            if set (where the Trainer writes), else ``<output_dir>/runs/softhard-routing``.

    Attributes:
        monitor: the :class:`~softhard.inspect.RoutingMonitor` of the last ``train()`` call (``monitor.rows``:
            every row written).
        overhead: monitor CPU time / CPU time of the training steps without it, so far.
    """

    def __init__(self, writers=None, *, every: int = 50, widths=(0.01, 0.1, 1.0), quantiles=(0.01, 0.1, 0.5),
                 gap: bool = False, max_expert_keys: int = 16, csv=None, tensorboard_dir=None,
                 router_path: str | None = None, layers=None, top_k: int | None = None):
        where = "RoutingCallback"
        self.every = check_int(every, "every", where)
        check_int(max_expert_keys, "max_expert_keys", where, 0)
        if writers is not None:
            items = list(writers) if isinstance(writers, (list, tuple)) else [writers]
            for w in items:
                if isinstance(w, str) and w not in NAMED_WRITERS:
                    fail("writers", where, f"writers with add_scalar or names in {NAMED_WRITERS}", w)
            check_writers([w for w in items if not isinstance(w, str)], where)
            writers = items
        self.writers = writers
        self.options = dict(widths=widths, quantiles=quantiles, gap=gap, max_expert_keys=max_expert_keys,
                            router_path=router_path, layers=layers, top_k=top_k)
        self.csv, self.tensorboard_dir = csv, tensorboard_dir
        self.monitor: RoutingMonitor | None = None
        self.seconds_steps = 0.0
        self._own, self._t0, self._active = [], None, False

    @property
    def overhead(self) -> float:
        m = self.monitor
        if m is None:
            return float("nan")
        base = self.seconds_steps - m.seconds_hooks
        return (m.seconds_hooks + m.seconds_flush) / base if base > 0 else float("nan")

    def _resolve(self, args) -> list:
        items = self.writers
        if items is None:
            items = [r for r in (getattr(args, "report_to", None) or []) if r in NAMED_WRITERS]
            if not items and self.csv is None:
                fail("writers", "RoutingCallback", f"given, or report_to of the TrainingArguments naming one of "
                     f"{NAMED_WRITERS}, or csv= given: there is nothing to write to", None)
        out = []
        for w in items:
            if w == "tensorboard":
                d = self.tensorboard_dir or os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                    args.output_dir, "runs", "softhard-routing")
                w = tensorboard_writer(d)
                self._own.append(w)
            elif w == "wandb":
                w = WandbWriter()
            out.append(w)
        return out

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self._active:
            return
        if model is None:
            fail("model", "RoutingCallback.on_train_begin", "the model being trained (the Trainer passes it)", model)
        writers = self._resolve(args)
        self.monitor = RoutingMonitor(model, self.csv, every=self.every, writers=writers, **self.options)
        self.monitor.__enter__()
        self.monitor.paused = True
        self._active, self.seconds_steps = True, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if self._active:
            self.monitor.begin(state.global_step + 1)
            self._t0 = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        m = self.monitor
        if not self._active or self._t0 is None:
            return
        self.seconds_steps += time.process_time() - self._t0
        self._t0 = None
        m.steps = state.global_step
        m.step()
        m.paused = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._active:
            self.monitor.__exit__(None, None, None)
            self._active = False
        for w in self._own:
            w.close()
        self._own = []
