"""`softhard inspect`: the files it writes, and one clear line (exit 2) for each user error."""

import base64
import csv
import functools
import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from test_inspect_hf import _COMMON, tiny_model  # noqa: E402

from softhard.cli import app  # noqa: E402

WORDS = ["[UNK]"] + "the cat sat on a mat and dog ran far away".split()


def _save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    mixtral = root / "mixtral"
    tiny_model("mixtral", mixtral)
    _save_tokenizer(mixtral)
    bare = root / "bare"
    tiny_model("olmoe", bare)  # no tokenizer
    with torch.random.fork_rng():
        torch.manual_seed(0)
        llama = _save(transformers.LlamaForCausalLM(transformers.LlamaConfig(**_COMMON)), root / "llama")
        flex = _save(transformers.FlexOlmoForCausalLM(transformers.FlexOlmoConfig(
            **_COMMON, num_experts=4, num_experts_per_tok=2, eos_token_id=1, pad_token_id=0)), root / "flexolmo")
    (root / "empty").mkdir()
    (root / "text.txt").write_text("the cat sat on a mat and the dog ran far away " * 4, encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9 the cat".encode("latin-1"))
    (root / "unknown.txt").write_text("zebra quokka", encoding="utf-8")
    return {"root": root, "mixtral": mixtral, "bare": bare, "llama": llama, "flexolmo": flex}


def _run(*args):
    return CliRunner().invoke(app, ["inspect", *map(str, args), "--no-progress"])


def test_end_to_end_from_text(dirs, tmp_path):
    out = tmp_path / "out"
    r = _run(dirs["mixtral"], "--out", out, "--text", dirs["root"] / "text.txt", "--tokens", "30", "--seq-len", "10",
             "--taus", "0.5,1", "--tie-widths", "0.05")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert [row["module"] for row in rows] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    assert all(float(row["sens_block_tau1"]) == 0.0 and row["tokens"] == "30" for row in rows)
    assert "tie_w0.05" in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["source"] == "text" and summary["meta"]["tokens"] == 30
    near = summary["layers"][0]["nearest"][0]
    token = WORDS[near["token_id"]]
    assert near["text"].endswith(f"[[{token}]]")
    for i in (0, 1):
        assert (out / f"layer{i:02d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    png = base64.b64encode((out / "layer00.png").read_bytes()).decode()
    assert png in page and "http://" not in page and "https://" not in page and "<img" in page


def test_router_path_escape_hatch(dirs, tmp_path):
    r = _run(dirs["flexolmo"], "--out", tmp_path, "--tokens", "16", "--router-path", "model.layers.*.mlp.gate",
             "--taus", "", "--layers", "1")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "layers.csv").open()))
    assert [(row["layer"], row["layout"]) for row in rows] == [("1", "generic")] and float(rows[0]["agreement"]) == 1
    assert not (tmp_path / "layer00.png").exists() and (tmp_path / "layer01.png").exists()


def test_digits(dirs, tmp_path, monkeypatch):
    import softhard.inspect.digits as digits

    monkeypatch.setattr(digits, "train_digits_moe", functools.partial(digits.train_digits_moe, steps=3))
    r = _run("softhard:digits", "--out", tmp_path, "--tokens", "200", "--batch-size", "100", "--taus", "1",
             "--layers", "0")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["meta"]["tokens"] == 200 and summary["meta"]["source"] == "digits"
    assert "test_accuracy" in summary["meta"]
    assert summary["layers"][0]["nearest"][0]["text"].startswith("digit ")


@pytest.mark.parametrize("case, message", [
    ("empty", "has no config.json"),
    ("llama", "has no MoE layers"),
    ("flexolmo", "Unknown MoE router layout for model class FlexOlmoForCausalLM"),
    ("tokens0", "The 'tokens' parameter of inspect must be an int in [1, inf]. Got 0."),
    ("latin1", "the tokenizer cannot encode"),
    ("unknown", "the tokenizer cannot encode"),
    ("no-tokenizer", "has no tokenizer"),
])
def test_user_errors_give_one_line(dirs, tmp_path, case, message):
    model = {"empty": dirs["root"] / "empty", "llama": dirs["llama"], "flexolmo": dirs["flexolmo"],
             "no-tokenizer": dirs["bare"]}.get(case, dirs["mixtral"])
    extra = {"tokens0": ["--tokens", "0"], "latin1": ["--text", dirs["root"] / "latin1.txt"],
             "unknown": ["--text", dirs["root"] / "unknown.txt"],
             "no-tokenizer": ["--text", dirs["root"] / "text.txt"]}.get(case, [])
    r = _run(model, "--out", tmp_path / "o", "--tokens", "8", *extra)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output
