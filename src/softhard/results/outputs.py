"""Output sets: a command's files are staged, then published together, the manifest last.

``softhard reproduce``, ``render`` and ``landscape`` write their files into ``OUT/.staging-<token>/``
and publish them in one step (:class:`OutputSet`):

1. every file of the new set is written (and the figures and the report rendered) in the stage;
2. the manifest ``manifest.json`` (each file's path, size, SHA-256 and owner, i.e. the diagnostic that
   wrote it) is written into the stage, then the journal ``.publish.json`` — the files to move and the stale
   files of the regenerated owners to remove — is written and fsynced: this is the commit point;
3. the files are renamed into ``OUT`` (``os.replace``, same file system), stale files removed, the manifest
   last; the stage is removed.

An interruption before the commit point leaves the old set untouched (the stage is removed by the next
command on ``OUT``); after it, the next command replays the journal (roll forward), so ``OUT`` ends as the
old complete set or the new complete set. Only the rename loop itself (milliseconds) can be cut, and the
manifest, renamed last, still describes the old set while it runs: its checksums tell the difference.
Stale temporaries (``.NAME.XXXX.tmp`` of :func:`~softhard.results.io.atomic_write`, unjournaled stages)
are removed when an output set is opened. One command at a time may write to ``OUT`` (a lock file,
``.softhard.lock``, held while the set is open).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from .journal import JOURNAL, STAGE_NAME, interrupted

__all__ = ["OutputError", "OutputSet", "check_output_dir", "recover", "read_manifest", "sha256_file", "verify",
           "interrupted", "DISK_ERRNOS"]

# errors of a full or read-only disk: the set is not written, the command says so in one line
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
MANIFEST = "manifest.json"
LOCK = ".softhard.lock"
_TMP = re.compile(r"^\..+\.[^.]+\.tmp$")  # atomic_write's temporary names: .NAME.XXXX.tmp


class OutputError(Exception):
    """The output directory cannot be used (not a directory, not writable, busy); one line for the user."""


def check_output_dir(out: str | os.PathLike) -> Path:
    """Check, without creating anything, that ``out`` is or can become a writable directory; returns it.

    Raises:
        OutputError: ``out`` is a file, lies under a file, or the directory (or its nearest existing
            parent) is not writable.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output directory {out} is a file; give a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {out} cannot be written (permission denied)")
        return out
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {out} cannot be created in {parent} (permission denied)")
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(out: str | os.PathLike) -> dict:
    """``OUT/manifest.json`` as a dict (``{"files": []}`` when there is none or it cannot be read)."""
    try:
        body = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
        return body if isinstance(body, dict) and isinstance(body.get("files"), list) else {"files": []}
    except (OSError, ValueError):
        return {"files": []}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replay(out: Path, stage: Path, journal: dict) -> None:
    """Step 3 of the module docstring; idempotent (files already moved are no longer in the stage)."""
    for name in journal["move"]:
        if name != MANIFEST and (stage / name).exists():
            os.replace(stage / name, out / name)
    for name in journal["delete"]:
        (out / name).unlink(missing_ok=True)
    if (stage / MANIFEST).exists():
        os.replace(stage / MANIFEST, out / MANIFEST)
    _fsync_dir(out)
    shutil.rmtree(stage, ignore_errors=True)


