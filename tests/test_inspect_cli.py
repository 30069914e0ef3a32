"""`softhard inspect`: the files it writes, the inputs it reads, and one clear line (exit 2) for each user error."""

import base64
import csv
import functools
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from softhard.cli import app  # noqa: E402
from softhard.inspect.families import tiny_config  # noqa: E402
from test_inspect_hf import _COMMON, tiny_model  # noqa: E402


WORDS = ["[UNK]"] + "the cat sat on a mat and dog ran far away".split()
LINE = "the cat sat on a mat and the dog ran far away"


def _save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


class _Boom:  # a pickle that would leave a marker file if anything unpickled it
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.simplefilter("ignore")
    root = tmp_path_factory.mktemp("cli")
    mixtral = root / "mixtral"
    tiny_model("mixtral", mixtral)
    _save_tokenizer(mixtral)
    bare = root / "bare"
    tiny_model("olmoe", bare)  # no tokenizer
    with torch.random.fork_rng():
        torch.manual_seed(0)
        llama = root / "llama"
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**_COMMON)).save_pretrained(llama)
    config_only = root / "config-only"
    tiny_config("mixtral").save_pretrained(config_only)
    multimodal = root / "multimodal"  # Llama 4: the vocabulary and the routers live in the language model
    tiny_config("llama4").save_pretrained(multimodal)
    native = root / "native-automap"
    cfg = json.loads((config_only / "config.json").read_text())
    native.mkdir()
    (native / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "x.Model"}}))
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "no_such_moe", "auto_map": {
        "AutoConfig": "configuration_x.XConfig"}}))
    broken = root / "broken-forward"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({**cfg, "num_experts_per_tok": 9}))  # more than 8 experts
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(cfg))
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(root / "unpickled-marker")))
    (root / "empty").mkdir()
    (root / "text.txt").write_text((LINE + " ") * 4, encoding="utf-8")
    (root / "texts.jsonl").write_text("\n".join(json.dumps({"text": LINE}) for _ in range(4)), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [LINE] * 4}), root / "texts.parquet")
    (root / "latin1.txt").write_bytes("caf\xe9 the cat".encode("latin-1"))
    (root / "unknown.txt").write_text("zebra quokka", encoding="utf-8")
    return {"root": root, "mixtral": mixtral, "bare": bare, "llama": llama, "config-only": config_only,
            "multimodal": multimodal, "native": native, "foreign": foreign, "broken": broken, "pickled": pickled}


def _run(*args):
    return CliRunner().invoke(app, ["inspect", *map(str, args), "--no-progress"])


def test_end_to_end_from_text(dirs, tmp_path):
    out = tmp_path / "out"
    r = _run(dirs["mixtral"], "--out", out, "--text", dirs["root"] / "text.txt", "--tokens", "30", "--seq-len", "10",
             "--taus", "0.5,1", "--tie-widths", "0.05", "--save-tokens")
    assert r.exit_code == 0, r.output
    assert "hook overhead run too short to measure" in r.output  # 3 batches of a tiny model: said, not guessed
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert [row["module"] for row in rows] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    assert all(float(row["sens_block_tau1"]) == 0.0 and row["tokens"] == "30" for row in rows)
    assert rows[0]["rule"] == "top-2 of softmax(a); weights softmax(a)[S] normalised" and "tie_w0.05" in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["source"] == "text" and summary["meta"]["tokens"] == 30
    assert summary["meta"]["hook_overhead"] is None and "too short" in summary["meta"]["hook_overhead_note"]
    near = summary["layers"][0]["nearest"][0]
    assert near["text"].endswith(f"[[{WORDS[near['token_id']]}]]")
    tokens = np.load(out / "tokens.npz")
    assert tokens["layer00_margin"].shape == (30,) and tokens["layer00_selected"].shape == (30, 2)
    np.testing.assert_allclose(np.sort(tokens["layer00_margin"])[0], near["margin"])
    for i in (0, 1):
        assert (out / f"layer{i:02d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    png = base64.b64encode((out / "layer00.png").read_bytes()).decode()
    assert png in page and "http://" not in page and "https://" not in page
    for section in ("What is measured", "Routing rule of each layer", "Flip rates", "Hook overhead", " ± "):
        assert section in page


@pytest.mark.parametrize("source", ["texts.jsonl", "texts.parquet", "dataset"])
def test_text_sources(dirs, tmp_path, source):
    path = dirs["root"] / source
    if source == "dataset":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_dict({"text": [LINE] * 4}).save_to_disk(str(path))
    r = _run(dirs["mixtral"], "--out", tmp_path, "--text", path, "--tokens", "25", "--taus", "", "--seq-len", "5")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["tokens"] == 25


def test_config_only_and_multimodal_directories(dirs, tmp_path):
    r = _run(dirs["config-only"], "--out", tmp_path / "a", "--tokens", "32", "--taus", "1")
    assert r.exit_code == 0, r.output
    assert "note: no weights in" in r.output and "random weights from --seed 0" in r.output
    r = _run(dirs["multimodal"], "--out", tmp_path / "b", "--tokens", "32", "--taus", "")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "b" / "layers.csv").open()))
    assert len(rows) == 2 and all("language_model" in row["module"] and float(row["agreement"]) == 1 for row in rows)


