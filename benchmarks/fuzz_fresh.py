"""Fresh bad inputs and faults (issue 23): a measurement, not a timed test; not the earlier fuzz (``fuzz.py``).

Three sections, each case ending in one outcome:

``api`` — public functions called with values of the kinds the earlier fuzz did not try: numbers written as text
(``'0.1'``, ``b'0.1'``, ``np.str_('0.1')``, ``['0.1']``), booleans where numbers go (``True``, boolean arrays and
tensors), ``None`` inside a list, ``Decimal``; then the structural cases of the issue (``Empirical`` with d = 0,
``orthant_probability(closed=...)`` of the wrong length, ``Estimate(...)`` with bad fields, ``bool(estimate)``,
``interval(1.5)``, a degenerate pair in ``coarea_constant``, a constant sample in ``density_at_zero``, routers and
experts returning NaN, a user's ``monte_carlo`` terms that raise or return no column, sweep specs without axes or
with a grid the cell cannot reduce to one row, ``inspect_model`` on a non-module and with ``top_k`` > K).
Outcomes: ``error`` (``ValueError``/``TypeError`` in the project's template naming the parameter that was changed
and the function that was called), ``misnamed`` (another parameter), ``misplaced`` (another function: an internal
one), ``foreign`` (any other exception or message), ``silent`` (a result: the value was accepted), ``timeout``.

``cli`` — the command line run as a user runs it (a subprocess): mistakes that must be found before anything runs
(a config section of a table not selected by ``--only``, ``--out ''``, ``--samples`` of 2**70, a corrupt or
foreign ``table1.json`` given to ``render``, a sweep spec without axes, an unreachable ``--scheduler``,
``inspect`` with ``--top-k`` above K, ``--layers``/``--router-path``/``--text`` that cannot be right, weights that
do not fit the config). Outcomes: ``clean`` (exit 2, one line on stderr starting ``error:`` besides progress-bar
status lines, no traceback, no ANSI codes, no file or directory left behind), else the first of ``timeout``,
``late`` (the refusal came after the model's weights loaded), ``accepted`` (exit 0), ``traceback``, ``internal``
(exit 1, "internal error"), ``ansi``, ``lines`` (more than one line on stderr), ``left`` (files left behind),
``exit<N>``.

``fault`` — the same commands with a full disk (every write under the output directory fails with ``ENOSPC``
after ``k`` files, k = 0 and 3: the patch is installed in the child process before softhard is imported) for
reproduce, render, landscape, inspect and sweep (outcomes as for ``cli``; "nothing left" means the output
directory is as before the command), and a SIGKILL inside the publication loop of ``reproduce`` (the process kills
itself after three renames into the output directory): then ``render`` and ``read_table`` are run on the mixed set;
outcome ``detected`` when the reader says the set was incomplete, else ``undetected``.

Usage (from the repository root; the package under test is the first ``softhard`` on ``PYTHONPATH``)::

    PYTHONPATH=src python benchmarks/fuzz_fresh.py [--json out.json] [--section api cli fault] [--timeout 60]

Prints one line per case that is not ``error``/``clean``/``detected``, then the counts per section and a
``SUMMARY`` line; exit status 0.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

TEMPLATE = re.compile(r"The '([^']+)' parameter of (.+?) must be")
HERE = Path(__file__).resolve().parent


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


# ================================================================================================ api

@dataclass
class ApiCase:
    """``fn()`` must raise the template naming ``param`` (or one of ``also``) and a function in ``where``."""

    name: str
    fn: Callable[[], Any]
    param: str
    where: tuple[str, ...]
    also: tuple[str, ...] = ()
    check: Callable[[BaseException], bool] | None = None  # a case whose right answer is not the template


# values a number must not be given as, whatever the context: (label, value)
NUMBER_AS = [("str", "0.5"), ("bytes", b"0.5"), ("np_str", None), ("bool", True), ("decimal", Decimal("0.5"))]
# values a 1-d grid of numbers must not be given as
GRID_AS = [("str", "0.5"), ("str_list", ["0.1", "0.2"]), ("bool", True), ("bool_list", [True, False]),
           ("bool_array", None), ("bool_tensor", None), ("none_in_list", [0.1, None]), ("bytes", b"0.1")]


def _api_cases() -> list[ApiCase]:
    import numpy as np
    import torch

    import softhard as sh

    F = torch.float64
    r = sh.LinearRouter.binary(torch.tensor([1.0, 0.5], dtype=F), 0.2)
    ex = sh.LinearExperts(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F))
    moe = sh.MoE(r, ex)
    law = sh.Gaussian.standard(2)
    est = sh.boundary_mass(r, law, [0.1, 0.2], method="mc", n=512, seed=0)
    cases: list[ApiCase] = []

    def value(label, v):
        if label == "np_str":
            return np.str_("0.5")
        if label == "bool_array":
            return np.array([True, False])
        if label == "bool_tensor":
            return torch.tensor([True, False])
        return v

    def numbers(target, fn, params, where=None):
        for p in params:
            for label, v in NUMBER_AS:
                cases.append(ApiCase(f"{target}({p}={label})", (lambda p=p, v=value(label, v): fn(**{p: v})), p,
                                     (where or target.split("(")[0],)))

    def grids(target, fn, params, where=None):
        for p in params:
            for label, v in GRID_AS:
                cases.append(ApiCase(f"{target}({p}={label})", (lambda p=p, v=value(label, v): fn(**{p: v})), p,
                                     (where or target.split("(")[0],)))

    kw = dict(method="mc", n=256, seed=0)
    grids("boundary_mass", lambda widths: sh.boundary_mass(r, law, widths, **kw), ["widths"])
    grids("boundary_mass[exact]", lambda widths: sh.boundary_mass(r, law, widths), ["widths"], "boundary_mass")
    grids("risk_gap", lambda taus: sh.risk_gap(moe, law, taus, **kw), ["taus"])
    grids("ambiguity_mass", lambda taus: sh.ambiguity_mass(r, law, taus, **kw), ["taus"])
    grids("boundary_mass_exact", lambda widths: sh.boundary_mass_exact(r, law, widths), ["widths"])
    grids("risk_gap_exact", lambda taus: sh.risk_gap_exact(moe, law, taus), ["taus"])
    grids("softmax_gate", lambda logits: sh.softmax_gate(logits, 0.5), ["logits"])
    grids("Gaussian", lambda mean: sh.Gaussian(mean, None), ["mean"])
    numbers("boundary_mass", lambda n=256, seed=0, target_rel_error=None: sh.boundary_mass(
        r, law, 0.1, method="mc", n=n, seed=seed, target_rel_error=target_rel_error), ["n", "seed",
                                                                                         "target_rel_error"])
    numbers("softmax_gate", lambda tau=0.5: sh.softmax_gate([[1.0, 0.0]], tau), ["tau"])
    numbers("tolerance_width", lambda tau=0.5, eps=0.1: sh.tolerance_width(tau, eps), ["tau", "eps"])
    numbers("draw", lambda n=8, seed=0: sh.draw(law, n, seed), ["n", "seed"])
    numbers("monte_carlo", lambda n=64, seed=0: sh.monte_carlo(lambda x: x[:, :1], law, n, seed), ["n", "seed"])
    numbers("LinearRouter.binary", lambda b=0.0: sh.LinearRouter.binary([1.0, 0.5], b), ["b"], "LinearRouter.binary")
    numbers("density_at_zero", lambda bandwidth=None: sh.density_at_zero(
        np.random.default_rng(0).normal(size=200), bandwidth=bandwidth), ["bandwidth"])
    numbers("Estimate.interval", lambda level=0.95: est.interval(level), ["level"], "Estimate.interval")
    numbers("Gaussian.standard", lambda d=2: sh.Gaussian.standard(d), ["d"], "Gaussian.standard")
    numbers("reduced_operator", lambda tau=0.2: sh.reduced_operator(np.eye(2), [1.0, 0.0], [1.0, 0.0], tau),
            ["tau"])
    numbers("TauSchedule", lambda tau=0.3, factor=0.9: sh.TauSchedule("geometric", tau, factor, 0.05),
            ["tau", "factor"])

    # the structural cases of the issue
    add = cases.append
    add(ApiCase("Empirical(d=0)", lambda: sh.Empirical(torch.zeros(5, 0, dtype=F)), "samples", ("Empirical",)))
    add(ApiCase("Empirical(N=0)", lambda: sh.Empirical(torch.zeros(0, 2, dtype=F)), "samples", ("Empirical",)))
    add(ApiCase("Gaussian(d=0)", lambda: sh.Gaussian(torch.zeros(0, dtype=F)), "mean", ("Gaussian",)))
    add(ApiCase("Uniform(d=0)", lambda: sh.Uniform(torch.zeros(0), torch.zeros(0)), "low", ("Uniform",), ("high",)))
    add(ApiCase("orthant_probability(closed=[True])", lambda: sh.orthant_probability(
        [0.0, 0.1], [[1.0, 0.2], [0.2, 1.0]], [0.0, 0.0], closed=[True]), "closed", ("orthant_probability",)))
    add(ApiCase("orthant_probability(closed=[1,0,1])", lambda: sh.orthant_probability(
        [0.0, 0.1], [[1.0, 0.2], [0.2, 1.0]], [0.0, 0.0], closed=[True, False, True]), "closed",
        ("orthant_probability",)))
    add(ApiCase("orthant_probability(closed='yes')", lambda: sh.orthant_probability(
        [0.0, 0.1], [[1.0, 0.2], [0.2, 1.0]], [0.0, 0.0], closed="yes"), "closed", ("orthant_probability",)))
    add(ApiCase("Estimate(value='a')", lambda: sh.Estimate(value="a", stderr=0.1, n=10), "value", ("Estimate",)))
    add(ApiCase("Estimate(stderr=-1)", lambda: sh.Estimate(value=1.0, stderr=-1.0, n=10), "stderr", ("Estimate",)))
    add(ApiCase("Estimate(stderr='0.1')", lambda: sh.Estimate(value=1.0, stderr="0.1", n=10), "stderr",
                ("Estimate",)))
    add(ApiCase("Estimate(n=-3)", lambda: sh.Estimate(value=1.0, stderr=0.1, n=-3), "n", ("Estimate",)))
    add(ApiCase("Estimate(n=1.5)", lambda: sh.Estimate(value=1.0, stderr=0.1, n=1.5), "n", ("Estimate",)))
    add(ApiCase("Estimate(method=5)", lambda: sh.Estimate(value=1.0, stderr=0.1, n=10, method=5), "method",
                ("Estimate",)))
    add(ApiCase("Estimate(seed='x')", lambda: sh.Estimate(value=1.0, stderr=0.1, n=10, seed="x"), "seed",
                ("Estimate",)))
    add(ApiCase("Estimate(shapes)", lambda: sh.Estimate(value=[1.0, 2.0], stderr=[0.1, 0.1, 0.1], n=10), "stderr",
                ("Estimate",), ("value",)))
    add(ApiCase("Estimate(dof=-1)", lambda: sh.Estimate(value=1.0, stderr=0.1, n=10, dof=-1), "dof", ("Estimate",)))
    add(ApiCase("bool(estimate)", lambda: bool(est), "estimate", ("bool",),
                check=lambda e: isinstance(e, TypeError) and "Estimate" in str(e) and "unsized" not in str(e)))
    add(ApiCase("bool(scalar estimate)", lambda: bool(est[0]), "estimate", ("bool",),
                check=lambda e: isinstance(e, TypeError) and "Estimate" in str(e)))
    add(ApiCase("estimate.interval(1.5)", lambda: est.interval(1.5), "level", ("Estimate.interval",)))
    add(ApiCase("estimate.interval(0)", lambda: est.interval(0.0), "level", ("Estimate.interval",)))
    degenerate = sh.LinearRouter(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F))
    add(ApiCase("coarea_constant(degenerate pair)", lambda: sh.coarea_constant(degenerate, law, (0, 1)), "pair",
                ("coarea_constant",), ("router",)))
    add(ApiCase("coarea_constant(degenerate, exact)", lambda: sh.coarea_constant(degenerate, law, (0, 1),
                                                                                   method="exact"), "pair",
                ("coarea_constant",), ("router",)))
    add(ApiCase("density_at_zero(constant)", lambda: sh.density_at_zero(np.zeros(50)), "values",
                ("density_at_zero",)))
    add(ApiCase("density_at_zero(ties)", lambda: sh.density_at_zero(np.r_[np.zeros(40), [1.0, 2.0]]), "values",
                ("density_at_zero",)))

    def nan_router(x):
        return torch.full((x.shape[0], 2), float("nan"), dtype=x.dtype)

    def inf_router(x):
        out = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        out[::7, 0] = float("inf")
        return out

    add(ApiCase("boundary_mass(NaN router)", lambda: sh.boundary_mass(nan_router, law, 0.1, **kw), "router",
                ("boundary_mass",)))
    add(ApiCase("boundary_mass(inf router)", lambda: sh.boundary_mass(inf_router, law, 0.1, **kw), "router",
                ("boundary_mass",)))
    add(ApiCase("margin_tail(NaN router)", lambda: sh.margin_tail(nan_router, law, n=256, seed=0), "router",
                ("margin_tail",)))
    nan_moe = sh.MoE(sh.as_router(nan_router, 2), ex)
    add(ApiCase("risk_gap(NaN router)", lambda: sh.risk_gap(nan_moe, law, 0.1, **kw), "moe", ("risk_gap",),
                ("router",)))
    add(ApiCase("monte_carlo(terms IndexError)", lambda: sh.monte_carlo(lambda x: [][1], law, 64, 0), "terms",
                ("monte_carlo",), check=lambda e: _template_ok(e, "terms", ("monte_carlo",))
                and isinstance(e.__cause__, IndexError)))
    add(ApiCase("monte_carlo(terms KeyError)", lambda: sh.monte_carlo(lambda x: {}["a"], law, 64, 0), "terms",
                ("monte_carlo",), check=lambda e: _template_ok(e, "terms", ("monte_carlo",))
                and isinstance(e.__cause__, KeyError)))
    add(ApiCase("monte_carlo(terms (N, 0))", lambda: sh.monte_carlo(lambda x: x[:, 5:6], law, 64, 0), "terms",
                ("monte_carlo",)))
    add(ApiCase("monte_carlo(terms NaN)", lambda: sh.monte_carlo(lambda x: x[:, :1] * float("nan"), law, 64, 0),
                "terms", ("monte_carlo",)))
    spec = {"experiment": "table2", "fixed": {"samples": 4096}}
    add(ApiCase("load_spec(no axes)", lambda: sh.load_spec(spec), "axes", ("load_spec",), ("offsets",)))
    add(ApiCase("load_spec(axes={})", lambda: sh.load_spec({**spec, "axes": {}}), "axes", ("load_spec",),
                ("offsets",)))
    add(ApiCase("load_spec(tau axis, 6 offsets)", lambda: sh.load_spec({**spec, "axes": {"tau": [0.1, 0.2]}}),
                "offsets", ("load_spec",), ("axes",)))
    add(ApiCase("load_spec(samples=-1)", lambda: sh.load_spec({**spec, "fixed": {"samples": -1},
                                                              "axes": {"offsets": [1.0]}}), "samples",
                ("load_spec",)))
    add(ApiCase("load_spec(samples=2**70)", lambda: sh.load_spec({**spec, "fixed": {"samples": 2 ** 70},
                                                                 "axes": {"offsets": [1.0]}}), "samples",
                ("load_spec",)))
    add(ApiCase("load_spec(axis of strings)", lambda: sh.load_spec({**spec, "axes": {"offsets": ["0.5"]}}),
                "offsets", ("load_spec",)))
    add(ApiCase("inspect_model(model=3)", lambda: sh.inspect_model(3, []), "model", ("inspect_model",)))
    add(ApiCase("find_routers(model=3)", lambda: sh.find_routers(3), "model", ("find_routers",)))
    add(ApiCase("find_routers(top_k=9 of 4)", lambda: sh.find_routers(_LogitsOnly(), top_k=9), "top_k",
                ("find_routers",)))
    add(ApiCase("find_routers(top_k=0)", lambda: sh.find_routers(_LogitsOnly(), top_k=0), "top_k", ("find_routers",)))
    add(ApiCase("find_routers(top_k='2')", lambda: sh.find_routers(_LogitsOnly(), top_k="2"), "top_k",
                ("find_routers",)))
    return cases


class _LogitsOnly:  # filled in lazily (torch is imported inside _api_cases)
    def __new__(cls):
        import torch

        class Block(torch.nn.Module):  # a router returning logits alone, in a block that declares no k
            def __init__(self):
                super().__init__()
                self.gate = torch.nn.Linear(4, 4, bias=False)
                self.experts = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(4)])

            def forward(self, x):
                return x

        return torch.nn.Sequential(Block())


def _template_ok(e: BaseException, param: str, where: tuple[str, ...], also: tuple[str, ...] = ()) -> bool:
    m = TEMPLATE.search(str(e))
    return (isinstance(e, (ValueError, TypeError)) and m is not None and m.group(1).split(".")[0] in (param, *also)
            and m.group(2) in where)


def run_api(timeout: float) -> list[dict]:
    out = []
    for c in _api_cases():
        case = {"section": "api", "case": c.name}
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = c.fn()
        except Timeout:
            out.append({**case, "outcome": "timeout"})
            continue
        except BaseException as e:  # noqa: BLE001 - classifying is the point
            signal.setitimer(signal.ITIMER_REAL, 0)
            msg = " ".join(str(e).split())[:240]
            if c.check is not None:
                outcome = "error" if c.check(e) else "foreign"
            else:
                m = TEMPLATE.search(msg)
                if not isinstance(e, (ValueError, TypeError)) or m is None:
                    outcome = "foreign"
                elif m.group(1).split(".")[0] not in (c.param, *c.also):
                    outcome = "misnamed"
                elif m.group(2) not in c.where:
                    outcome = "misplaced"
                else:
                    outcome = "error"
            out.append({**case, "outcome": outcome, "exception": type(e).__name__, "message": msg})
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.append({**case, "outcome": "silent", "result": " ".join(str(res).split())[:120]})
    return out


# ================================================================================================ cli

CHILD = r"""
import errno, io, builtins, os, sys
out = os.path.realpath(sys.argv[1]); k = int(sys.argv[2]); mode = sys.argv[3]; args = sys.argv[4:]
count = [0]
def under(p):
    try:
        p = os.path.realpath(os.fspath(p))
    except TypeError:
        return False
    return p == out or p.startswith(out + os.sep)
