"""Peak memory (RSS) and tokens/s of ``softhard inspect`` on a large random MoE, and the hook overhead.

    python benchmarks/inspect_large.py --dir /tmp/big-moe --out /tmp/big-moe-out [--layers 10] [--tokens 512]

1. Writes a random Mixtral-style checkpoint (bfloat16 safetensors, written shard by shard from a model built on the
   meta device, so writing it never holds more than one shard) unless ``--dir`` already holds one.
2. Runs ``softhard inspect DIR --dtype bfloat16`` in a child process under ``/usr/bin/time -v`` and reads its peak
   resident set size, the tokens inspected, the wall time of the inspection and the hook overhead (CPU time of the
   hooked against the plain forwards, whole run) from ``summary.json``.
3. ``--digits``: the same for ``softhard:digits``.

The defaults (hidden 2048, 8 experts of 5632, 10 layers: 3.0e9 parameters, 6.1 GB in bfloat16) are the largest
such model whose inspection stays under 8 GB here. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def write_checkpoint(path: Path, hidden: int, ffn: int, experts: int, layers: int, vocab: int, seed: int) -> int:
    import torch
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                                     num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                                     num_local_experts=experts, num_experts_per_tok=2, max_position_embeddings=4096,
                                     dtype="bfloat16")
    cfg.architectures = ["MixtralForCausalLM"]
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    shard, size, n, index, total = {}, 0, 0, {}, 0
    names = [k for k, _ in model.state_dict().items()]
    for name, p in model.state_dict().items():
        if p.ndim == 1:
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        else:  # routers get logits of order 1 (as trained ones); other weights the config's initializer_range
            std = p.shape[-1] ** -0.5 if name.endswith("mlp.gate.weight") else cfg.initializer_range
            t = (torch.randn(p.shape, generator=g, dtype=torch.float32) * std).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        total += t.numel()
        if size > 1 << 30 or name == names[-1]:
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(path / fname), metadata={"format": "pt"})
            index.update({k: fname for k in shard})
            shard, size, n = {}, 0, n + 1
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total * 2},
                                                                   "weight_map": index}))
    cfg.save_pretrained(path)
    return total


def run_inspect(model: str, out: Path, extra: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "softhard.cli", "inspect", model, "--out", str(out),
           "--no-progress", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"softhard inspect failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    meta = json.loads((out / "summary.json").read_text())["meta"]
    return {"command": " ".join(cmd[2:]), "peak_rss_gb": rss_kb / 2**20, "process_wall_s": wall,
            "inspect_wall_s": meta["wall_seconds"], "tokens": meta["tokens"], "batches": meta["batches"],
            "tokens_per_s": meta["tokens"] / meta["wall_seconds"], "hook_overhead": meta["hook_overhead"],
            "hook_overhead_stderr": meta["hook_overhead_stderr"], "hook_overhead_note": meta["hook_overhead_note"],
            "cpu_s_plain": meta["cpu_seconds_plain_forward"], "cpu_s_hooked": meta["cpu_seconds_hooked_forward"],
            "layers": meta["layers"], "dtype": meta.get("dtype")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--digits", action="store_true", help="also measure softhard:digits")
    args = ap.parse_args()
    res = {}
    if not (args.dir / "config.json").is_file():
        t0 = time.perf_counter()
        n = write_checkpoint(args.dir, args.hidden, args.ffn, args.experts, args.layers, args.vocab, 0)
        res["checkpoint"] = {"parameters": n, "bytes_bf16": 2 * n, "write_s": time.perf_counter() - t0}
    res["large"] = run_inspect(str(args.dir), args.out / "large",
                               ["--dtype", "bfloat16", "--tokens", str(args.tokens), "--seq-len", str(args.seq_len),
                                "--batch-size", str(args.batch_size), "--taus", "", "--no-dense", "--perturb", "fp16"])
    if args.digits:
        res["digits"] = run_inspect("softhard:digits", args.out / "digits",
                                    ["--tokens", "1797", "--batch-size", "32", "--taus", "", "--no-dense"])
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
