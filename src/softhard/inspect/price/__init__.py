"""Pricing a router change before making it: predicted beside measured (issue 20).

:mod:`.flips` — the share of tokens whose selected experts change under bf16/fp16/fp8 router compute, int8/int4
weight-only quantization (of the router or the whole model, through optimum-quanto) and Gaussian noise, predicted
from the margins and an error model of the scores (``docs/flips.md``).
"""

from .flips import PRICED, FlipPrice, predicted_flip_rate, price_flips, write_flips

__all__ = ["PRICED", "FlipPrice", "predicted_flip_rate", "price_flips", "write_flips"]