if mode == "enospc":
    class Full(io.RawIOBase):
        def __init__(self, f): self.f = f
        def writable(self): return True
        def write(self, b): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        def close(self):
            try: self.f.close()
            finally: super().close()
    def full(f, path, m):
        if under(path) and any(c in m for c in "wax+"):
            count[0] += 1
            if count[0] > k:
                return io.TextIOWrapper(io.BufferedWriter(Full(f))) if "b" not in m else io.BufferedWriter(Full(f))
        return f
    _open, _fdopen = io.open, os.fdopen
    def patched_open(file, mode="r", *a, **kw):
        return full(_open(file, mode, *a, **kw), file if not isinstance(file, int) else "/proc/self/fd/%d" % file, mode)
    def patched_fdopen(fd, mode="r", *a, **kw):
        return full(_fdopen(fd, mode, *a, **kw), os.readlink("/proc/self/fd/%d" % fd), mode)
    builtins.open = io.open = patched_open
    os.fdopen = patched_fdopen
elif mode == "kill":
    import signal
    _replace = os.replace
    def killing_replace(src, dst, *a, **kw):
        _replace(src, dst, *a, **kw)
        if os.path.dirname(os.path.realpath(os.fspath(dst))) == out and ".staging-" in os.fspath(src):
            count[0] += 1
            if count[0] >= k:
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = killing_replace
sys.argv = ["softhard", *args]
from softhard.cli import app
app()
"""


@dataclass
class CliCase:
    name: str
    args: list[str]  # "{d}" is the case's directory
    out: str | None = None  # the output directory whose content must not change ("{d}/...")
    setup: Callable[[Path], None] | None = None
    mode: str = "plain"  # plain, enospc, kill
    k: int = 0
    section: str = "cli"
    env: dict = field(default_factory=dict)


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    if not root.exists():
        return {}
    snap = {str(p.relative_to(root.parent)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}
    snap[root.name] = -2
    return snap


def _child(case: CliCase, d: Path, timeout: float, env: dict) -> tuple[int | None, str, str, float]:
    out = case.out.format(d=d) if case.out else str(d / "__none__")
    args = [a.format(d=d) for a in case.args]
    cmd = [sys.executable, "-c", CHILD, out, str(case.k), case.mode, *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, **case.env}, cwd=d)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        return None, text(e.stdout), text(e.stderr), time.perf_counter() - t0


PROGRESS = re.compile(r"\d+%\|")  # a progress bar's status line: output of a command that started, not an error


def classify_cli(code, stdout: str, stderr: str, before: dict, after: dict) -> str:
    if code is None:
        return "timeout"
    if "Loading weights" in stderr:  # a refusal that waited for the model's weights to load
        return "late"
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not PROGRESS.search(ln)]
    if code == 0:
        return "accepted"
    if "Traceback (most recent call last)" in stderr or "Traceback (most recent call last)" in stdout:
        return "traceback"
    if code == 1 and "internal error" in stderr:
        return "internal"
    if "\x1b[" in stderr or "\x1b[" in stdout:
        return "ansi"
    if len(lines) != 1 or not lines[0].startswith("error:"):
        return "lines"
    if before != after:
        return "left"
    if code != 2:
        return f"exit{code}"
    return "clean"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tiny_set(d: Path) -> None:
    """A complete small reproduce set in d/set (table1 only, 2**12 samples), made by the package under test."""
    subprocess.run([sys.executable, "-m", "softhard.cli", "reproduce", "--out", str(d / "set"), "--only", "table1",
                    "--samples", "4096"], check=True, capture_output=True, cwd=d)


def _corrupt(text: str | None):
    def setup(d: Path) -> None:
        _tiny_set(d)
        if text is None:
            (d / "set" / "table1.json").unlink()
        else:
            (d / "set" / "table1.json").write_text(text, encoding="utf-8")
    return setup


def _models(d: Path) -> None:
    """Tiny saved transformers models: a Mixtral with a tokenizer-free directory, and one whose weights do not
    fit its config (hidden size changed after saving)."""
    import transformers

    from softhard.inspect.families import build_tiny

    transformers.utils.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_tiny("mixtral", 0).save_pretrained(d / "mixtral")
        build_tiny("mixtral", 0).save_pretrained(d / "mismatch")
    cfg = json.loads((d / "mismatch" / "config.json").read_text())
    cfg["intermediate_size"] = cfg.get("intermediate_size", 64) * 2
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (d / "mismatch" / "config.json").write_text(json.dumps(cfg))


def _cli_cases() -> list[CliCase]:
    small = ["--samples", "4096"]
    C: list[CliCase] = []
    add = C.append
    # --- reproduce: checked before anything runs
    add(CliCase("reproduce: [table3] steps = -3 with --only table2",
                ["reproduce", "--out", "{d}/r", "--only", "table2", "--config", "{d}/c.toml", *small], "{d}/r",
                lambda d: _write(d / "c.toml", "[table3]\nsteps = -3\n")))
    add(CliCase("reproduce: [table1_multi] K = 1 with --only table1",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--config", "{d}/c.toml", *small], "{d}/r",
                lambda d: _write(d / "c.toml", "[table1_multi]\nK = 1\n")))
    add(CliCase("reproduce: [table2] samples = 10 with --only table1",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--config", "{d}/c.toml", *small], "{d}/r",
                lambda d: _write(d / "c.toml", "[table2]\nsamples = 10\n")))
    add(CliCase("reproduce: --out ''", ["reproduce", "--out", "", "--only", "table1", *small], "{d}"))
    add(CliCase("reproduce: --out ' '", ["reproduce", "--out", " ", "--only", "table1", *small], "{d}"))
    add(CliCase("reproduce: --samples 2**70",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--samples", str(2 ** 70)], "{d}/r"))
    add(CliCase("reproduce: --samples 2**62",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--samples", str(2 ** 62)], "{d}/r"))
    add(CliCase("reproduce: samples = 2**62 in the config",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--config", "{d}/c.toml"], "{d}/r",
                lambda d: _write(d / "c.toml", f"[table1]\nsamples = {2 ** 62}\n")))
    add(CliCase("reproduce: --seed 2**64", ["reproduce", "--out", "{d}/r", "--seed", str(2 ** 64), *small], "{d}/r"))
    add(CliCase("reproduce: taus = [] in the config",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--config", "{d}/c.toml", *small], "{d}/r",
                lambda d: _write(d / "c.toml", "[table1]\ntaus = []\n")))
    add(CliCase("reproduce: taus = ['0.1'] in the config",
                ["reproduce", "--out", "{d}/r", "--only", "table1", "--config", "{d}/c.toml", *small], "{d}/r",
                lambda d: _write(d / "c.toml", "[table1]\ntaus = ['0.1']\n")))
    # --- render: readers of a set
    add(CliCase("render: table1.json not JSON", ["render", "{d}/set"], "{d}/set", _corrupt("{not json")))
    add(CliCase("render: table1.json truncated", ["render", "{d}/set"], "{d}/set", _corrupt('{"name": "table1", "co')))
    add(CliCase("render: table1.json a list", ["render", "{d}/set"], "{d}/set", _corrupt("[1, 2, 3]")))
    add(CliCase("render: table1.json without rows", ["render", "{d}/set"], "{d}/set",
                _corrupt('{"name": "table1", "columns": ["tau"], "meta": {}}')))
    add(CliCase("render: table1.json rows of text", ["render", "{d}/set"], "{d}/set",
                _corrupt('{"name": "table1", "columns": ["tau", "boundary_mass"], "rows": [{"tau": "a", '
                         '"boundary_mass": "b"}], "meta": {}}')))
    add(CliCase("render: table1.json not UTF-8", ["render", "{d}/set"], "{d}/set",
                lambda d: (_tiny_set(d), (d / "set" / "table1.json").write_bytes(b"\xff\xfe\x00{"))))
    add(CliCase("render: --out ''", ["render", ""], "{d}"))
    # --- landscape, sweep
    add(CliCase("landscape: --out ''", ["landscape", "--out", "", "--samples", "16"], "{d}"))
    add(CliCase("landscape: --samples 2**70", ["landscape", "--out", "{d}/l", "--samples", str(2 ** 70)], "{d}/l"))
    add(CliCase("sweep: spec without axes", ["sweep", "{d}/s.toml", "--out", "{d}/s"], "{d}/s",
                lambda d: _write(d / "s.toml", 'experiment = "table2"\n[fixed]\nsamples = 4096\n')))
    add(CliCase("sweep: tau axis, six offsets", ["sweep", "{d}/s.toml", "--out", "{d}/s"], "{d}/s",
                lambda d: _write(d / "s.toml", 'experiment = "table2"\n[fixed]\nsamples = 4096\n'
                                               '[axes]\ntau = [0.1, 0.2]\n')))
    add(CliCase("sweep: unreachable --scheduler",
                ["sweep", "{d}/s.toml", "--out", "{d}/s", "--scheduler", "tcp://127.0.0.1:9"], "{d}/s",
                lambda d: _write(d / "s.toml", 'experiment = "table2"\n[fixed]\nsamples = 4096\n'
                                               '[axes]\noffsets = [0.5, 1.0]\n')))
    add(CliCase("sweep: --out ''", ["sweep", "{d}/s.toml", "--out", ""], "{d}",
                lambda d: _write(d / "s.toml", 'experiment = "table2"\n[fixed]\nsamples = 4096\n'
                                               '[axes]\noffsets = [0.5, 1.0]\n')))
    # --- inspect
    ins = ["--tokens", "16", "--seq-len", "8", "--taus", "", "--no-dense", "--no-overhead", "--no-progress"]
    add(CliCase("inspect: --top-k 9 on 4 experts", ["inspect", "{d}/m/mixtral", "--out", "{d}/i", "--top-k", "9",
                                                     "--router-path", "model.layers.*.mlp.gate", *ins], "{d}/i",
                _models_once))
    add(CliCase("inspect softhard:digits: --top-k 9", ["inspect", "softhard:digits", "--out", "{d}/i", "--top-k", "9",
                                                        *ins], "{d}/i"))
    add(CliCase("inspect: --layers 7 of 2", ["inspect", "{d}/m/mixtral", "--out", "{d}/i", "--layers", "7", *ins],
                "{d}/i", _models_once))
    add(CliCase("inspect: --router-path matching nothing",
                ["inspect", "{d}/m/mixtral", "--out", "{d}/i", "--router-path", "no.such.*", *ins], "{d}/i",
                _models_once))
    add(CliCase("inspect: --text missing", ["inspect", "{d}/m/mixtral", "--out", "{d}/i", "--text", "{d}/none.txt",
                                             *ins], "{d}/i", _models_once))
    add(CliCase("inspect: weights that do not fit the config", ["inspect", "{d}/m/mismatch", "--out", "{d}/i", *ins],
                "{d}/i", _models_once))
    add(CliCase("inspect: --out ''", ["inspect", "softhard:digits", "--out", "", *ins], "{d}"))
    return C


_MODELS: list[Path] = []


def _models_once(d: Path) -> None:
    """The saved models are made once per run and linked into each case's directory."""
    if not _MODELS:
        root = Path(tempfile.mkdtemp(prefix="softhard-fuzz-models-"))
        _models(root)
        _MODELS.append(root)
    (d / "m").symlink_to(_MODELS[0], target_is_directory=True)


