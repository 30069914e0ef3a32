"""RoutingCallback in transformers' Trainer, the scalar writers, and the per-layer metrics they carry."""

import math
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from softhard import RoutingCallback  # noqa: E402
from softhard.inspect import RoutingRule  # noqa: E402
from softhard.inspect.io import MissingExtra, ScalarLog, WandbWriter, load_summary, moe_tag, tensorboard_writer  # noqa
from softhard.inspect.monitor import log_layers  # noqa: E402
from softhard.inspect.price.flips import predicted_flip_rate  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_transformers")

STEPS, EVERY, LAYERS, EXPERTS, TOP_K = 20, 5, 2, 4, 2
SEQ, BATCH, ACCUM = 16, 2, 2


def tiny_mixtral(seed=0):
    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return transformers.MixtralForCausalLM(cfg)


def token_rows(n, seed):
    ids = torch.randint(0, 64, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": r, "labels": r} for r in ids]


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of an offline W&B run, read from its ``run-*.wandb`` file: a 7-byte header, then
    records in 32 KiB blocks, each chunk with a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle,
    4 last) — the LevelDB log layout W&B uses — holding ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({it.key or "/".join(it.nested_key): float(it.value_json) for it in rec.history.item})
    return rows


def reference(calls: list[tuple]) -> dict:
    """The monitor's metrics of one layer and step, in plain NumPy from the router calls of the step (logits,
    router input, router weight); the bf16 flip prediction is i20-flips' ``predicted_flip_rate`` per call (its
    formula is tested in tests/test_flips.py), pooled over the calls here by token counts."""
    a = np.concatenate([c[0] for c in calls]).astype(np.float64)  # (N, K)
    s = -np.sort(-a, axis=1)
    m = s[:, TOP_K - 1] - s[:, TOP_K]  # top-2 margin a_(2) - a_(3)
    top = np.argsort(-a, axis=1, kind="stable")[:, :TOP_K]
    share = np.bincount(top.ravel(), minlength=EXPERTS) / top.size
    rule = RoutingRule(num_experts=EXPERTS, k=TOP_K, scores="softmax")
    per_call = [predicted_flip_rate(torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(lg), rule=rule)
                for lg, h, w in calls]
    out = {"tokens": len(a), "load_imbalance": EXPERTS * share.max(), "load_min": EXPERTS * share.min(),
           "load_entropy": -(share * np.log(share)).sum() / math.log(EXPERTS),
           "pred_flip_rate_bf16": sum(e.n * e.value for e in per_call) / len(a)}
    for w in (0.01, 0.1, 1.0):
        out[f"boundary_mass_w{w:g}"] = np.mean(m <= w)
    for q, name in ((0.01, "p1"), (0.1, "p10"), (0.5, "p50")):
        out[f"margin_{name}"] = np.quantile(m, q)
    for j in range(EXPERTS):
        out[f"expert{j}_load"] = EXPERTS * share[j]
    return out


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    """20 optimizer steps of a tiny Mixtral (2 micro-batches each, an evaluation every 5 steps) with
    report_to = tensorboard + wandb (offline) and the callback's default writers, while a test hook keeps every
    router call's logits with the step it belongs to."""
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("trainer")
    mp = pytest.MonkeyPatch()
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true", "WANDB_PROJECT": "t",
                 "WANDB_DISABLE_GIT": "true"}.items():
        mp.setenv(k, v)
    mp.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model = tiny_mixtral()
    phase = {"step": None}  # the global step the current forward belongs to; None outside training steps
    captured = {}

    class Phase(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            phase["step"] = state.global_step + 1

        def on_step_end(self, args, state, control, **kw):
            phase["step"] = None

    def keep(i):
        def hook(module, args, out):
            captured.setdefault((phase["step"], i), []).append(
                (out[0].detach().numpy().copy(), args[0].detach().reshape(-1, 32).numpy().copy(),
                 module.weight.detach().numpy().copy()))
        return hook

    handles = [layer.mlp.gate.register_forward_hook(keep(i)) for i, layer in enumerate(model.model.layers)]
    cb = RoutingCallback(every=EVERY, csv=root / "routing.csv")
    args = transformers.TrainingArguments(
        str(root / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
        per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=EVERY, learning_rate=1e-2,
        report_to=["tensorboard", "wandb"], use_cpu=True, save_strategy="no", logging_steps=EVERY,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(64, 1),
                                   eval_dataset=token_rows(4, 2), callbacks=[cb, Phase()])
    try:
        trainer.train()
        run_dir = Path(wandb.run.dir).parent
        wandb.finish()
    finally:
        for h in handles:
            h.remove()
        mp.undo()
    return types.SimpleNamespace(root=root, cb=cb, captured=captured, run_dir=run_dir)


def test_trainer_scalars_read_back_from_tensorboard_and_wandb(trainer_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = trainer_run
    recorded = list(range(EVERY, STEPS + 1, EVERY))
    assert sorted({row["step"] for row in r.cb.monitor.rows}) == recorded
    # evaluation forwards ran (step None) and were left out
    assert any(step is None for step, _ in r.captured)
    ea = EventAccumulator(str(r.root / "out" / "runs" / "softhard-routing"), size_guidance={"scalars": 0})
    ea.Reload()
    tb = {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}
    wb = {}
    for row in wandb_history(r.run_dir):
        if any(k.startswith("moe/") for k in row):
            step = int(row["train/global_step"])
            for k, v in row.items():
                wb.setdefault(k, {})[step] = v
    expected_tags, flips = set(), []
    for step in recorded:
        for i in range(LAYERS):
            ref = reference(r.captured[(step, i)])
            assert ref["tokens"] == BATCH * ACCUM * SEQ  # both micro-batches of the step
            assert 0 < ref["boundary_mass_w0.1"] < 1  # values a mistake would change
            flips.append(ref["pred_flip_rate_bf16"])
            for metric, want in ref.items():
                if metric == "tokens":
                    continue
                tag = f"moe/{metric}_layer_{i}"
                expected_tags.add(tag)
                assert tb[tag][step] == pytest.approx(want, rel=1e-6, abs=1e-12), tag  # float32 event files
                assert wb[tag][step] == pytest.approx(want, rel=1e-12, abs=1e-15), tag  # W&B keeps float64
    assert max(flips) > 1e-6
    assert set(tb) == expected_tags and {k for k in wb if k.startswith("moe/")} == expected_tags
    rows = r.cb.monitor.rows
    assert all(row["tokens"] == BATCH * ACCUM * SEQ and row["log_layer"] == row["layer"] for row in rows)
    assert (r.root / "routing.csv").read_text().count("\n") == len(rows) + 1 == len(recorded) * LAYERS + 1
    # the standard errors (CSV only) are those of the step's tokens
    ref = np.concatenate([c[0] for c in r.captured[(EVERY, 0)]]).astype(np.float64)
    s = -np.sort(-ref, axis=1)
    inside = (s[:, 1] - s[:, 2] <= 0.1).astype(float)
    assert rows[0]["boundary_mass_w0.1_stderr"] == pytest.approx(inside.std(ddof=1) / math.sqrt(len(inside)),
                                                                 rel=1e-12)
    assert 0 < r.cb.overhead < 1


def test_callback_with_its_own_writer_and_capped_expert_keys(tmp_path):
    log = ScalarLog()
    cb = RoutingCallback([log], every=3, max_expert_keys=EXPERTS - 1, quantiles=(0.5,), widths=(0.1,))
    args = transformers.TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=BATCH,
                                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                                          dataloader_num_workers=0)
    transformers.Trainer(model=tiny_mixtral(), args=args, train_dataset=token_rows(12, 3), callbacks=[cb]).train()
    metrics = ["boundary_mass_w0.1", "margin_p50", "pred_flip_rate_bf16", "load_imbalance", "load_min",
               "load_entropy"]  # 4 experts > 3: no expert{j}_load
    assert set(log.scalars) == {moe_tag(m, i) for m in metrics for i in range(LAYERS)}
    assert all([s for s, _ in v] == [3, 6] for v in log.scalars.values())
    assert not any(p.name == "runs" for p in tmp_path.iterdir())  # no TensorBoard directory was made


def test_bad_input_names_the_parameter(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="'writers' parameter of RoutingCallback"):
        RoutingCallback([object()])
    with pytest.raises(ValueError, match="'writers' parameter of RoutingCallback.*'tensorbord'"):
        RoutingCallback("tensorbord")
    with pytest.raises(ValueError, match="'every' parameter of RoutingCallback"):
        RoutingCallback(every=0)
    cb = RoutingCallback()  # no writers, no csv and nothing in report_to: refused when training starts
    state = types.SimpleNamespace(is_world_process_zero=True)
    with pytest.raises(ValueError, match="'writers' parameter of RoutingCallback.*nothing to write to"):
        cb.on_train_begin(types.SimpleNamespace(report_to=[], output_dir=str(tmp_path)), state, None,
                          model=tiny_mixtral())
    with pytest.raises(ValueError, match="'widths' parameter of RoutingMonitor"):
        RoutingCallback([ScalarLog()], widths=(0.1, 0.1000000001)).on_train_begin(
            types.SimpleNamespace(report_to=[]), state, None, model=tiny_mixtral())
    # the optional packages: a clear error naming the extra
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtra, match=r"'wandb' package.*softhard\[monitor\]"):
        WandbWriter()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingExtra, match=r"'tensorboard' package.*softhard\[monitor\]"):
        tensorboard_writer(tmp_path)


