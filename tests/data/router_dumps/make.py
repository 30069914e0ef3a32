"""Writes the sample router dumps of tests/test_compare_routing.py (run from the repository root:
``python tests/data/router_dumps/make.py``). Each file is small and in its tool's real format:

- ``hf_fp32.safetensors`` / ``hf_bf16.safetensors``: the ``router_logits`` a tiny random transformers Mixtral
  returns with ``output_router_logits=True`` (float32, and the same model in bfloat16), saved with safetensors as
  ``router_logits.{i}`` plus ``input_ids``;
- ``hf_probs.safetensors``: softmax of those logits under the same name (what several families return);
- ``megatron/router_trace_rank0.jsonl`` + ``megatron/logits_rank0.bin``: Megatron-Core's router trace records
  (``step, stage, block, layer, rank, num_tokens, topk, top_indices`` and the logits sidecar fields
  ``logit_offset, logit_bytes, logit_shape``; bfloat16 logits), one record per (step, layer), of the bf16 run;
- ``sglang.jsonl``: SGLang-style responses, ``meta_info.routed_experts`` = base64 of int32 ids ordered (token,
  layer, slot), with ``output_ids``, ``num_layers`` and ``topk`` fields, of the fp32 run;
- ``vllm.npy``: the routed expert ids ``(tokens, layers, k)`` of the fp32 run.
"""

import base64
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

HERE = Path(__file__).parent


def main():
    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out32 = model(input_ids=ids, output_router_logits=True)
        out16 = model.to(torch.bfloat16)(input_ids=ids, output_router_logits=True)
    r32 = [t.float().contiguous() for t in out32.router_logits]
    r16 = [t.contiguous() for t in out16.router_logits]
    save_file({**{f"router_logits.{i}": t for i, t in enumerate(r32)}, "input_ids": ids}, HERE / "hf_fp32.safetensors")
    save_file({**{f"router_logits.{i}": t.float() for i, t in enumerate(r16)}, "input_ids": ids},
              HERE / "hf_bf16.safetensors")
    save_file({**{f"router_logits.{i}": torch.softmax(t, -1) for i, t in enumerate(r32)}, "input_ids": ids},
              HERE / "hf_probs.safetensors")
    meg = HERE / "megatron"
    meg.mkdir(exist_ok=True)
    offset, lines, blob = 0, [], b""
    for step in range(2):  # two steps of two sequences each
        rows = slice(step * 32, step * 32 + 32)
        for layer, t in enumerate(r16):
            lg = t[rows].to(torch.bfloat16).contiguous()
            top = torch.topk(lg.float(), 2, -1).indices
            raw = lg.view(torch.int16).numpy().tobytes()
            lines.append(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer,
                                     "rank": 0, "num_tokens": 32, "topk": 2, "top_indices": top.tolist(),
                                     "logit_offset": offset, "logit_bytes": len(raw),
                                     "logit_shape": list(lg.shape)}))
            blob += raw
            offset += len(raw)
    (meg / "router_trace_rank0.jsonl").write_text("\n".join(lines) + "\n")
    (meg / "logits_rank0.bin").write_bytes(blob)
    sel = np.stack([torch.topk(t, 2, -1).indices.numpy() for t in r32], axis=1).astype(np.int32)  # (N, L, k)
    np.save(HERE / "vllm.npy", sel)
    with (HERE / "sglang.jsonl").open("w") as fh:
        for b in range(4):
            part = sel[b * 16:(b + 1) * 16]
            fh.write(json.dumps({"output_ids": ids[b].tolist(), "num_layers": 2, "topk": 2,
                                 "meta_info": {"routed_experts": base64.b64encode(part.tobytes()).decode()}}) + "\n")


if __name__ == "__main__":
    main()
