"""``softhard:tiny-lm``: the corpus and byte tokenizer, seeded training, the cache, and the CLI on it."""

import dataclasses
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from softhard.cli import app  # noqa: E402
from softhard.inspect import load_model  # noqa: E402
from softhard.inspect import tinylm  # noqa: E402
from softhard.inspect.zoo import corpus  # noqa: E402
from softhard.inspect.tinylm import SMALL, corpus_fingerprint, stdlib_corpus, tiny_lm, train_tiny_lm  # noqa: E402

QUICK = dataclasses.replace(SMALL, steps=12, heldout_bytes=2048)  # seconds: for determinism and the cache


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = tinylm.byte_tokenizer()
    text = "déjà vu:\n\tdef f(x): return x ∑ 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert len(set(corpus.byte_chars().values())) == 256


def test_corpus_is_fixed_and_split():
    train, held = stdlib_corpus()
    assert len(train) > 10 * len(held) > 100_000  # every 10th file held out
    assert "Return" in train and train[:200] not in held
    assert corpus_fingerprint() == corpus_fingerprint() and len(corpus_fingerprint()) == 16


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_is_seeded_and_the_cache_round_trips(tmp_path, monkeypatch):
    lm = tiny_lm(QUICK, cache_dir=tmp_path)  # trains, saves (safetensors + config + tokenizer), reloads
    assert lm.path.parent == tmp_path and lm.path.name == f"tiny-lm-{QUICK.key(corpus_fingerprint())}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "heldout.txt", "training.json"} <= {
        p.name for p in lm.path.iterdir()}
    fresh, info = train_tiny_lm(QUICK)  # the same seed again, in memory
    ids = tinylm.heldout_ids(lm, 256).reshape(4, 64)
    assert torch.equal(_logits(fresh, ids), _logits(lm.model, ids))  # deterministic, and saved bit for bit
    assert info["heldout_loss"] == lm.info["heldout_loss"]
    other, _ = train_tiny_lm(dataclasses.replace(QUICK, seed=1))
    assert not torch.equal(_logits(other, ids), _logits(fresh, ids))

    monkeypatch.setattr(tinylm, "train_tiny_lm", lambda *a, **k: pytest.fail("the cached model was retrained"))
    again = tiny_lm(QUICK, cache_dir=tmp_path)
    assert torch.equal(_logits(again.model, ids), _logits(lm.model, ids))
    model, tok = load_model(lm.path)  # a normal Hugging Face model directory, tokenizer included
    assert torch.equal(_logits(model, ids), _logits(lm.model, ids))
    assert tok("def", add_special_tokens=False)["input_ids"] == list(b"def")


def test_cache_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        tiny_lm(QUICK, cache_dir=blocker / "cache")


def test_small_model_learned_more_than_byte_statistics(tiny_lm_small):
    info = tiny_lm_small.info
    # held-out next-byte loss (nats) against add-one smoothed unigram and bigram byte models of the training text
    assert info["heldout_loss"] + 5 * info["heldout_loss_stderr"] < info["bigram_loss"] < info["unigram_loss"]
    assert info["heldout_perplexity"] == pytest.approx(math.exp(info["heldout_loss"]))
    assert info["loss_curve"][-1][1] < info["loss_curve"][0][1] - 1.0


def test_cli_on_tiny_lm_with_hardening(tiny_lm_small, tmp_path, monkeypatch):
    monkeypatch.setattr(tinylm, "DEFAULT", SMALL)
    monkeypatch.setenv("SOFTHARD_CACHE", str(tiny_lm_small.path.parent))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["inspect", "softhard:tiny-lm", "--out", str(out), "--tokens", "1024", "--taus", "1",
                                 "--harden", "--harden-taus", "1,0.1,0.01", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "hardening: " in r.output
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert meta["source"] == "heldout" and meta["tokens"] == 1024 and meta["model"] == "softhard:tiny-lm"
    assert meta["cache"] == str(tiny_lm_small.path) and meta["heldout_loss"] == tiny_lm_small.info["heldout_loss"]
    text = json.loads((out / "summary.json").read_text())["layers"][0]["nearest"][0]["text"]
    assert "[[" in text  # the byte tokenizer describes tokens in context
    rows = json.loads((out / "hardening.json").read_text())["rows"]
    assert [row["tau"] for row in rows] == [1.0, 0.1, 0.01] and rows[0]["change_vs_shipped"] == 0.0
    page = (out / "report.html").read_text()
    assert "Hardening: the model's loss as routing is made harder" in page and "hardening curve" in page
    assert (out / "hardening.png").stat().st_size > 1000

    r = CliRunner().invoke(app, ["inspect", "softhard:tiny-lm", "--out", str(out), "--tokens", "256", "--taus", "1",
                                 "--harden-taus", "2", "--harden", "--no-progress"])
    assert r.exit_code == 2 and "'harden_taus' parameter of inspect must be temperatures in (0, 1]" in r.output
    assert "Traceback" not in r.output
