"""``softhard compare-routing`` (issue 21 item 1) on a sample file of each format (tests/data/router_dumps, written
by its make.py): mismatches against an independent NumPy count, near ties, the prediction's sanity, the
alignment checks and every bad input in one line."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from softhard.inspect import InspectError
from softhard.inspect.io import compare_routing, read_dump

DATA = Path(__file__).parent / "data" / "router_dumps"


def _topk_sets(logits: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-logits, axis=-1, kind="stable")[:, :k], -1)


def _hf(name):
    d = load_file(str(DATA / name))
    return [d[f"router_logits.{i}"].astype(np.float64) for i in range(2)]


def test_transformers_fp32_against_bf16(tmp_path):
    rows, meta, paths = compare_routing(DATA / "hf_fp32.safetensors", DATA / "hf_bf16.safetensors", tmp_path / "o",
                                        top_k=2)
    a, b = _hf("hf_fp32.safetensors"), _hf("hf_bf16.safetensors")
    for r, la, lb in zip(rows, a, b):
        mism = (_topk_sets(la, 2) != _topk_sets(lb, 2)).any(-1)
        assert r["tokens"] == 64 and r["mismatch"] == pytest.approx(mism.mean())
        # a selection made from the dumped scores can only change at a token whose margin is within the noise
        if mism.any():
            assert r["near_tie_share"] == 1.0 and r["genuine"] == 0.0
        assert 0 <= r["predicted_mismatch"] <= 1
    assert {p.name for p in paths} >= {"compare_routing.csv", "compare_routing.png", "report.html"}
    assert rows[0]["grid"] == "bf16"  # the bf16 side's scores lie on the bfloat16 grid, and it is used
    assert meta["format_a"] == meta["format_b"] == "transformers-logits"


def test_megatron_trace_against_sglang_ids():
    """Megatron's trace (bf16 logits sidecar) against SGLang's expert ids of the fp32 run: the mismatch is that of
    the two selections; margins come from the trace's logits, the noise needs --score-noise."""
    a = read_dump(DATA / "megatron")
    assert a.format == "megatron-trace" and a.layers == [0, 1] and a.scores[0].shape == (64, 4)
    b = read_dump(DATA / "sglang.jsonl")
    assert b.format == "expert-ids" and b.scores[0] is None and b.token_ids.shape == (64,)
    rows, meta, _ = compare_routing(DATA / "megatron", DATA / "sglang.jsonl")
    want = [(np.sort(a.selected[i], -1) != b.selected[i]).any(-1).mean() for i in range(2)]
    assert [r["mismatch"] for r in rows] == pytest.approx(want)
    assert np.isnan(rows[0]["predicted_mismatch"]) and any("--score-noise" in n for n in meta["notes"])
    rows, _, _ = compare_routing(DATA / "megatron", DATA / "vllm.npy", score_noise=0.01)
    assert [r["mismatch"] for r in rows] == pytest.approx(want) and np.isfinite(rows[0]["predicted_mismatch"])
    # the ids of SGLang's base64 payload are those of the .npy
    np.testing.assert_array_equal(np.sort(np.load(DATA / "vllm.npy")[:, 1], -1), b.selected[1])


def test_a_run_against_itself_has_no_mismatch():
    rows, _, _ = compare_routing(DATA / "hf_fp32.safetensors", DATA / "hf_fp32.safetensors", top_k=2)
    assert all(r["mismatch"] == 0 and r["predicted_mismatch"] == 0 for r in rows)


def test_bad_input_in_one_line(tmp_path):
    with pytest.raises(InspectError, match="probabilities, not logits.*--probabilities"):
        compare_routing(DATA / "hf_probs.safetensors", DATA / "hf_fp32.safetensors", top_k=2)
    with pytest.raises(InspectError, match="give the experts per token"):
        compare_routing(DATA / "hf_fp32.safetensors", DATA / "hf_bf16.safetensors")
    # a different token stream: the same logits with one token id changed
    d = load_file(str(DATA / "hf_fp32.safetensors"))
    d["input_ids"] = d["input_ids"].copy()
    d["input_ids"][1, 3] += 1
    from safetensors.numpy import save_file

    save_file(d, str(tmp_path / "other.safetensors"))
    with pytest.raises(InspectError, match="different token streams: .* differ at token 19"):
        compare_routing(DATA / "hf_fp32.safetensors", tmp_path / "other.safetensors", top_k=2)
    save_file({"router_logits.0": d["router_logits.0"]}, str(tmp_path / "one.safetensors"))
    with pytest.raises(InspectError, match="different layer counts"):
        compare_routing(DATA / "hf_fp32.safetensors", tmp_path / "one.safetensors", top_k=2)
    bad = tmp_path / "trace.jsonl"
    (tmp_path / "logits_rank0.bin").write_bytes((DATA / "megatron" / "logits_rank0.bin").read_bytes())
    bad.write_text((DATA / "megatron" / "router_trace_rank0.jsonl").read_text().splitlines()[0] + "\n"
                   + json.dumps({"step": 0, "loss": 1.0}) + "\n")
    with pytest.raises(InspectError, match="line 2 is not a router trace record"):
        read_dump(bad)
    with pytest.raises(InspectError, match="unknown dump format"):
        read_dump(DATA / "make.py")
    short = tmp_path / "short.npy"
    np.save(short, np.load(DATA / "vllm.npy")[:10])
    with pytest.raises(InspectError, match="different token streams: layer 0 has 64 tokens"):
        compare_routing(DATA / "megatron", short)


def test_cli_compare_routing(tmp_path):
    from typer.testing import CliRunner

    from softhard.cli import app

    res = CliRunner().invoke(app, ["compare-routing", str(DATA / "hf_fp32.safetensors"),
                                   str(DATA / "hf_bf16.safetensors"), "--out", str(tmp_path / "o"), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "layer 0: 64 tokens, mismatch" in res.output
    head = (tmp_path / "o" / "compare_routing.csv").read_text().splitlines()[0].split(",")
    assert head[:10] == ["layer", "tokens", "mismatch", "mismatch_stderr", "near_tie_share", "near_tie_share_stderr",
                         "genuine", "genuine_stderr", "predicted_mismatch", "predicted_mismatch_stderr"]
    res = CliRunner().invoke(app, ["compare-routing", str(DATA / "hf_probs.safetensors"),
                                   str(DATA / "hf_fp32.safetensors"), "--out", str(tmp_path / "p"), "--top-k", "2"])
    assert res.exit_code == 2 and "probabilities" in res.output and len(res.output.strip().splitlines()) == 1


def test_sglang_payload_is_base64_int32():
    line = json.loads((DATA / "sglang.jsonl").read_text().splitlines()[0])
    ids = np.frombuffer(base64.b64decode(line["meta_info"]["routed_experts"]), dtype=np.int32)
    assert ids.size == 16 * 2 * 2 and set(np.unique(ids)) <= {0, 1, 2, 3}