def test_native_model_type_with_auto_map_loads_the_native_class(dirs, tmp_path):
    r = _run(dirs["native"], "--out", tmp_path, "--tokens", "16", "--taus", "")
    assert r.exit_code == 0, r.output
    assert "names custom code (auto_map), but model_type 'mixtral' is native" in r.output


def test_dtype_and_compare(dirs, tmp_path):
    r = _run(dirs["mixtral"], dirs["multimodal"], "--out", tmp_path, "--tokens", "32", "--taus", "")
    assert r.exit_code == 2 and "do not have the same MoE layers" in r.output, r.output
    r = _run(dirs["mixtral"], dirs["config-only"], "--out", tmp_path / "cmp", "--tokens", "32", "--taus", "",
             "--dtype", "bfloat16")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert [(row["layer"], row["checkpoint"]) for row in rows] == [
        ("0", "mixtral"), ("0", "config-only"), ("1", "mixtral"), ("1", "config-only")]
    assert float(rows[0]["delta_density0"]) == 0.0
    meta = json.loads((tmp_path / "cmp" / "mixtral" / "summary.json").read_text())["meta"]
    assert meta["dtype"] == "bfloat16"
    assert all(float(r["agreement"]) == 1.0 for r in rows)
    assert (tmp_path / "cmp" / "compare.png").is_file() and "Checkpoints side by side" in (
        tmp_path / "cmp" / "report.html").read_text()


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


def test_digits_priced(tmp_path, monkeypatch):
    """--max-tie-tokens reaches the hardening, --topk writes topk.csv; a bad --harden-path is one line."""
    import softhard.inspect.digits as digits

    monkeypatch.setattr(digits, "train_digits_moe", functools.partial(digits.train_digits_moe, steps=40))
    r = _run("softhard:digits", "--out", tmp_path, "--tokens", "600", "--batch-size", "300", "--taus", "",
             "--no-dense", "--no-overhead", "--perturb", "none", "--seed", "1", "--harden", "--harden-taus", "1,0.1",
             "--max-tie-tokens", "40", "--topk", "--topk-tokens", "100")
    assert r.exit_code == 0, r.output
    assert "hardening: " in r.output and "topk: " in r.output
    hard = json.loads((tmp_path / "hardening.json").read_text())["meta"]
    assert hard["max_tie_tokens"] == 40 and hard["seed"] == 1
    lays = json.loads((tmp_path / "hardening_layers.json").read_text())["rows"]
    assert all(lay["contrasted_near"] <= 40 + 5 * 40 ** 0.5 for lay in lays)
    rows = list(csv.DictReader((tmp_path / "topk.csv").open()))
    assert [(r["layer"], r["k"], r["k_cut"]) for r in rows] == [("0", "2", "1"), ("1", "2", "1")]
    r = _run("softhard:digits", "--out", tmp_path / "bad", "--harden", "--harden-path", "hard")
    assert r.exit_code == 2 and "'harden_path' parameter of inspect must be one of" in r.output
    assert "Traceback" not in r.output


def test_a_pickle_is_refused_without_being_read(dirs, tmp_path):
    r = _run(dirs["pickled"], "--out", tmp_path, "--tokens", "8")
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert "pytorch_model.bin is a pickle checkpoint" in errors[0] and "safetensors" in errors[0]
    assert not (dirs["root"] / "unpickled-marker").exists() and "Traceback" not in r.output


def test_debug_shows_the_traceback(dirs, tmp_path):
    r = CliRunner().invoke(app, ["inspect", str(dirs["broken"]), "--out", str(tmp_path), "--tokens", "8",
                                 "--no-progress", "--debug"])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)  # InspectError, raised with its cause


