"""The command line checks first: each user mistake is one line on stderr, exit 2, nothing computed, nothing
left on disk; `--debug` shows the traceback; help is for users and does not import the numerical stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softhard.cli import UsageProblem, app

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "neg.toml").write_text("[table1]\nsamples = -100\n")
    (tmp_path / "typo.toml").write_text("[table1]\nsamles = 5000\n")
    (tmp_path / "section.toml").write_text("[tabel2]\nsamples = 5000\n")
    (tmp_path / "small.toml").write_text("[table3]\nphase_samples = 10\n")
    (tmp_path / "bad.toml").write_text("[table1\n")
    return tmp_path


MISTAKES = [
    (["reproduce", "--out", "{d}/r", "--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    (["reproduce", "--out", "{d}/r", "--samples", "3"], "--samples must be an integer >= 100"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/neg.toml"], "'samples' parameter of table1 must be an int >= 2"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/typo.toml"], "no key 'samles' (did you mean 'samples'?)"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/section.toml"], "[tabel2] (did you mean 'table2'?)"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/small.toml"], "phase_samples must be >= 100, got 10"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/bad.toml"], "is not valid TOML"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/none.toml"], "cannot read config file"),
    (["reproduce", "--out", "{d}/r", "--only", "tabel1"], "unknown table 'tabel1' in --only (did you mean 'table1'?)"),
    (["reproduce", "--out", "{d}/r", "--only", "table3_trajectory"], "written by table3: use --only table3"),
    (["reproduce", "--out", "{d}/FILE"], "is a file"),
    (["reproduce", "--out", "{d}/FILE/sub"], "cannot be created"),
    (["reproduce", "--out", "{d}/r", "--seed", "abc"], "Invalid value for '--seed'"),
    (["reproduce", "--out", "{d}/r", "--bogus"], "No such option: --bogus"),
    (["render", "{d}/nothing"], "not a directory written by 'softhard reproduce'"),
    (["render", "{d}"], "no tables found"),
    (["landscape", "--out", "{d}/FILE"], "is a file"),
    (["landscape", "--out", "{d}/l", "--problem", "binray"], "(did you mean 'binary'?)"),
    (["landscape", "--out", "{d}/l", "--seed", "-3"], "--seed must be an integer"),
    (["sweep", "{d}/none.toml", "--out", "{d}/s"], "cannot read the file"),
    (["sweep", "{d}/neg.toml", "--out", "{d}/FILE"], "is a file"),
    (["sweep-report", "{d}"], "not a directory written by 'softhard sweep'"),
    (["nonsense"], "No such command 'nonsense'"),
]


@pytest.mark.parametrize("args, message", MISTAKES, ids=[" ".join(a[:3]) for a, _ in MISTAKES])
def test_each_mistake_is_one_line_exit_2_and_leaves_nothing(workdir, monkeypatch, args, message):
    import softhard.dynamics.landscape as landscape
    import softhard.experiments.boundary_scaling as t1

    def never(*a, **k):  # nothing may be computed before the arguments are checked
        raise AssertionError("computed before checking the arguments")

    monkeypatch.setattr(landscape, "run_landscape", never)
    monkeypatch.setattr(t1, "run", never)
    before = _files(workdir)
    r = CliRunner().invoke(app, [a.format(d=workdir) for a in args])
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert _files(workdir) == before  # no directory, no lock, no temporary left behind


def test_debug_shows_the_traceback(workdir):
    r = CliRunner().invoke(app, ["--debug", "reproduce", "--out", str(workdir / "r"), "--seed", "-1"])
    assert isinstance(r.exception, UsageProblem) and "--seed" in str(r.exception)


def test_an_internal_error_is_one_line_with_a_pointer_to_debug(workdir, monkeypatch):
    import softhard.runs.reproduce as rep

    def bug(*a, **k):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(rep, "reproduce", bug)
    r = CliRunner().invoke(app, ["reproduce", "--out", str(workdir / "r")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "ZeroDivisionError: float division by zero" in r.stderr and "--debug" in r.stderr


def test_help_is_for_users():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"]).stdout
    assert "softhard reproduce --out results" in top and "thin wrappers" not in top
    for cmd in ("reproduce", "render", "landscape", "inspect", "sweep", "sweep-report"):
        assert cmd in top
    rep = runner.invoke(app, ["reproduce", "--help"]).stdout
    assert "[table1]" in rep  # the config example survives (no markup eats it)
    for name in ("table1", "table1_limit", "table1_multi", "table2", "table3"):
        assert name in rep
    assert runner.invoke(app, []).exit_code == 0  # no arguments: the help


def test_help_imports_no_numerical_stack():
    code = ("import sys\nfrom softhard.cli import app\n"
            "for args in (['--help'], ['reproduce', '--help'], ['landscape', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'matplotlib') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