def test_wandb_writer_needs_a_run(monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "run", None)
    with pytest.raises(ValueError, match="'run' parameter of WandbWriter.*wandb.init"):
        WandbWriter()


def test_wandb_writer_logs_one_row_per_step():
    logged, defined = [], []
    run = types.SimpleNamespace(log=logged.append, define_metric=lambda *a, **k: defined.append((a, k)))
    w = WandbWriter(run)
    w.add_scalar("moe/a_layer_0", 1.0, 5)
    w.add_scalar("moe/b_layer_0", 2, 5)
    w.add_scalar("moe/a_layer_0", 3.0, 10)
    w.close()
    assert logged == [{"moe/a_layer_0": 1.0, "moe/b_layer_0": 2.0, "train/global_step": 5},
                      {"moe/a_layer_0": 3.0, "train/global_step": 10}]
    assert (("moe/*",), {"step_metric": "train/global_step"}) in defined


def test_load_summary_by_hand():
    got = load_summary([6, 2, 0, 0], max_expert_keys=4)  # shares 3/4, 1/4, 0, 0 of 4 experts
    assert got["load_imbalance"] == 3.0 and got["load_min"] == 0.0
    assert got["load_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4))
    assert [got[f"expert{j}_load"] for j in range(4)] == [3.0, 1.0, 0.0, 0.0]
    assert "expert0_load" not in load_summary([6, 2, 0, 0], max_expert_keys=3)
    assert all(math.isnan(v) for v in load_summary([0, 0], 4).values())


def test_log_layers_follow_the_module_path():
    site = lambda i, name: types.SimpleNamespace(index=i, name=name)  # noqa: E731
    assert log_layers([site(0, "model.layers.3.mlp.gate"), site(1, "model.layers.7.mlp.gate")]) == [3, 7]
    # encoder and decoder blocks share numbers: positions instead
    assert log_layers([site(0, "encoder.block.1.layer.1.mlp.router"),
                       site(1, "decoder.block.1.layer.2.mlp.router")]) == [0, 1]
    assert log_layers([site(0, "moe.gate")]) == [0]
