"""Print the zoo table (docs/inspect.md, "The zoo"): every model of softhard.inspect.zoo and its two seeds, from the
cache (``$SOFTHARD_CACHE``), training what is missing with ``--train``.

Usage: ``SOFTHARD_CACHE=... python scripts/zoo_table.py [--train]``
"""

from __future__ import annotations

import sys


def main() -> int:
    import transformers

    from softhard.inspect.zoo import zoo_table

    transformers.utils.logging.set_verbosity_error()
    rows = zoo_table(train="--train" in sys.argv, progress=True)
    print("| model | class | params | experts | rule | training: CPU s (wall s) | held-out loss, nats/byte (bigram): "
          "docstrings | prose | code | legal | load max/mean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = r["train_cpu_seconds"]
        t = f"{cpu:.0f} ({r['train_seconds']:.0f})" if cpu is not None else f"— ({r['train_seconds']:.0f})"
        cells = [f"`{r['name']}`", f"`{r['model_class']}`", f"{r['params'] / 1e6:.2f} M",
                 f"{r['experts']}, top-{r['top_k']}", r["rule"], t]
        for kind in ("docstrings", "prose", "code", "legal"):
            cells.append(f"{r[kind + '_loss']:.3f} ± {r[kind + '_loss_stderr']:.3f} ({r[kind + '_bigram']:.3f})")
        cells.append(f"{r['load_max_ratio']:.2f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
