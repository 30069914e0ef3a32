"""Staged output sets (issue 16, "Reproduce output set"): an exception or a SIGKILL at any point of a rerun
leaves the old complete set or the new complete set, never a mix; stale temporaries are cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from softhard.results import outputs
from softhard.results.io import atomic_write
from softhard.results.outputs import OutputError, OutputSet

OLD = {"a.csv": b"old a\n", "b.json": b'{"old": 1}\n', "c.tex": b"old c\n", "fig.png": b"old png"}
NEW = {"a.csv": b"new a\n", "b.json": b'{"new": 2}\n', "fig.png": b"new png"}  # c.tex is not written again
OTHER = {"z.csv": b"another owner\n"}


def publish(out: Path, files: dict, owner: str = "t") -> list[Path]:
    with OutputSet(out) as s:
        s.link_existing()
        with s.owner(owner):
            for name, data in files.items():
                atomic_write(s.stage / name, data)
        return s.publish({"run": owner})


def state(out: Path) -> dict:
    """The files of ``out`` (manifest excluded), after checking the manifest lists exactly them, correctly."""
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    manifest = json.loads(files.pop("manifest.json"))
    assert {f["path"] for f in manifest["files"]} == set(files)
    for f in manifest["files"]:
        assert f["sha256"] == hashlib.sha256(files[f["path"]]).hexdigest() and f["bytes"] == len(files[f["path"]])
    return files


@pytest.fixture
def old_set(tmp_path):
    out = tmp_path / "out"
    publish(out, OLD)
    publish(out, OTHER, owner="other")
    assert state(out) == {**OLD, **OTHER}
    return out


def test_rerun_replaces_the_owner_files_and_removes_its_stale_ones(old_set):
    publish(old_set, NEW)
    assert state(old_set) == {**NEW, **OTHER}  # c.tex of owner t is gone, owner "other" untouched


def _replace_failing_at(out: Path, k: int):
    real, calls = os.replace, []

    def replace(src, dst, *a, **kw):
        if Path(dst).parent == out:  # a rename into OUT: one step of the publication
            calls.append(dst)
            if len(calls) == k + 1:
                raise OSError(28, "No space left on device")
        return real(src, dst, *a, **kw)

    return replace


@pytest.mark.parametrize("k", range(len(NEW) + 1))  # fail at each rename of the publication, manifest last
def test_exception_mid_publication_is_rolled_forward(old_set, monkeypatch, k):
    monkeypatch.setattr(outputs.os, "replace", _replace_failing_at(old_set, k))
    with pytest.raises(OutputError, match="No space left on device .the new set is committed: the next softhard "
                                          "command on .* completes it"):
        publish(old_set, NEW)
    monkeypatch.undo()
    with OutputSet(old_set) as s:  # the next command on OUT completes the committed publication
        assert s.recovered and "completed" in s.recovered[0]
    assert state(old_set) == {**NEW, **OTHER}


def test_exception_before_the_commit_leaves_the_old_set(old_set):
    with pytest.raises(RuntimeError):
        with OutputSet(old_set) as s:
            s.link_existing()
            with s.owner("t"):
                atomic_write(s.stage / "a.csv", b"half of a new run")
                raise RuntimeError("a renderer failed")
    assert state(old_set) == {**OLD, **OTHER}
    assert not [p for p in old_set.iterdir() if p.name.startswith(".")]  # no stage, no lock


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from softhard.results import outputs
    from softhard.results.io import atomic_write
    out, when = Path(sys.argv[1]), sys.argv[2]
    real = os.replace
    count = [0]
    def replace(src, dst, *a, **kw):
        if when.startswith("publish") and Path(dst).parent == out:
            if count[0] == int(when[len("publish"):]):
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
        return real(src, dst, *a, **kw)
    outputs.os.replace = replace
    with outputs.OutputSet(out) as s:
        s.link_existing()
        with s.owner("t"):
            atomic_write(s.stage / "a.csv", b"new a\\n")
            if when == "stage":
                os.kill(os.getpid(), signal.SIGKILL)
            atomic_write(s.stage / "b.json", b'{"new": 2}\\n')
            atomic_write(s.stage / "fig.png", b"new png")
        s.publish({"run": "t"})
""")


@pytest.mark.parametrize("when, expected", [("stage", "old"), ("publish0", "new"), ("publish2", "new")])
def test_sigkill_leaves_the_old_or_the_new_set(old_set, when, expected):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(outputs.__file__).parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _KILLER, str(old_set), when], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()
    with OutputSet(old_set):  # the next command cleans up (stage) or completes (publication)
        pass
    assert state(old_set) == ({**OLD, **OTHER} if expected == "old" else {**NEW, **OTHER})
    assert not [p for p in old_set.iterdir() if p.name.startswith(".")]


def test_stale_temporaries_are_removed(old_set):
    (old_set / ".table1.csv.k3j2x9.tmp").write_text("half a file")  # an atomic_write killed before its rename
    stage = old_set / ".staging-123-abcd"  # a run killed before its commit point
    stage.mkdir()
    (stage / "a.csv").write_text("half")
    with OutputSet(old_set) as s:
        assert len(s.recovered) == 2
    assert state(old_set) == {**OLD, **OTHER}
    assert not [p for p in old_set.iterdir() if p.name.startswith(".")]


def test_one_writer_at_a_time(old_set):
    with OutputSet(old_set):
        with pytest.raises(OutputError, match="another softhard command"):
            with OutputSet(old_set):
                pass
    with OutputSet(old_set):  # released
        pass


def test_a_failed_first_run_leaves_no_directory(tmp_path):
    out = tmp_path / "a" / "b" / "results"
    with pytest.raises(KeyboardInterrupt):
        with OutputSet(out):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad, match in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "is a file")):
        with pytest.raises(OutputError, match=match):
            outputs.check_output_dir(bad)
    assert outputs.check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_reproduce_interrupted_mid_writing_keeps_the_old_set(tmp_path, monkeypatch):
    """`softhard reproduce` into a directory that holds a run: a failure while rendering leaves the old files
    byte for byte; the next run replaces every file of the table and none of another table."""
    from softhard.report import figures
    from softhard.runs.reproduce import reproduce

    out = tmp_path / "results"
    reproduce(out, only="table1_multi,table2", samples=1024, echo=lambda s: None, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(name, where):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(figures, "render_figure", boom)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        reproduce(out, only="table1_multi", samples=1024, seed=5, echo=lambda s: None, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    reproduce(out, only="table1_multi", samples=1024, seed=5, echo=lambda s: None, progress=False)
    after = state(out)
    for name, data in before.items():
        if name.startswith(("table1_multi.", "figure1_multi.")) and not name.endswith("png"):
            assert after[name] != data, name  # new seed: new numbers and figures
        if name.startswith(("table2.", "figure2.")):
            assert after[name] == data, name  # the other table is kept as it was
    assert json.loads(after["table1_multi.json"])["meta"]["seed"] == 5
