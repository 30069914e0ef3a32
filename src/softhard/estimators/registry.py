r"""The estimation methods of softhard and how ``method="auto"`` chooses among them."""

from __future__ import annotations

from .._validate import fail

__all__ = ["METHODS", "SAMPLINGS", "CONDITIONAL_TARGET", "resolve_method"]


METHODS = ("auto", "mc", "qmc", "conditional", "exact")


SAMPLINGS = ("mc", "qmc")


CONDITIONAL_TARGET = 5e-3  # default relative error at which a conditional estimator stops (n is then a budget)


def resolve_method(method, where: str, exact: bool, conditional: bool, fallback: str = "mc",
                   methods: tuple = METHODS, conditional_rule: str = "a Gaussian or GaussianMixture law") -> str:
    r"""The estimator that ``method`` names for one call (``docs/estimators.md``, "Choosing").

    ``"auto"``: ``"exact"`` where a closed form applies, else ``"conditional"`` where a conditional
    estimator applies, else ``fallback``. An explicit ``"conditional"`` where none applies is an error;
    an explicit ``"exact"`` is left to the closed form, which says why it does not apply.
    """
    if method not in methods:
        fail("method", where, f"one of {methods}", method)
    if method == "auto":
        return "exact" if exact else "conditional" if conditional else fallback
    if method == "conditional" and not conditional:
        fail("method", where, f"one of {tuple(m for m in methods if m != 'conditional')} here: 'conditional' needs "
             f"{conditional_rule}", method)
    return method