def verify(out: str | os.PathLike) -> list[str]:
    """What is wrong with the output set in ``out``, one line each (empty: complete and as written): a cut
    publication (:func:`interrupted`), files listed in ``manifest.json`` that are missing, or whose size or
    SHA-256 differ from it (changed after softhard wrote them)."""
    out, problems = Path(out), []
    for name, moved, total in interrupted(out):
        problems.append(f"{out} is incomplete: a command was interrupted while publishing its files ({moved} of "
                        f"{total} moved; {name}); the next softhard command on {out} completes it")
    for entry in read_manifest(out)["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            continue
        p = out / entry["path"]
        if not p.is_file():
            problems.append(f"{entry['path']} is listed in manifest.json but missing")
        elif p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
            problems.append(f"{entry['path']} differs from manifest.json (changed after softhard wrote it)")
    return problems


def recover(out: str | os.PathLike) -> list[str]:
    """Finish or discard what an interrupted command left in ``out``: replay journaled stages, remove the
    others and stale temporaries. Returns a line per action (for the log). Call it holding the lock."""
    out, done = Path(out), []
    if not out.is_dir():
        return done
    cut = {name: (moved, total) for name, moved, total in interrupted(out)}
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and STAGE_NAME.match(entry.name):
            try:
                journal = json.loads((entry / JOURNAL).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed the unfinished stage {entry.name}")
            else:
                _replay(out, entry, journal)
                moved, total = cut.get(entry.name, (0, 0))
                done.append(f"{out} was incomplete: an interrupted command had published {moved} of the {total} "
                            f"files of its set; completed it ({entry.name})")
        elif entry.is_file() and _TMP.match(entry.name):
            entry.unlink(missing_ok=True)
            done.append(f"removed the stale temporary {entry.name}")
    return done


class _Lock:
    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputError(f"another softhard command is writing to {self.path.parent}; "
                                  "wait for it to finish") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)  # the file was removed by its previous holder: lock the new one

    def release(self, remove: bool) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


class OutputSet:
    """A set of files staged in ``OUT/.staging-*`` and published together (module docstring).

    Usage::

        with OutputSet(out) as s:
            s.link_existing()                 # the published set, visible in the stage (not re-published)
            with s.owner("table1"):
                write_table(table, s.stage)   # files created here belong to table1
            paths = s.publish({"softhard_version": ...})

    Leaving the block without :meth:`publish` (an exception, Ctrl-C) removes the stage and, when the
    directory was created by this set and holds nothing else, the directory.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.stage: Path | None = None
        self.recovered: list[str] = []
        self._owners: dict[str, str] = {}
        self._linked: dict[str, int] = {}
        self._entered: set[str] = set()
        self._cleared: set[str] = set()
        self._created: list[Path] = []
        self._lock: _Lock | None = None
        self._published = False
        self._had_set = False

    # -- opening and closing
    def __enter__(self) -> "OutputSet":
        check_output_dir(self.out)
        missing = []
        p = self.out.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"output directory {self.out} cannot be created: {e.strerror or e}") from None
        self._created = missing  # deepest first
        self._had_set = (self.out / MANIFEST).is_file()
        self._lock = _Lock(self.out / LOCK)
        try:
            self._lock.acquire()
            self.recovered = recover(self.out)
            self.stage = self.out / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
            self.stage.mkdir()
        except BaseException as e:
            self._close(failed=True)
            if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
                raise self._disk_error(e) from e
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(failed=exc_type is not None or not self._published)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:  # a full disk: the old set is left as it was
            raise self._disk_error(exc) from exc

    def _disk_error(self, exc: OSError) -> OutputError:
        if self._published:  # after the commit point: the journal finishes it
            return OutputError(f"cannot finish publishing to {self.out}: {exc.strerror or exc} (the new set is "
                               f"committed: the next softhard command on {self.out} completes it)")
        kept = "the previous set is left as it was" if self._had_set else "nothing was left behind"
        return OutputError(f"cannot write to {self.out}: {exc.strerror or exc} ({kept})")

    def _close(self, failed: bool) -> None:
        if self.stage is not None and not self._published:
            shutil.rmtree(self.stage, ignore_errors=True)
        fresh = failed and bool(self._created) and all(e.name == LOCK for e in self.out.iterdir())
        if self._lock is not None:
            self._lock.release(remove=True)
        if fresh:
            for d in self._created:  # deepest first; stops at the first that is not empty
                try:
                    d.rmdir()
                except OSError:
                    break

    # -- staging
    def link_existing(self, names=()) -> list[str]:
        """Make the published set (the files of ``OUT/manifest.json`` that exist, and ``names``) visible in the
        stage, so that figures and the report can be drawn from the complete set; files left as they are are not
        re-published."""
        entries = [e for e in read_manifest(self.out)["files"] if isinstance(e, dict)]
        entries += [{"path": n} for n in names]
        linked = []
        for entry in entries:
            name = entry.get("path")
            src = self.out / str(name)
            if (not isinstance(name, str) or "/" in name or name == MANIFEST or name.startswith(".")
                    or not src.is_file() or (self.stage / name).exists()):
                continue
            dst = self.stage / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)  # no hard links on this file system
            self._linked[name] = dst.stat().st_ino  # unchanged in the stage: not published again
            self._owners.setdefault(name, str(entry.get("owner", "")))
            linked.append(name)
        return linked

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in self.stage.iterdir() if p.is_file()}

    @contextlib.contextmanager
    def owner(self, name: str):
        """Files created or replaced in the stage inside this block belong to ``name`` (e.g. ``"table1"``).

        The first time ``name`` is entered, the published files it owned are dropped from the stage: what the
        block does not write again is removed from ``OUT`` on publication (a stale file of the same owner never
        survives beside new ones)."""
        if name not in self._entered:
            self._entered.add(name)
            for f, ino in list(self._linked.items()):
                if self._owners.get(f) == name:
                    (self.stage / f).unlink(missing_ok=True)
                    del self._linked[f]
                    self._cleared.add(f)
        before = self._snapshot()
        yield self.stage
        for f, sig in self._snapshot().items():
            if before.get(f) != sig:
                self._owners[f] = name

    def _new_files(self) -> list[str]:
        return sorted(p.name for p in self.stage.iterdir() if p.is_file() and not p.name.startswith(".")
                      and p.name != MANIFEST and self._linked.get(p.name) != p.stat().st_ino)

    # -- publishing
    def publish(self, meta: dict | None = None) -> list[Path]:
        """Steps 2–3 of the module docstring; returns the published paths (manifest last)."""
        new = self._new_files()
        old = {e["path"]: e for e in read_manifest(self.out)["files"] if isinstance(e, dict) and "path" in e}
        stale = sorted(self._cleared - set(new))
        keep = sorted(p for p in old if p not in new and p not in stale and p != MANIFEST
                      and (self.out / p).is_file())
        files = []
        for name in sorted({*new, *keep}):
            path = self.stage / name if name in new else self.out / name
            files.append({"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                          "owner": self._owners.get(name) or old.get(name, {}).get("owner", "")})
        from .io import atomic_write, to_jsonable

        body = {"files": files, **(meta or {})}
        atomic_write(self.stage / MANIFEST, json.dumps(to_jsonable(body), indent=2) + "\n")
        journal = {"move": [*new, MANIFEST], "delete": stale}
        atomic_write(self.stage / JOURNAL, json.dumps(journal))  # the commit point
        _fsync_dir(self.stage)
        self._published = True
        _replay(self.out, self.stage, journal)
        return [self.out / n for n in new] + [self.out / MANIFEST]
