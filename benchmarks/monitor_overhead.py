"""Overhead of ``softhard.RoutingCallback`` in transformers' ``Trainer`` on a small Mixtral (issue 21).

Usage::

    python benchmarks/monitor_overhead.py [--steps 200] [--every 50] [--pairs 3] [--out FILE.json]
    python benchmarks/monitor_overhead.py --profile [--steps 40]      # where the monitor's time goes

The model is transformers' ``MixtralForCausalLM`` with a small config (4 layers of width 128, 8 experts of
width 256, top-2, vocabulary 4096: 4.4 M parameters), trained with AdamW on batches of 4 × 128 random tokens,
float32, one thread. The callback writes to TensorBoard (event files) and to an offline W&B run (the ``monitor``
extra). Three figures, all CPU time of this process (``time.process_time``: waits caused by other processes on
a shared machine do not count):

1. **measured in the run**: the callback's own accounting, ``callback.overhead`` = time inside the monitor
   (router hooks on recorded steps, computing the rows, the writers) / time of the training steps without it;
2. **per-step fixed cost**: what every step pays even when not recorded — the hook calls that only test a
   flag (a forward pre/post hook on the model and one forward hook per router) and the two step events —
   timed by calling them ``10^5`` times, times the calls per step, over the mean step time;
3. **A/B**: ``--pairs`` alternating runs of ``--steps`` steps with and without the callback (same seed, same
   data, the same writers opened in both), ``Σ with / Σ without − 1`` with its standard error over pairs (the
   check from outside; on a shared machine its noise is larger than the effect).

``--profile`` runs pyinstrument over a run with ``every=1`` (every step recorded, to magnify the monitor) and
prints its profile (library frames folded, softhard's shown).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from softhard import RoutingCallback  # noqa: E402
from softhard.inspect.io import WandbWriter, tensorboard_writer  # noqa: E402

CONFIG = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, num_local_experts=8, num_experts_per_tok=2)
BATCH, SEQ = 4, 128


def model_and_data(steps: int, seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**CONFIG))
    ids = torch.randint(0, CONFIG["vocab_size"], (steps * BATCH, SEQ), generator=torch.Generator().manual_seed(seed))
    return model, [{"input_ids": r, "labels": r} for r in ids]


def train(steps: int, callback, out: Path) -> float:
    """CPU seconds of ``trainer.train()`` for ``steps`` optimizer steps."""
    model, data = model_and_data(steps)
    args = transformers.TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                                          dataloader_num_workers=0, logging_strategy="no", seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[callback] if callback else [])
    t0 = time.process_time()
    trainer.train()
    return time.process_time() - t0


def make_callback(every: int, root: Path):
    import wandb

    run = wandb.init(dir=str(root), project="softhard-bench", reinit="create_new")
    tb = tensorboard_writer(root / "tb")
    return RoutingCallback([tb, WandbWriter(run)], every=every), (tb, run)


def fixed_cost_per_step(every: int, steps: int, root: Path) -> dict:
    """CPU seconds every step pays when it is not recorded: the flag-testing hook calls (each a real call of
    the hook through ``nn.Module.__call__``'s hook path, compared with the same module without hooks) and
    the two step events."""
    model, data = model_and_data(1)
    cb, (tb, run) = make_callback(every, root)
    args = transformers.TrainingArguments(str(root / "fixed"), report_to=[], use_cpu=True)
    state = transformers.TrainerState()
    cb.on_train_begin(args, state, None, model=model)
    mon = cb.monitor
    n = 100_000
    router = mon.sites[0].router
    x = torch.zeros(1, CONFIG["hidden_size"])
    mon.begin(1)  # a step that is not recorded (1 % every != 0)
    timed = lambda f, k: min(timeit.repeat(f, number=k, repeat=3, timer=time.process_time)) / k  # noqa: E731
    events = timed(lambda: (cb.on_step_begin(args, state, None), cb.on_step_end(args, state, None)), n // 10)
    with torch.no_grad():
        hooked = timed(lambda: router(x), n)
        cb.on_train_end(args, state, None)  # removes the hooks
        tb.close()
        plain = timed(lambda: router(x), n)
    run.finish()
    # per step: one pre and one post hook on the model, one hook per router; the hook path is measured on a
    # router (its forward included in both timings, so the difference is the hooks' cost)
    per_hook = max(hooked - plain, 0.0)
    calls = 2 + len(mon.sites)
    return {"seconds_per_router_call_with_hook": hooked, "seconds_per_router_call_without": plain,
            "seconds_per_hook_call": per_hook, "hook_calls_per_step": calls,
            "seconds_step_events": events, "seconds_per_step": per_hook * calls + events}


def profile(steps: int, root: Path) -> None:
    from pyinstrument import Profiler

    cb, (tb, run) = make_callback(1, root)
    prof = Profiler(interval=0.0005)
    prof.start()
    train(steps, cb, root / "prof")
    prof.stop()
    tb.close()
    run.finish()
    print(f"every=1, {steps} steps: monitor CPU time / step CPU time = {cb.overhead:.4f}")
    print(prof.output_text(unicode=True, color=False, show_all=False, timeline=False))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if a.profile:
            profile(a.steps, root)
            return {}
        fixed = fixed_cost_per_step(a.every, a.steps, root)
        train(5, None, root / "warm")  # first-call costs out of the comparison
        plain, hooked, accounted, mon_seconds, step_seconds = [], [], [], [], []
        for p in range(a.pairs):
            for on in ((False, True) if p % 2 == 0 else (True, False)):
                # both arms open the same TensorBoard writer and W&B run; only one passes the callback
                cb, (tb, run) = make_callback(a.every, root)
                t = train(a.steps, cb if on else None, root / f"{'on' if on else 'off'}{p}")
                tb.close()
                run.finish()
                if on:
                    hooked.append(t)
                    accounted.append(cb.overhead)
                    mon_seconds.append(cb.monitor.seconds_hooks + cb.monitor.seconds_flush)
                    step_seconds.append(cb.seconds_steps)
                else:
                    plain.append(t)
            print(f"pair {p}: without {plain[-1]:.2f} s, with {hooked[-1]:.2f} s, accounted {accounted[-1]:.5f}",
                  flush=True)
    plain, hooked = np.asarray(plain), np.asarray(hooked)
    ratio = hooked.sum() / plain.sum() - 1
    # standard error of a ratio of sums over pairs (delta method)
    d = hooked - (1 + ratio) * plain
    se = math.sqrt(d.var(ddof=1) / len(d)) / plain.mean() if len(d) > 1 else math.nan
    step = float(np.mean(step_seconds)) / a.steps
    res = {
        "command": f"python benchmarks/monitor_overhead.py --steps {a.steps} --every {a.every} --pairs {a.pairs}",
        "model": "MixtralForCausalLM " + json.dumps(CONFIG), "batch": [BATCH, SEQ],
        "parameters": sum(p.numel() for p in model_and_data(1)[0].parameters()),
        "steps": a.steps, "every": a.every, "pairs": a.pairs, "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": step,
        "monitor_seconds_per_run": float(np.mean(mon_seconds)),
        "accounted_overhead": float(np.mean(accounted)),
        "fixed": fixed,
        "fixed_overhead": fixed["seconds_per_step"] / step,
        "total_overhead": float(np.mean(accounted)) + fixed["seconds_per_step"] / step,
        "ab_overhead": ratio, "ab_overhead_stderr": se,
        "ab_seconds_without": plain.tolist(), "ab_seconds_with": hooked.tolist(),
    }
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