@pytest.mark.parametrize("case, message", [
    ("empty", "has no config.json"),
    ("llama", "has no MoE layers"),
    ("foreign", "is not part of transformers"),
    ("broken", "the model's forward pass failed: RuntimeError"),
    ("tokens0", "The 'tokens' parameter of inspect must be an int in [1, inf]. Got 0."),
    ("dtype", "The 'dtype' parameter of inspect must be one of"),
    ("latin1", "the tokenizer cannot encode"),
    ("unknown", "the tokenizer cannot encode"),
    ("no-tokenizer", "has no tokenizer"),
])
def test_user_errors_give_one_line(dirs, tmp_path, case, message):
    model = {"empty": dirs["root"] / "empty", "llama": dirs["llama"], "foreign": dirs["foreign"],
             "broken": dirs["broken"], "no-tokenizer": dirs["bare"]}.get(case, dirs["mixtral"])
    extra = {"tokens0": ["--tokens", "0"], "latin1": ["--text", dirs["root"] / "latin1.txt"],
             "dtype": ["--dtype", "float8"], "unknown": ["--text", dirs["root"] / "unknown.txt"],
             "no-tokenizer": ["--text", dirs["root"] / "text.txt"]}.get(case, [])
    r = _run(model, "--out", tmp_path / "o", "--tokens", "8", *extra)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output


def test_layers_of_the_builtin_models_are_checked_before_training(tmp_path, monkeypatch):
    """`--layers 9` on softhard:digits (2 MoE layers) is refused before the model is trained, and the output
    directory it would have created is not left behind."""
    import softhard.inspect.digits as digits

    monkeypatch.setattr(digits, "train_digits_moe", lambda *a, **k: pytest.fail("trained before checking --layers"))
    out = tmp_path / "new"
    r = CliRunner().invoke(app, ["inspect", "softhard:digits", "--layers", "9", "--out", str(out)])
    assert r.exit_code == 2 and "must be MoE layer indices in [0, 1]. Got [9]" in r.output
    assert not out.exists()


def _never_load(monkeypatch):
    """Make reading any weights fail the test: options about the model's structure must be refused first."""
    monkeypatch.setattr(transformers.MixtralForCausalLM, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("weights loaded before checking the options")))


@pytest.mark.parametrize("extra, message", [
    (["--layers", "7"], "The 'layers' parameter of inspect must be MoE layer indices in [0, 1]. Got [7]."),
    (["--router-path", "no.such.*"], "The 'router_path' parameter of inspect must be a pattern matching module names"),
    (["--top-k", "9", "--router-path", "model.layers.*.mlp.gate"],
     "The 'top_k' parameter of inspect must be an int in [1, 7] (the router model.layers.0.mlp.gate has K = 8"),
    (["--text", "{root}/none.txt"], "--text {root}/none.txt: no such file or directory"),
])
def test_structure_options_are_checked_before_the_weights_load(dirs, tmp_path, monkeypatch, extra, message):
    """Issue 23: --layers, --router-path, --top-k and --text are refused from the config (the model built on the
    meta device) before any weight is read, in one line, with nothing left behind."""
    _never_load(monkeypatch)
    root = dirs["root"]
    r = _run(dirs["mixtral"], "--out", tmp_path / "o", "--tokens", "8", *[e.format(root=root) for e in extra])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and message.format(root=root) in r.stderr, r.output
    assert not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_the_config_are_one_line(dirs, tmp_path):
    """Issue 23: transformers' load report (20 lines with ANSI codes) is not shown; one line names a tensor."""
    import shutil

    bad = tmp_path / "mismatch"
    shutil.copytree(dirs["mixtral"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 2 * cfg["hidden_size"]}))
    r = _run(bad, "--out", tmp_path / "o", "--tokens", "8")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "its weights do not fit its config.json" in r.stderr and "checkpoint (" in r.stderr
    assert "\x1b[" not in r.output and "LOAD REPORT" not in r.output and not (tmp_path / "o").exists()


def test_a_full_disk_leaves_nothing_behind(dirs, tmp_path, monkeypatch):
    """Issue 23: every write fails with ENOSPC (the disk is full): one line, exit 2, no half-written output."""
    import errno
    import os as os_module

    from softhard.results import io as results_io

    real = os_module.fdopen

    def full(fd, *a, **k):
        os_module.close(fd)
        raise OSError(errno.ENOSPC, os_module.strerror(errno.ENOSPC))

    monkeypatch.setattr(results_io.os, "fdopen", full)
    r = _run(dirs["mixtral"], "--out", tmp_path / "o", "--tokens", "8", "--taus", "")
    monkeypatch.setattr(results_io.os, "fdopen", real)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "No space left on device" in r.stderr, r.output
    assert not (tmp_path / "o").exists()