def _fault_cases() -> list[CliCase]:
    C: list[CliCase] = []
    small = ["--samples", "4096"]
    for k in (0, 3):
        C.append(CliCase(f"reproduce: disk full after {k} files (new directory)",
                         ["reproduce", "--out", "{d}/r", "--only", "table1", *small], "{d}/r", mode="enospc", k=k,
                         section="fault"))
        C.append(CliCase(f"reproduce: disk full after {k} files (over a set)",
                         ["reproduce", "--out", "{d}/set", "--only", "table1", *small], "{d}/set", _tiny_set,
                         mode="enospc", k=k, section="fault"))
        C.append(CliCase(f"render: disk full after {k} files", ["render", "{d}/set"], "{d}/set", _tiny_set,
                         mode="enospc", k=k, section="fault"))
        C.append(CliCase(f"landscape: disk full after {k} files",
                         ["landscape", "--out", "{d}/l", "--samples", "16"], "{d}/l", mode="enospc", k=k,
                         section="fault"))
        C.append(CliCase(f"inspect: disk full after {k} files",
                         ["inspect", "{d}/m/mixtral", "--out", "{d}/i", "--tokens", "16", "--seq-len", "8", "--taus",
                          "", "--no-dense", "--no-overhead", "--no-progress"], "{d}/i", _models_once, mode="enospc",
                         k=k, section="fault"))
        C.append(CliCase(f"sweep: disk full after {k} files", ["sweep", "{d}/s.toml", "--out", "{d}/s"], "{d}/s",
                         lambda d: _write(d / "s.toml", 'experiment = "table2"\n[fixed]\nsamples = 4096\n'
                                                        '[axes]\noffsets = [0.5, 1.0]\n'), mode="enospc", k=k,
                         section="fault"))
    return C


