"""Models trained here and the texts they are judged on (see ``docs/inspect.md``, "The zoo").

:mod:`.corpus` (the training text: standard-library docstrings; the byte tokenizer), :mod:`.texts` (held-out text of
three kinds: prose, code, legal), :mod:`.train` (the one training loop, cache and evaluation), :mod:`.models` (the
zoo: ``softhard:tiny-lm``, ``softhard:deepseek-lm``, ``softhard:qwen-lm``, two seeds each).
"""

from .models import ZOO, list_zoo, parse_zoo_name, zoo_config, zoo_lm, zoo_table
from .texts import TEXT_KINDS, heldout_text, text_info

__all__ = ["TEXT_KINDS", "heldout_text", "text_info", "ZOO", "list_zoo", "parse_zoo_name", "zoo_config", "zoo_lm",
           "zoo_table"]
