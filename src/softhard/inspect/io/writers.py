r"""Where training-time routing metrics go: any object with ``add_scalar``, TensorBoard, Weights & Biases.

Every metric of MoE layer :math:`i` is written under the name the training stacks already use for their
per-layer MoE scalars, ``moe/<metric>_layer_<i>`` (:func:`moe_tag`). The form is Megatron-Core's: its MoE
metrics tracker (``megatron/core/transformer/moe/moe_logging.py``, ``MoEMetricsTracker._log_per_layer``; before
that ``moe_utils.track_moe_metrics``) writes ``writer.add_scalar(f"moe/{name}_layer_{i}", value, iteration)`` to
TensorBoard and ``wandb_writer.log({f"moe/{name}_layer_{i}": value}, iteration)`` to W&B, with ``i`` the 0-based
index of the transformer layer (``layer_number - 1``), and names percentiles ``{name}_p{100 q}``.

A *writer* is duck-typed: anything with ``add_scalar(tag, value, step)`` (``torch.utils.tensorboard
.SummaryWriter``, tensorboardX, a user's own logger, :class:`ScalarLog`). ``flush()`` and ``close()`` are called
when present. :func:`tensorboard_writer` and :class:`WandbWriter` build the two common ones; their packages are
optional (the ``monitor`` extra: ``pip install 'softhard[monitor]'``) and imported only when asked for.
"""

from __future__ import annotations

from collections import defaultdict

from ..._validate import fail

__all__ = ["moe_tag", "check_writers", "tensorboard_writer", "WandbWriter", "ScalarLog", "MissingExtra"]

EXTRA = "monitor"


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def _missing(package: str, what: str) -> MissingExtra:
    return MissingExtra(f"{what} needs the '{package}' package, which is not installed: "
                        f"pip install 'softhard[{EXTRA}]' (or pip install {package}).")


def moe_tag(metric: str, layer: int) -> str:
    """The scalar name ``moe/<metric>_layer_<layer>`` (Megatron-Core's per-layer MoE form)."""
    return f"moe/{metric}_layer_{layer}"


def check_writers(writers, where: str) -> list:
    """``writers`` as a list (one writer or a list/tuple of them), each checked to have ``add_scalar``."""
    if writers is None:
        return []
    items = list(writers) if isinstance(writers, (list, tuple)) else [writers]
    for w in items:
        if not callable(getattr(w, "add_scalar", None)):
            fail("writers", where, "writers with an add_scalar(tag, value, step) method (a SummaryWriter, a "
                 "WandbWriter, your own)", w, TypeError)
    return items


def tensorboard_writer(log_dir):
    """A ``torch.utils.tensorboard.SummaryWriter`` writing event files to ``log_dir`` (needs ``tensorboard``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
        raise _missing("tensorboard", "Logging to TensorBoard") from e
    return SummaryWriter(str(log_dir))


class WandbWriter:
    """Scalars to a Weights & Biases run through ``add_scalar``, one ``run.log`` call per step.

    The scalars of one step are collected and logged together with ``step_metric: step`` (and no ``step=``
    argument), the way transformers' ``WandbCallback`` logs ``train/global_step``; ``moe/*`` is declared to
    use ``step_metric`` as its x-axis. So the writer shares a run with the Trainer's own logging without
    fighting over W&B's internal step counter. Offline runs (``WANDB_MODE=offline``) work the same.

    Args:
        run: a ``wandb`` run; default ``wandb.run`` (the active one; a clear error when there is none).
        step_metric: the key carrying the training step.
    """

    def __init__(self, run=None, step_metric: str = "train/global_step"):
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "Logging to Weights & Biases") from e
        run = wandb.run if run is None else run
        if run is None or not callable(getattr(run, "log", None)):
            fail("run", "WandbWriter", "a wandb run (call wandb.init() first, or let the Trainer start one with "
                 "report_to=['wandb'])", run)
        self.run, self.step_metric = run, str(step_metric)
        self._step, self._buf = None, {}
        if callable(getattr(run, "define_metric", None)):
            run.define_metric(self.step_metric)
            run.define_metric("moe/*", step_metric=self.step_metric)

    def add_scalar(self, tag: str, value, step: int) -> None:
        if self._buf and step != self._step:
            self.flush()
        self._step = int(step)
        self._buf[str(tag)] = float(value)

    def flush(self) -> None:
        if self._buf:
            self.run.log({**self._buf, self.step_metric: self._step})
            self._buf = {}

    def close(self) -> None:
        self.flush()


class ScalarLog:
    """A writer that keeps every scalar in memory: ``log[tag] -> [(step, value), ...]``."""

    def __init__(self):
        self.scalars = defaultdict(list)

    def add_scalar(self, tag: str, value, step: int) -> None:
        self.scalars[str(tag)].append((int(step), float(value)))

    def __getitem__(self, tag: str) -> list[tuple[int, float]]:
        return self.scalars[tag]