def run_cli(cases: list[CliCase], timeout: float) -> list[dict]:
    env = dict(os.environ)
    env.pop("SOFTHARD_DEBUG", None)
    env["PYTHONWARNINGS"] = "ignore"
    out = []
    for c in cases:
        d = Path(tempfile.mkdtemp(prefix="softhard-fuzz-"))
        try:
            if c.setup is not None:
                c.setup(d)
            root = Path(c.out.format(d=d)) if c.out else d
            before = _snapshot(root)
            code, so, se, dt = _child(c, d, timeout, env)
            after = _snapshot(root)
            outcome = classify_cli(code, so, se, before, after)
            row = {"section": c.section, "case": c.name, "outcome": outcome, "exit": code,
                   "stderr": " | ".join(ln for ln in se.splitlines() if ln.strip())[:300], "seconds": round(dt, 1)}
            if outcome == "left":
                row["left"] = sorted(set(after) - set(before))[:6] + [f"changed: {k}" for k in before
                                                                      if k in after and before[k] != after[k]][:3]
            out.append(row)
        except subprocess.CalledProcessError as e:
            out.append({"section": c.section, "case": c.name, "outcome": "setup-failed",
                        "stderr": (e.stderr or b"")[-300:].decode(errors="replace")})
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def run_kill(timeout: float) -> list[dict]:
    """SIGKILL inside the publication loop of reproduce, then the readers on the mixed set."""
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    rows = []
    d = Path(tempfile.mkdtemp(prefix="softhard-fuzz-"))
    try:
        _tiny_set(d)
        case = CliCase("reproduce killed after 3 renames", ["reproduce", "--out", "{d}/set", "--only", "table1",
                                                            "--samples", "8192", "--seed", "5"], "{d}/set",
                       mode="kill", k=3)
        code, so, se, _ = _child(case, d, timeout, env)
        if code != -signal.SIGKILL:
            return [{"section": "fault", "case": "SIGKILL in the publication loop", "outcome": "not-killed",
                     "exit": code, "stderr": se[-300:]}]
        code = ("import sys\nfrom softhard.results.io import read_table\n"
                "try:\n    t = read_table(sys.argv[1])\n    print('read', len(t.rows), 'rows')\n"
                "except Exception as e:\n    print(type(e).__name__, e, file=sys.stderr); sys.exit(2)\n")
        reader_env = {k: v for k, v in env.items() if k != "PYTHONWARNINGS"}  # a reader's warnings are its words
        p = subprocess.run([sys.executable, "-c", code, str(d / "set" / "table1.json")], capture_output=True,
                           text=True, timeout=timeout, env=reader_env)
        said = re.search(r"incomplete|interrupted", p.stdout + p.stderr, re.I) is not None
        rows.append({"section": "fault", "case": "SIGKILL in publication, then read_table(table1.json)",
                     "outcome": "detected" if said else "undetected", "exit": p.returncode,
                     "stderr": " | ".join((p.stdout + p.stderr).split("\n"))[:300]})
        p = subprocess.run([sys.executable, "-m", "softhard.cli", "render", str(d / "set")], capture_output=True,
                           text=True, timeout=timeout, env=env)
        said = re.search(r"incomplete|interrupted", p.stdout + p.stderr, re.I) is not None
        rows.append({"section": "fault", "case": "SIGKILL in publication, then render",
                     "outcome": "detected" if said else "undetected", "exit": p.returncode,
                     "stderr": " | ".join((p.stdout + p.stderr).split("\n"))[:300]})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


