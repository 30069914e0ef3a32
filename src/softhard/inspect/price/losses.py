"""The losses a price is measured in: the next-token cross-entropy of a causal LM, a classifier's cross-entropy
against its labels, and the task loss ``softhard inspect`` uses for a model (:func:`task_loss`)."""

from __future__ import annotations

from typing import Callable

import torch

from ..digits import DIGITS
from ..layouts import InspectError
from ..loading import Batch
from ..sensitivity import final_output

__all__ = ["lm_loss", "label_loss", "task_loss"]


def lm_loss(batch: Batch, out) -> torch.Tensor:
    r"""Next-token cross-entropy (nats) of a causal LM, ``(B, S - 1)``: :math:`-\log p(x_{t+1} \mid x_{\le t})`."""
    logits = final_output(out).to(torch.float64)
    ids = batch.inputs["input_ids"]
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0]


def label_loss(labels: torch.Tensor) -> Callable:
    """Cross-entropy of a classifier against ``labels[ids]`` (``ids (B, 1)``: sample indices), ``(B, 1)``."""
    labels = torch.as_tensor(labels)

    def loss(batch: Batch, out) -> torch.Tensor:
        logits = final_output(out).to(torch.float64)
        y = labels[batch.ids[:, 0]].to(logits.device)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")[:, None]

    return loss


def task_loss(model_name: str, net, batches: list[Batch], data_seed: int, option: str) -> Callable:
    """The loss a price is measured in for ``softhard inspect``: the labels of ``softhard:digits`` (in the order of
    ``data_seed``), the next token of a causal language model; :class:`InspectError` for any other model."""
    if model_name == DIGITS:
        from ..digits import digits_data

        return label_loss(digits_data(data_seed)[1])
    if getattr(getattr(net, "config", None), "is_encoder_decoder", False) or "input_ids" not in batches[0].inputs:
        raise InspectError(f"{option} measures the next-token loss of a causal language model; {model_name} "
                           f"({type(net).__name__}) is not one.")
    return lm_loss
