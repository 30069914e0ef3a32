"""Models trained here and the texts they are judged on.

:mod:`.corpus` (the training text: standard-library docstrings), :mod:`.texts` (held-out text of three kinds:
prose, code, legal).
"""

from .texts import TEXT_KINDS, heldout_text, text_info

__all__ = ["TEXT_KINDS", "heldout_text", "text_info"]
