"""The command line checks first: each user mistake is one line on stderr, exit 2, nothing computed, nothing
left on disk; `--debug` shows the traceback; help is for users and does not import the numerical stack."""

from __future__ import annotations

import json
import os
import re
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
    (tmp_path / "other.toml").write_text("[table3]\nsteps = -3\n")  # a table not selected by --only
    (tmp_path / "huge.toml").write_text(f"[table1]\nsamples = {2 ** 62}\n")
    (tmp_path / "noaxes.toml").write_text('experiment = "table2"\n[fixed]\nsamples = 4096\n')
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "table1.json").write_text("{not json")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "table1.json").write_text('{"name": "table1", "columns": ["tau"], "rows": [{"tau": 1}], "meta": []}')
    return tmp_path


MISTAKES = [
    (["reproduce", "--out", "{d}/r", "--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    (["reproduce", "--out", "{d}/r", "--samples", "3"], "--samples must be an integer in [100, 2**34]"),
    (["reproduce", "--out", "{d}/r", "--samples", str(2 ** 70)], "--samples must be an integer in [100, 2**34]"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/huge.toml"],
     "'samples' parameter of table1 must be an int in [2, 2**34]"),
    (["reproduce", "--out", "{d}/r", "--only", "table2", "--config", "{d}/other.toml"],
     "[table3]: The 'steps' parameter of table3 must be an int >= 1. Got -3."),
    (["reproduce", "--out", ""], "--out needs a directory name, got ''"),
    (["reproduce", "--out", " "], "--out needs a directory name, got ' '"),
    (["render", ""], "DIR needs a directory name"),
    (["render", "{d}/corrupt"], "table1.json is not a table written by softhard: Expecting property name"),
    (["render", "{d}/foreign"], "table1.json is not a table written by softhard: 'meta' must be an object"),
    (["landscape", "--out", ""], "--out needs a directory name"),
    (["landscape", "--out", "{d}/l", "--samples", str(2 ** 70)], "--samples must be an integer in [16, 1048576]"),
    (["sweep", "{d}/noaxes.toml", "--out", "{d}/s"],
     "The 'offsets' parameter of softhard sweep must be one value per cell, as an axis or in [fixed] (table2 gives "
     "one row per value of offsets; the spec has no axes)"),
    (["sweep", "{d}/noaxes.toml", "--out", ""], "--out needs a directory name"),
    (["reproduce", "--out", "{d}/r", "--config", "{d}/neg.toml"],
     "'samples' parameter of table1 must be an int in [2, 2**34]"),
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


def test_help_fits_80_columns_and_inspect_reads_like_the_others():
    runner = CliRunner()
    for args in (["--help"], ["reproduce", "--help"], ["inspect", "--help"], ["render", "--help"],
                 ["sweep", "--help"], ["landscape", "--help"]):
        text = runner.invoke(app, args).stdout
        assert max(len(line) for line in text.splitlines()) <= 80, args
    text = runner.invoke(app, ["inspect", "--help"]).stdout
    assert " inspect [OPTIONS] MODEL...\n" in text and "{" not in text and "<list" not in text
    assert "<int>" not in text and "<str>" not in text and "--out DIR" in text and "--tokens N" in text
    assert "pip install 'softhard[models]'" in text
    assert " render [OPTIONS] DIR\n" in runner.invoke(app, ["render", "--help"]).stdout


def test_progress_bars_to_a_file_become_plain_lines():
    """A progress bar redrawn with carriage returns, written where stderr is not a terminal (a log): one plain line
    per redraw, repeats and blank redraws dropped, cursor codes removed; ordinary lines pass unchanged."""
    import io

    from softhard.cli import _PlainLines

    sink = io.StringIO()
    out = _PlainLines(sink)
    out.write("\rrun:  0%|   | 0/2\rrun:  0%|   | 0/2")
    out.write("\x1b[A\rrun: 50%|#  | 1/2\rrun:100%|## | 2/2\r          \r")
    out.write("\rrun: 99%|## | 2/2")
    out.write("error: one line\n")  # not glued to the bar's last state
    out.close()
    assert sink.getvalue().splitlines() == ["run:  0%|   | 0/2", "run: 50%|#  | 1/2", "run:100%|## | 2/2",
                                            "run: 99%|## | 2/2", "error: one line"]


def test_help_imports_no_numerical_stack():
    code = ("import sys\nfrom softhard.cli import app\n"
            "for args in (['--help'], ['reproduce', '--help'], ['landscape', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'matplotlib') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


PROGRESS = re.compile(r"\d+%\|")  # a progress bar's status line (tqdm), written as a plain line off a terminal


def _disk_full_after(monkeypatch, k: int):
    """Every file write after the first ``k`` fails with ENOSPC, as on a full disk (the writers all go through
    ``atomic_write``'s ``os.fdopen``)."""
    import errno

    from softhard.results import io as results_io

    real, count = results_io.os.fdopen, [0]

    def fdopen(fd, *a, **kw):
        count[0] += 1
        if count[0] > k:
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *a, **kw)

    monkeypatch.setattr(results_io.os, "fdopen", fdopen)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("set") / "results"
    r = CliRunner().invoke(app, ["reproduce", "--out", str(out), "--only", "table1", "--samples", "1024"])
    assert r.exit_code == 0, r.output
    return out


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("k", [0, 4])
@pytest.mark.parametrize("command", ["reproduce-new", "reproduce-over", "render", "landscape"])
def test_a_full_disk_is_one_line_and_leaves_the_directory_as_it_was(small_set, tmp_path, monkeypatch, command, k):
    """Issue 23: a full disk (ENOSPC after k files) is the machine's fault, not softhard's: one line, exit 2, and the
    output directory exactly as before (absent when the command would have created it)."""
    import shutil

    import softhard.dynamics.landscape as landscape
    import softhard.report.fig_landscape as fig_landscape
    from softhard.results.io import atomic_write
    from softhard.results.table import Table

    monkeypatch.setattr(landscape, "run_landscape", lambda *a, **kw: Table("landscape", ["tau"], [{"tau": 0.1}], {}))
    monkeypatch.setattr(fig_landscape, "figure_landscape", lambda out: [atomic_write(Path(out) / "f.png", b"png")])
    existing = tmp_path / "set"
    shutil.copytree(small_set, existing)
    out = {"reproduce-new": tmp_path / "new", "landscape": tmp_path / "l"}.get(command, existing)
    args = {"reproduce-new": ["reproduce", "--out", str(out), "--only", "table1", "--samples", "1024"],
            "reproduce-over": ["reproduce", "--out", str(out), "--only", "table1", "--samples", "1024", "--seed", "3"],
            "render": ["render", str(out)], "landscape": ["landscape", "--out", str(out), "--samples", "16"]}[command]
    before = _snapshot(out) if out.exists() else None
    _disk_full_after(monkeypatch, k)
    r = CliRunner().invoke(app, args)
    report = [line for line in r.stderr.splitlines() if not PROGRESS.search(line)]  # progress lines may precede it
    assert r.exit_code == 2 and len(report) == 1 and report[0].startswith("error: "), r.output
    assert "No space left on device" in r.stderr and "internal error" not in r.stderr
    assert (_snapshot(out) if out.exists() else None) == before


def test_render_of_a_set_cut_while_publishing_says_so_and_completes_it(small_set, tmp_path):
    """Issue 23: a SIGKILL inside the publication loop leaves OUT mixed; a reader (read_table) warns that the set is
    incomplete, and `softhard render` says so, completes it from the journal, and puts the fact on the page."""
    import shutil
    import textwrap
    import warnings

    from softhard.results.io import read_table

    out = tmp_path / "set"
    shutil.copytree(small_set, out)
    killer = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        out = Path(sys.argv[1]).resolve()
        real, count = os.replace, [0]
        def replace(src, dst, *a, **kw):
            real(src, dst, *a, **kw)
            if Path(dst).parent.resolve() == out and ".staging-" in str(src):
                count[0] += 1
                if count[0] == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        from softhard.cli import app
        app(["reproduce", "--out", str(out), "--only", "table1", "--samples", "2048", "--seed", "9"])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", killer, str(out)], env=env, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()[-500:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_table(out / "table1.json")
    assert any("is incomplete: a command was interrupted while publishing" in str(w.message) for w in caught)
    r = CliRunner().invoke(app, ["render", str(out)])
    assert r.exit_code == 0, r.output
    assert "was incomplete: an interrupted command had published 3 of the" in r.output
    assert "was incomplete" in (out / "report.html").read_text(encoding="utf-8")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "table1.json").read_text())["meta"]["seed"] == 9  # rolled forward: the new set
