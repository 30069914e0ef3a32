"""The zoo table of docs/hardening.md: every zoo model × every kind of held-out text, hardening and cutting top-k
priced and measured.

Usage::

    python scripts/price_zoo.py run DIR [MODEL ...]   # softhard inspect each model on each text into DIR/<model>/<kind>
    python scripts/price_zoo.py table DIR             # write the tables into docs/hardening.md (zoo markers)

``run`` calls ``softhard inspect MODEL --text softhard:KIND --tokens 16384 --seq-len 128 --harden --topk`` (the
inspection's own sensitivity runs switched off) for MODEL in ``softhard:tiny-lm``, ``softhard:deepseek-lm``,
``softhard:qwen-lm`` (default; ``softhard:NAME@1`` for the zoo's second training seed) and KIND in prose, code,
legal; ``table`` reads the ``hardening.json``, ``topk.json`` and ``topk_budget.json`` they wrote (the three
models, then any ``NAME@SEED`` found in DIR).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from doc_block import update

DOC = Path(__file__).resolve().parents[1] / "docs" / "hardening.md"
BEGIN, END = "<!-- zoo:begin (scripts/price_zoo.py) -->", "<!-- zoo:end -->"
MODELS = ("softhard:tiny-lm", "softhard:deepseek-lm", "softhard:qwen-lm")
KINDS = ("prose", "code", "legal")
TAUS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
ARGS = ["--tokens", "16384", "--seq-len", "128", "--batch-size", "8", "--taus", "", "--no-dense", "--perturb", "none",
        "--no-overhead", "--no-progress", "--harden", "--topk"]


def run(root: Path, models) -> None:
    from typer.testing import CliRunner

    from softhard.cli import app

    for m in models:
        for kind in KINDS:
            out = root / m.split(":", 1)[1] / kind
            r = CliRunner().invoke(app, ["inspect", m, "--text", f"softhard:{kind}", "--out", str(out), *ARGS])
            print(r.output, file=sys.stderr)


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pm(v, s, fmt=".4f") -> str:
    v, s = _f(v), _f(s)
    if not math.isfinite(v):
        return "—"
    return f"{v:{fmt}}" if not math.isfinite(s) else f"{v:{fmt}} ± {s:.2g}"


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def tables(root: Path) -> str:
    order = lambda n: (MODELS.index(n.split("@")[0]) if n.split("@")[0] in MODELS else len(MODELS), n)  # noqa: E731
    seeded = sorted((f"softhard:{d.name}" for d in root.iterdir() if d.is_dir() and "@" in d.name), key=order)
    runs = [(m, k, root / m.split(":", 1)[1] / k) for m in (*MODELS, *seeded) for k in KINDS]
    runs = [(m, k, d) for m, k, d in runs if (d / "hardening.json").is_file()]
    out = [BEGIN, "", "**Hardening** (`L_τ − L_0`, nats per token; ± one standard error, paired jackknife over "
           "sequences; *italic*: not resolved):", "",
           "| model | text | τ | measured | first order G₁τ | measured / first order | whole curve | "
           "measured / whole curve |", "|---|---|---|---|---|---|---|---|"]
    summary = ["", "**Targets** (first order ×0.8–1.25 at τ = 0.02–0.1; whole curve ×0.75–1.33 at τ = 0.2–1) and "
               "the range of τ where each prediction holds (ratio in its band, within 2 paired errors, resolved):", "",
               "| model | text | L_0 − L_1 | G₁ (h used) | first order: target | holds at τ | whole curve: target | "
               "holds at τ | all − Σ layers at τ = 1 |", "|---|---|---|---|---|---|---|---|---|"]
    for m, k, d in runs:
        h = _load(d / "hardening.json")
        rows = {_f(r["tau"]): r for r in h["rows"]}
        for t in TAUS:
            r = rows.get(t)
            if r is None:
                continue
            it = (lambda s: s) if r.get("resolved") in (True, "True") else (lambda s: f"*{s}*")
            out.append(f"| `{m}` | {k} | {t:g} | {it(_pm(r['gap'], r['gap_stderr_seq']))} | "
                       f"{_pm(r['predicted'], r['predicted_stderr'])} | {_pm(r['ratio'], r['ratio_stderr'], '.2f')} | "
                       f"{_pm(r['predicted_curve'], r['predicted_curve_stderr'])} | "
                       f"{_pm(r['curve_ratio'], r['curve_ratio_stderr'], '.2f')} |")
        meta = h["meta"]
        tc, ha = meta["target_check"], meta["holds_at"]
        span = lambda runs_: ", ".join(f"{min(x):g}–{max(x):g}" if len(x) > 1 else f"{x[0]:g}"  # noqa: E731
                                       for x in runs_) or "none"
        summary.append(f"| `{m}` | {k} | {_pm(meta['hard_minus_shipped'], meta['hard_minus_shipped_stderr'])} | "
                       f"{_pm(meta['G1'], meta['G1_stderr'], '.3f')} | "
                       f"{'met' if tc['first order']['met'] else 'missed'} | {span(ha['first order'])} | "
                       f"{'met' if tc['whole curve']['met'] else 'missed'} | {span(ha['whole curve'])} | "
                       f"{_pm(rows[1.0]['interaction'], rows[1.0]['interaction_stderr_seq']) if 1.0 in rows else '—'}"
                       " |")
    layers = ["", "**Per layer** (`hardening_layers.csv`; path, bandwidth used / rule's bandwidth h, margin density "
              "at 0, mean tie contrast (nats), G₁^ℓ at h, h/2, h/4, the one used ± its error with the bandwidth "
              "spread; layer ℓ alone (others hard) at τ = 1: measured / whole curve, and at τ = 0.02: measured / "
              "first order / whole curve):", "",
              "| model | text | layer | path | h used / h | f_Δ(0⁺) | tie contrast | G₁^ℓ (h, h/2, h/4) | G₁^ℓ used | "
              "τ = 1: measured / whole curve | τ = 0.02: measured / first order / whole curve |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, k, d in runs:
        lay = _load(d / "hardening_layers.json")
        h = _load(d / "hardening.json")
        by_tau = {_f(r["tau"]): r for r in h["rows"]}
        r1, r02 = by_tau.get(1.0), by_tau.get(0.02)
        for r in (lay or {}).get("rows", []):
            i = int(r["layer"])
            at1 = (f"{_pm(r1[f'layer{i}_gap'], r1[f'layer{i}_gap_stderr_seq'])} / "
                   f"{_pm(r1[f'layer{i}_predicted_curve'], r1[f'layer{i}_predicted_curve_stderr'])}"
                   if r1 is not None else "—")
            at = (f"{_pm(r02[f'layer{i}_gap'], r02[f'layer{i}_gap_stderr_seq'])} / "
                  f"{_pm(r02[f'layer{i}_predicted'], r02[f'layer{i}_predicted_stderr'])} / "
                  f"{_pm(r02[f'layer{i}_predicted_curve'], r02[f'layer{i}_predicted_curve_stderr'])}"
                  if r02 is not None else "—")
            layers.append(f"| `{m}` | {k} | {i} | {r['path']} | "
                          f"{_f(r['bandwidth_used']):.3g} / {_f(r['bandwidth']):.3g} | "
                          f"{_f(r['density0']):.3g} | {_f(r['mean_contrast']):+.3f} | "
                          f"{_f(r['G1_h']):+.3f}, {_f(r['G1_h2']):+.3f}, {_f(r['G1_h4']):+.3f} | "
                          f"{_pm(r['G1'], r['G1_stderr'], '+.3f')} | {at1} | {at} |")
    topk = ["", "**Cutting top-k** (`L_{k'} − L_k` of one layer, the others as shipped; nats per token; measured ± "
            "per-sequence error, predicted ± jackknife error; ✓: within 2 paired errors):", "",
            "| model | text | k → k' | per layer: measured / predicted |", "|---|---|---|---|"]
    budget = ["", "**A per-layer k for an expert-FLOP budget** (every layer cut at once; the allocation the "
              "predictions favour against uniform k at the same FLOPs):", "",
              "| model | text | budget Σk | chosen k per layer | predicted: chosen / uniform | measured (chosen) | "
              "uniform k | measured (uniform) | chosen − uniform |", "|---|---|---|---|---|---|---|---|---|"]
    for m, k, d in runs:
        t = _load(d / "topk.json")
        if t is None:
            continue
        by = {}
        for r in t["rows"]:
            by.setdefault((int(r["k"]), int(r["k_cut"])), []).append(r)
        for (kk, kc), rs in sorted(by.items(), key=lambda x: -x[0][1]):
            cells = "; ".join(f"L{r['layer']}: {_pm(r['measured'], r['measured_stderr_seq'])} / "
                              f"{_pm(r['predicted'], r['predicted_stderr'])}"
                              f"{' ✓' if r['agrees'] in (True, 'True') else ''}"
                              for r in rs)
            topk.append(f"| `{m}` | {k} | {kk} → {kc} | {cells} |")
        b = _load(d / "topk_budget.json")
        for r in (b or {}).get("rows", []):
            budget.append(f"| `{m}` | {k} | {r['budget']} | {r['allocation']} | "
                          f"{_f(r['predicted_chosen']):.4f} / {_f(r['predicted_uniform']):.4f} | "
                          f"{_pm(r['measured_chosen'], r['measured_chosen_stderr'])} | {r['uniform_k']} | "
                          f"{_pm(r['measured_uniform'], r['measured_uniform_stderr'])} | "
                          f"{_pm(r['chosen_minus_uniform'], r['chosen_minus_uniform_stderr'])} |")
    return "\n".join(out + summary + layers + topk + budget + ["", END])


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[2])
    if sys.argv[1] == "run":
        run(root, sys.argv[3:] or MODELS)
        return 0
    return update(DOC, BEGIN, END, tables(root), False, "the zoo tables")


if __name__ == "__main__":
    sys.exit(main())