GOOD = {"error", "clean", "detected"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write every case here")
    p.add_argument("--section", nargs="*", default=["api", "cli", "fault"], choices=["api", "cli", "fault"])
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    p.add_argument("--match", default=None, help="only the cases whose name contains this text")
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    import softhard

    rows: list[dict] = []
    if "api" in args.section:
        rows += [r for r in run_api(args.timeout) if not args.match or args.match in r["case"]]
    if "cli" in args.section:
        rows += run_cli([c for c in _cli_cases() if not args.match or args.match in c.name], args.timeout)
    if "fault" in args.section:
        rows += run_cli([c for c in _fault_cases() if not args.match or args.match in c.name], args.timeout)
        if not args.match or args.match in "SIGKILL in publication":
            rows += run_kill(args.timeout)
    for m in _MODELS:
        shutil.rmtree(m, ignore_errors=True)
    for r in rows:
        if r["outcome"] not in GOOD:
            detail = r.get("message") or r.get("stderr") or r.get("result") or ""
            left = f" left {r['left']}" if r.get("left") else ""
            print(f"{r['outcome']:10s} [{r['section']}] {r['case']}: {detail}{left}"[:400])
    print(f"\nsofthard from {Path(softhard.__file__).parent}")
    total_bad = 0
    for sec in ("api", "cli", "fault"):
        got = [r for r in rows if r["section"] == sec]
        if not got:
            continue
        counts = Counter(r["outcome"] for r in got)
        bad = sum(v for k, v in counts.items() if k not in GOOD)
        total_bad += bad
        print(f"{sec}: {len(got)} cases; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + f"; not refused cleanly: {bad}")
    print(f"SUMMARY cases={len(rows)} good={len(rows) - total_bad} bad={total_bad} "
          f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
