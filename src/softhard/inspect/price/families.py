r"""Every token-routed family priced: hardening each MoE family of the installed transformers on its tiny model.

:func:`price_family` builds the family's tiny random model (:func:`softhard.inspect.families.check_family`: saved,
reloaded, its routing rule identified and checked against the model's own selection), runs
:func:`softhard.inspect.hardening.harden` on seeded random tokens and checks what makes a price a price:

- τ = 1 is the model as shipped, exactly (``tau1_max_abs_change == 0``);
- the hard model differs from the shipped one (``hard_minus_shipped != 0``), and the curve reaches it:
  :math:`|L_{\tau_{min}} - L_0| \le 10^{-2}\,|L_1 - L_0| + 10^{-6}` at :math:`\tau_{min} = 10^{-7}` (the
  last term: float32 rounding of the losses);
- the first-order constant is finite.

The loss is the next-token cross-entropy when the model's output has one logit per vocabulary entry (causal LMs,
and encoder–decoders fed the same ids on both sides), else the cross-entropy against the shipped model's own
most likely class (a token classifier: the scan needs *a* loss; a user passes the task's). ``scripts/
price_families.py`` writes the table into ``docs/hardening.md``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["price_family", "price_table_line"]

SCAN_TAUS = (1.0, 0.1, 0.01, 1e-7)
FLOAT_FLOOR = 1e-6  # nats: below this, mean loss differences of float32 models are rounding


def _loss_for(model, batches, vocab: int):
    from ..sensitivity import final_output
    from .losses import lm_loss

    with torch.no_grad():
        outs = [final_output(model(**b.inputs)) for b in batches]
    if outs[0].shape[-1] == vocab:
        return lm_loss, "next-token cross-entropy"
    labels = {tuple(b.ids[j].tolist()): o[j].argmax(-1) for b, o in zip(batches, outs) for j in range(b.ids.shape[0])}

    def self_label(b, o):
        logits = final_output(o).to(torch.float64)
        y = torch.stack([labels[tuple(r.tolist())] for r in b.ids]).to(logits.device)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="none").reshape(y.shape)

    return self_label, "cross-entropy against the shipped model's own argmax (not a language-model head)"


def price_family(fam, *, seed: int = 0, tokens: int = 512, seq_len: int = 32, batch_size: int = 8) -> dict:
    """Price hardening on the family's tiny model (module docstring). Returns ``{"family", "status", "path",
    "layers", "rule", "G1", "hard_minus_shipped", "note"}`` with status ``priced``, ``refused`` (the note says
    why), ``not built`` or ``no-moe`` (as :func:`~softhard.inspect.families.check_family` found it)."""
    from ..families import check_family
    from ..hardening import harden
    from ..layouts import InspectError
    from ..loading import token_batches, vocab_size

    row, model, sites, _ = check_family(fam, seed=seed, keep=True)
    out = {"family": row["family"], "status": row["status"], "path": "", "layers": row["layers"],
           "rule": row["rule"], "G1": math.nan, "hard_minus_shipped": math.nan, "note": row["note"]}
    if model is None or row["status"] not in ("supported",):
        if out["status"] == "unsupported":
            out["status"] = "refused"
            out["note"] = f"its routing is not read right: {row['note']}"
        return out
    vocab = vocab_size(model)
    ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(seed))
    batches = token_batches(model, ids, seq_len, batch_size)
    loss, what = _loss_for(model, batches, vocab)
    try:
        h = harden(model, batches, loss, taus=SCAN_TAUS, max_tie_tokens=32, curve_tokens=8, seed=seed)
    except InspectError as e:
        note = str(e).split(": ", 1)[-1]
        if "router rows per token" in note or "rows for" in note:
            note += (" Its router is called on more rows than the forward has tokens (a block-diffusion decoder routes "
                     "its canvas), so the rows cannot be paired with next-token losses")
        out.update(status="refused", note=note)
        return out
    except Exception as e:  # noqa: BLE001 - recorded in the table
        out.update(status="refused", note=f"{type(e).__name__} while hardening: {str(e).splitlines()[0][:160]}")
        return out
    m = h.meta
    gap = {r["tau"]: r["gap"] for r in h.rows}
    checks = []
    if m["tau1_max_abs_change"] != 0:
        checks.append(f"tau = 1 changes the loss by up to {m['tau1_max_abs_change']:.2g}")
    if not m["hard_minus_shipped"]:
        checks.append("the hard model equals the shipped one")
    elif abs(gap[min(SCAN_TAUS)]) > 1e-2 * abs(m["hard_minus_shipped"]) + FLOAT_FLOOR:
        checks.append(f"at tau = {min(SCAN_TAUS):g} the loss is {gap[min(SCAN_TAUS)]:.2g} from the hard one")
    tied = [lay for lay in h.layers if lay["exact_ties"] > 0.05 * lay["router_rows"]]
    if tied:
        checks.append(f"{max(lay['exact_ties'] / lay['router_rows'] for lay in tied):.0%} of the router rows give "
                      f"their top two experts exactly equal weight ({tied[0]['rule'].split('; ')[-1]}): no tempering "
                      f"path separates them, so they have no hard limit")
    paths = sorted(set(m["paths"].values()))
    out.update(path="/".join(paths), G1=m["G1"], hard_minus_shipped=m["hard_minus_shipped"],
               layers=len(m["layers"]), status="priced" if not checks else "refused",
               note="; ".join(checks + ([f"loss: {what}"] if "argmax" in what else [])
                              + ([f"layers already hard (k = 1), left as shipped: {len(m['already_hard'])}"]
                                 if m["already_hard"] else [])))
    if not math.isfinite(m["G1"]):
        out["note"] = "; ".join(x for x in (out["note"], "G1 not finite on the tiny model's tokens") if x)
    return out


def price_table_line(row: dict) -> str:
    """One markdown row of the family price table (``docs/hardening.md``)."""
    g1 = "" if not math.isfinite(row["G1"]) else f"{row['G1']:.3g}"
    hs = "" if not math.isfinite(row["hard_minus_shipped"]) else f"{row['hard_minus_shipped']:+.3g}"
    cells = [f"`{row['family']}`", row["status"], row["path"], str(row["layers"] or ""), hs, g1,
             row["rule"].replace("|", "/"), row["note"].replace("|", "/")]
    return "| " + " | ".join(cells) + " |"
