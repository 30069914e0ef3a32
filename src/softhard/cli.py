"""The ``softhard`` command line: thin wrappers that check every argument, call the package and print.

Every user mistake (a bad option, a bad config, an output path that cannot be written) is found before
anything is computed and printed as one line on stderr with exit status 2; nothing is left on disk.
``softhard --debug COMMAND ...`` (or ``SOFTHARD_DEBUG=1``) shows the full traceback of any error instead.
Heavy modules (torch, numpy, matplotlib) are imported inside the commands, so that ``--help`` is instant.
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from .experiments import MIN_SAMPLES, REGISTRY

_ABOUT = {"table1": "§7.1 boundary-layer scaling", "table1_limit": "tau -> 0 limits", "table1_multi": "K experts",
          "table2": "§7.2 controlled geometry", "table3": "§7.3 symmetry breaking"}
TABLE_HELP = ", ".join(f"{t} ({_ABOUT[t]})" if t in _ABOUT else t for t in REGISTRY)
_ARGS: list[str] = []  # the arguments of the running command, for the report's "made by" line
LANDSCAPE_MAX_SAMPLES = 1 << 20  # the critical-point search holds its whole sample: more is a typo


class UsageProblem(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


def _die(msg: str) -> None:
    raise UsageProblem(msg)


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _dir(value: str, option: str) -> Path:
    """A directory argument: refuse an empty name (``--out ''`` would mean the current directory)."""
    if not value.strip():
        _die(f"{option} needs a directory name, got {value!r} (give '.' for the current directory)")
    return Path(value)


# errors of a full or read-only disk: a fault of the machine, not of softhard (one line, exit 2)
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _PlainLines(io.TextIOBase):
    """``sys.stderr`` when it is not a terminal (a log file, a pipe, CI): a progress bar redrawn with carriage
    returns becomes plain lines (one per redraw, at most one every ``TQDM_MININTERVAL`` seconds, repeats and
    blank redraws dropped, cursor codes removed) instead of one line thousands of characters long."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self.buf, self.last, self.redrawn = stream, "", None, False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def write(self, text: str) -> int:
        if self.redrawn and text and not text.startswith("\r"):
            self._emit()  # a bar's last state (written after a carriage return) is its own line, before a message
        for part in re.split(r"([\r\n])", _ANSI.sub("", text)):
            if part in ("\r", "\n"):
                self._emit()
                self.redrawn = part == "\r"
            else:
                self.buf += part
        return len(text)

    def _emit(self) -> None:
        line, self.buf = self.buf.rstrip(), ""
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = line

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:  # the real stream stays open
        self._emit()


class _Group(TyperGroup):
    """Runs a command and turns every error into one line on stderr (exit 2 for a user's mistake)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import importlib

        import click  # only for echo/secho; the exception classes are those typer raises

        exc = importlib.import_module(typer.BadParameter.__module__)

        args = list(sys.argv[1:] if args is None else args)
        _ARGS[:] = args
        debug = "--debug" in args or os.environ.get("SOFTHARD_DEBUG", "") not in ("", "0")  # global or per command
        code = 0
        stderr, interval = sys.stderr, os.environ.get("TQDM_MININTERVAL")
        if not _isatty(stderr):
            sys.stderr = _PlainLines(stderr)
            os.environ["TQDM_MININTERVAL"] = interval or "10"  # a progress line every 10 s at most in a log
        try:
            rv = super().main(args=args, prog_name=prog_name or "softhard", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except UsageProblem as e:
            if debug:
                raise
            click.secho(f"error: {_one_line(e)}", err=True, fg="red")
            code = 2
        except exc.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            code = 0
        except exc.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "softhard"
            click.secho(f"error: {_one_line(e.format_message())} (see '{where} --help')", err=True, fg="red")
            code = 2
        except exc.ClickException as e:
            click.secho(f"error: {_one_line(e.format_message())}", err=True, fg="red")
            code = e.exit_code
        except typer.Abort:
            click.echo("aborted", err=True)
            code = 130
        except OSError as e:  # a full or read-only disk is the machine's fault: one line, exit 2
            if debug:
                raise
            if e.errno in _DISK_ERRNOS:
                where = f" {e.filename}" if e.filename else ""
                click.secho(f"error: cannot write{where}: {e.strerror or e} (free some space and run the command "
                            "again)", err=True, fg="red")
                code = 2
            else:
                click.secho(f"error: {type(e).__name__}: {_one_line(e)} (an internal error; run "
                            f"'softhard --debug ...' for the traceback and report it)", err=True, fg="red")
                code = 1
        except Exception as e:  # a bug: one line unless --debug
            if debug:
                raise
            click.secho(f"error: {type(e).__name__}: {_one_line(e)} (an internal error; run "
                        f"'softhard --debug ...' for the traceback and report it)", err=True, fg="red")
            code = 1
        finally:
            if sys.stderr is not stderr:
                sys.stderr.close()
                sys.stderr = stderr
                if interval is None:
                    os.environ.pop("TQDM_MININTERVAL", None)
        if standalone_mode:
            sys.exit(code)
        return code


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Command(TyperCommand):
    """Help as for the other commands: arguments shown by their metavar (``DIR``, ``MODEL...``), without typer's
    ``{NAME}`` usage braces and ``<type>`` labels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, TyperArgument):
                shown = p.metavar or p.name.upper()
                p.display_type_rich = lambda ctx: None  # instance attributes: this command's help only
                p._usage_display_name = (lambda shown=shown, required=p.required: shown if required else
                                         f"[{shown}]")


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Compute the soft-to-hard limit of mixture-of-experts routing: the diagnostics of "Soft-to-Hard Routing
    in Sparse Mixture-of-Experts Models" (arXiv 2605.02124) and the same quantities on real MoE models.

    \b
    Start here:
      softhard reproduce --out results   Tables 1-3 beside the paper, figures,
                                         results/report.html
      softhard render results            redraw figures and report from the tables
      softhard landscape --out DIR       teacher-student landscape, gap vs tau
      softhard inspect MODEL --out DIR   margins and boundary mass of a real MoE,
                                         layer by layer (needs softhard[models])
      softhard sweep SPEC.toml --out DIR a resumable parameter grid;
                                         'softhard sweep-report DIR' plots it

    Run 'softhard COMMAND --help' for the options of a command. Mistakes are reported in one line
    (exit status 2) before anything is computed.
    """


def _command_line() -> str:
    import shlex

    return "softhard " + shlex.join(_ARGS)


@app.command(cls=_Command)
def reproduce(
    out: str = typer.Option("results", "--out", "-o", metavar="DIR", help="Directory for the tables, figures "
                            "and report.html; created if missing, earlier results of other tables are kept."),
    only: Optional[str] = typer.Option(None, "--only", metavar="TABLES",
                                       help=f"Comma-separated tables to run (default: all): {TABLE_HELP}."),
    samples: Optional[int] = typer.Option(None, "--samples", metavar="N",
                                          help=f"Monte Carlo draws per estimate, {MIN_SAMPLES} to 2**34 (default: "
                                          "each table's own; 1048576 for Tables 1-2)."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="S",
                                       help="Seed, an integer >= 0 (default: each table's own, 71/72/73)."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE.toml",
                                          help="TOML file with one section per table holding fields of its "
                                          "Config, e.g. '[table1]' then 'taus = [0.02, 0.1]'."),
) -> None:
    """Reproduce the paper's §7 diagnostics: Tables 1-3 beside the paper's printed values, figures (PNG, PDF,
    SVG), LaTeX fragments and one self-contained report.html.

    Writes per table NAME.csv and NAME.json (every column, the paper's values as *_paper columns, config,
    seed, samples, versions, timing) and NAME.tex; then figureN.{png,pdf,svg}, report.html and manifest.json
    (SHA-256 of every file). All files are published together at the end: an interrupted run leaves the
    previous results complete.

    \b
    Example config file:
        [table1]
        taus = [0.02, 0.05, 0.1]
        samples = 65536
        [table3]
        steps = 500

    Takes about 2 minutes with the defaults on 2 CPU cores; '--samples 16384' under a minute.
    """
    from .runs.reproduce import ReproduceError
    from .runs.reproduce import reproduce as run

    out = _dir(out, "--out")
    try:
        run(out, only=only, samples=samples, seed=seed, config=config, echo=typer.echo,
            command=_command_line())
    except ReproduceError as e:
        _die(str(e))


@app.command(cls=_Command)
def render(out: str = typer.Argument(..., metavar="DIR", help="A directory written by 'softhard reproduce'.")) -> None:
    """Redraw every figure (PNG, PDF, SVG) and report.html from the tables in DIR, without recomputing.

    The report keeps when the numbers were computed and adds when it was rendered. A set left incomplete by
    an interrupted command is completed first (and said so); a table that cannot be read is an error."""
    from .runs.reproduce import ReproduceError, render_all

    out = _dir(out, "DIR")
    try:
        for p in render_all(out, echo=typer.echo, command=_command_line()):
            typer.echo(f"wrote {p}")
    except ReproduceError as e:
        _die(str(e))


# --- further commands (landscape, inspect, sweep, ...) are added below this line ---


@app.command(cls=_Command)
def landscape(
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Output directory (created if missing)."),
    problem: str = typer.Option("binary", "--problem", metavar="NAME", help="Ready-made problem: binary or "
                                "voronoi3."),
    samples: int = typer.Option(8192, "--samples", metavar="N", help="Sample size of the critical-point search, "
                                f"16 to {LANDSCAPE_MAX_SAMPLES}."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed, an integer >= 0."),
) -> None:
    """Teacher-student landscape (§4.4-§5): critical points and their Hessian spectra, recovery of the teacher
    against τ, and the uniform soft-hard gap against τ. Takes about 30 s (binary) or 60 s (voronoi3)."""
    from .dynamics.teacher import PROBLEMS
    from .experiments import did_you_mean

    if problem not in PROBLEMS:
        _die(f"unknown problem {problem!r}{did_you_mean(problem, PROBLEMS)}; choose from {', '.join(PROBLEMS)}")
    out = _dir(out, "--out")
    if not 16 <= samples <= LANDSCAPE_MAX_SAMPLES:
        _die(f"--samples must be an integer in [16, {LANDSCAPE_MAX_SAMPLES}], got {samples}")
    if not 0 <= seed < 2 ** 63:
        _die(f"--seed must be an integer in [0, 2**63), got {seed}")
    from .results.outputs import OutputError, check_output_dir

    try:
        check_output_dir(out)
    except OutputError as e:
        _die(str(e))
    from .dynamics.landscape import run_landscape
    from .report.fig_landscape import figure_landscape
    from .results.io import write_table
    from .results.outputs import OutputSet

    table = run_landscape(problem, samples=samples, seed=seed, progress=True)
    try:
        with OutputSet(out) as s:
            s.link_existing()
            with s.owner("landscape"):
                write_table(table, s.stage)
            with s.owner("figures of landscape"):
                figure_landscape(s.stage)
            paths = s.publish({"command": "landscape", "problem": problem, "samples": samples, "seed": seed})
    except OutputError as e:
        _die(str(e))
    for p in paths:
        typer.echo(f"wrote {p}")
    kinds = [f"{r['kind']}{'' if r['teacher_equivalent'] else ' (not teacher-equivalent)'} at tau={r['tau']:g}"
             for r in table.rows]
    typer.echo("critical points: " + "; ".join(kinds))
    m = table.meta
    exact = "" if m.get("gamma_alpha_exact") is None else f", exact {m['gamma_alpha_exact']:.4f}"
    typer.echo(f"uniform gap exponent {m['gamma_alpha']:.3f} ± {m['gamma_alpha_stderr']:.3f}{exact} (predicted 1); "
               f"recovery error slope {m['recovery_slope']:.2f} in tau")
    if m.get("argmin_rate") is not None:
        typer.echo(f"argmin L_tau -> argmin L_0 on a segment: rate {m['argmin_rate']:.2f}, "
                   f"{'converges' if m['argmin_converges'] else 'FAILS the rule'} (landscape_argmin)")
    elif m.get("argmin_note"):
        typer.echo(f"argmin test {m['argmin_note']}")


@app.command("inspect", cls=_Command)
def inspect_cmd(
    models: list[str] = typer.Argument(..., metavar="MODEL...", show_default=False,
                                       help="Local model directories (config.json, safetensors weights), "
                                            "softhard:digits, or a model of the zoo trained here: softhard:tiny-lm, "
                                            "softhard:deepseek-lm, softhard:qwen-lm (each also @SEED); several: "
                                            "checkpoints of one model, side by side."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Output directory (created if missing)."),
    tokens: int = typer.Option(2048, "--tokens", metavar="N", help="Tokens to inspect (images for softhard:digits)."),
    text: Optional[Path] = typer.Option(None, "--text", metavar="FILE", help="Texts to tokenize: a UTF-8 file, "
                                        ".jsonl, .parquet, a dataset saved to disk, or held-out text "
                                        "softhard:prose, softhard:code or softhard:legal (needs a tokenizer)."),
    random_ids: bool = typer.Option(False, "--random-ids", help="Uniform random token ids (default without --text)."),
    layers: Optional[str] = typer.Option(None, "--layers", metavar="LIST",
                                         help="MoE layer indices, e.g. 0,2,5-7 (default: all)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model directory's code."),
    router_path: Optional[str] = typer.Option(None, "--router-path", metavar="PATTERN",
                                              help="Module name pattern of the routers, e.g. "
                                                   "'model.layers.*.mlp.gate'."),
    top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K",
                                        help="k of a router returning logits whose block declares none (1 to K-1)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", metavar="NAME",
                                        help="bfloat16, float16 or float32 (default: as saved)."),
    device: Optional[str] = typer.Option(None, "--device", metavar="NAME", help="cpu, cuda[:N] or auto."),
    device_map: Optional[str] = typer.Option(None, "--device-map", metavar="auto",
                                             help="Spread the model over the devices (accelerate)."),
    seq_len: int = typer.Option(64, "--seq-len", metavar="N", help="Tokens per sequence."),
    batch_size: int = typer.Option(8, "--batch-size", metavar="N", help="Sequences per forward call."),
    taus: str = typer.Option("0.25,0.5,1,2", "--taus", metavar="LIST",
                             help="Router temperatures of the sensitivity ('' for none)."),
    dense: bool = typer.Option(True, "--dense/--no-dense", help="Also run each block fully dense (sensitivity)."),
    tie_widths: str = typer.Option("0.01,0.1", "--tie-widths", metavar="LIST",
                                   help="Widths w of the 'within w of a tie' columns."),
    perturb: str = typer.Option("fp16", "--perturb", metavar="LIST",
                                help="Changes whose flips are predicted beside measured (flips.csv), comma-separated: "
                                     "bf16, fp16, fp8 (router compute), int8-router, int4-router, int8, int4 (whole "
                                     "model; optimum-quanto), noise; or none."),
    noise: float = typer.Option(1e-3, "--noise", metavar="X", help="Relative size of the Gaussian noise (--perturb "
                                "noise)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", metavar="int8|int4", help="Inspect the model with "
                                           "its weights quantized (optimum-quanto, weight-only)."),
    calibration: float = typer.Option(0.125, "--calibration", metavar="SHARE", help="Share of the sequences on "
                                      "which whole-model int8/int4 errors are calibrated (left out of their "
                                      "flips.csv rows)."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed, an integer >= 0 (random ids, random weights, "
                             "noise, sampling)."),
    overhead: bool = typer.Option(True, "--overhead/--no-overhead", help="Time plain forwards to report the hook "
                                                                          "overhead (doubles the capture's cost)."),
    save_tokens: bool = typer.Option(False, "--save-tokens", help="Also write every token's margins (tokens.npz)."),
    compare: bool = typer.Option(False, "--compare", help="Compare the checkpoints (implied by several MODELs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar per batch."),
    harden: bool = typer.Option(False, "--harden", help="Also the model's loss as routing is made harder (tau -> "
                                                        "0), beside its first-order and whole-curve predictions "
                                                        "(hardening.csv, docs/hardening.md)."),
    harden_taus: str = typer.Option("1,0.5,0.2,0.1,0.05,0.02,0.01,0.005,0.002,0.001", "--harden-taus",
                                    metavar="LIST", help="Router temperatures in (0, 1] of the hardening curve."),
    harden_path: str = typer.Option("auto", "--harden-path", metavar="PATH", help="Tempering path: auto, logits "
                                    "(the rule's weight map at a/tau) or weights (w^(1/tau), sum held)."),
    max_tie_tokens: int = typer.Option(512, "--max-tie-tokens", metavar="N", help="Rows per layer within the "
                                       "bandwidth that get a tie contrast (--harden)."),
    topk: bool = typer.Option(False, "--topk", help="Also the loss of cutting each top-k layer to k-1, ..., 1, "
                                                    "predicted and measured, and a per-layer k per expert-FLOP "
                                                    "budget (topk.csv, docs/hardening.md)."),
    topk_tokens: int = typer.Option(256, "--topk-tokens", metavar="N", help="Rows per layer that get a contrast of "
                                    "dropping (--topk)."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error."),
) -> None:
    """Router margins, boundary mass and soft-vs-hard sensitivity of an MoE model, layer by layer.

    Needs the 'models' extra (pip install 'softhard[models]'): transformers, safetensors, scikit-learn.
    Writes layers.csv/.json, summary.json, a figure per layer, flips.csv/.json (--perturb) and report.html
    into DIR.

    \b
    Examples:
        softhard inspect softhard:digits --out digits
        softhard inspect ./my-moe --out inspect --text corpus.txt --layers 0-3
    """
    from .inspect import InspectError

    out = _dir(out, "--out")
    for option, value in (("--tokens", tokens), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value > INSPECT_MAX:  # the lower bounds are inspect's own checks
            _die(f"{option} must be an integer in [1, {INSPECT_MAX}], got {value}")
    if text is not None and not str(text).startswith("softhard:") and not text.exists():  # held-out texts by name
        _die(f"--text {text}: no such file or directory")
    try:
        grid = {name: [float(v) for v in s.split(",") if v.strip()] for name, s in (("taus", taus),
                                                                                  ("tie-widths", tie_widths),
                                                                                  ("harden-taus", harden_taus))}
    except ValueError:
        _die(f"--taus, --tie-widths and --harden-taus take comma-separated numbers; got {taus!r}, {tie_widths!r} "
             f"and {harden_taus!r}")
    from .inspect.price.flips import parse_perturbations

    try:
        kinds = parse_perturbations(perturb)
    except InspectError as e:
        _die(str(e))
    if quantize not in (None, "int8", "int4"):
        _die(f"--quantize must be int8 or int4, got {quantize!r}")
    if not 0 < calibration < 1:
        _die(f"--calibration must be a share in (0, 1), got {calibration}")
    # layers.csv's flip_rate perturbs the router's input only: the fp16 round trip of the hidden state, or noise
    legacy = "fp16" if "fp16" in kinds else "noise" if "noise" in kinds else None
    kw = dict(tokens=tokens, text=text, random_ids=random_ids, layers=layers, trust_remote_code=trust_remote_code,
              router_path=router_path, top_k=top_k, seq_len=seq_len, batch_size=batch_size, taus=grid["taus"],
              tie_widths=grid["tie-widths"], perturbation=legacy, perturbations=kinds, calibration=calibration,
              quantize=quantize,
              noise=noise,
              seed=seed, dtype=dtype, device=device, device_map=device_map, measure_overhead=overhead, dense=dense,
              save_tokens=save_tokens, progress=progress, harden=harden, harden_taus=grid["harden-taus"],
              harden_path=harden_path, max_tie_tokens=max_tie_tokens, topk=topk, topk_tokens=topk_tokens)
    if len(models) < 2 and compare:
        _die("--compare needs at least two checkpoints")
    before = _tree(out)
    quiet = None if progress else os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "")
    if not progress:  # transformers' own bars ("Loading weights") follow --no-progress too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        from .inspect import inspect_path
        from .inspect.runner import inspect_paths

        if len(models) > 1 or compare:
            results, paths = inspect_paths(models, out, **kw)
        else:
            ins, paths = inspect_path(models[0], out, **kw)
            results = [ins]
    except (InspectError, OSError) as e:
        if debug:
            raise
        _undo(out, before)  # nothing of a refused or failed inspection stays behind
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            _die(f"cannot write to {out}: {e.strerror} (nothing was left behind)")
        if isinstance(e, OSError):
            raise
        _die(str(e))
    except BaseException:
        _undo(out, before)
        raise
    finally:
        if quiet is not None:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = quiet
            if not quiet:
                os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS")
    for ins in results:
        m = ins.meta
        oh = (f"hook overhead {m['hook_overhead']:.1%} ± {m['hook_overhead_stderr']:.1%} of forward CPU time (whole "
              f"run)" if m["hook_overhead"] is not None else f"hook overhead {m['hook_overhead_note']}")
        typer.echo(f"{m['model']}: {m['layers']} MoE layers, {m['tokens']} tokens, {oh}")
        for note in m.get("notes", []):
            typer.echo(f"note: {note}")
        for kind, v in (m.get("flips") or {}).items():
            typer.echo(f"flips {kind}: " + (v.get("note", "") if v.get("mean_ratio") is None else
                       f"predicted/measured {v['mean_ratio']:.3g} averaged over {v['layers']} layers (per layer "
                       f"{v['min_ratio']:.3g}-{v['max_ratio']:.3g}): targets {'hold' if v['holds'] else 'FAIL'}"))
        if "hardening" in m:
            typer.echo(f"hardening: {m['hardening']['verdict']}")
        if "topk" in m:
            typer.echo(f"topk: {m['topk']['verdict']}")
    typer.echo(f"-> {out}")
    for p in paths:
        typer.echo(f"wrote {p}")


INSPECT_MAX = 2 ** 31 - 1  # tokens, sequence length, batch size: larger is a typo


def _tree(root: Path) -> set[Path] | None:
    """The paths under ``root`` (None when ``root`` does not exist)."""
    if not root.exists():
        return None
    return {root, *root.rglob("*")}


def _undo(root: Path, before: set[Path] | None) -> None:
    """Remove what a failed command created under ``root`` (and ``root`` itself if it created it); files it
    replaced cannot be restored (inspect writes each file atomically, so none is half-written)."""
    import shutil

    if not root.exists():
        return
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in sorted(set(root.rglob("*")) - before, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@app.command("compare-routing", cls=_Command)
def compare_routing_cmd(
    a: Path = typer.Argument(..., metavar="A", show_default=False,
                             help="Reference dump: tokens.npz (softhard inspect --save-tokens), router logits "
                                  "(.safetensors), a Megatron-Core router trace (.jsonl or folder) or routed expert "
                                  "ids (.npy/.npz/.jsonl)."),
    b: Path = typer.Argument(..., metavar="B", show_default=False,
                             help="The other run's dump of the same tokens (same formats)."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Output directory (created if missing)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K", help="Experts per token of dumps without a "
                                        "selection (router logits), or the k of flat expert-id dumps."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", metavar="N",
                                             help="MoE layers of a flat expert-id dump."),
    probabilities: bool = typer.Option(False, "--probabilities", help="The dumped router_logits are probabilities "
                                       "(read as log p)."),
    score_noise: Optional[float] = typer.Option(None, "--score-noise", metavar="X", help="Relative score noise for "
                                                "a side with expert ids only (nothing to measure it from)."),
) -> None:
    """Two router dumps of the same tokens, layer by layer: mismatch rate, the share of mismatches at near ties,
    genuine disagreements and the mismatch predicted from the margins (docs/compare_routing.md).

    Needs the 'models' extra (pip install 'softhard[models]').
    """
    from .inspect import InspectError
    from .inspect.io.compare import compare_routing

    out = _dir(out, "--out")
    before = _tree(out)
    try:
        rows, meta, paths = compare_routing(a, b, out, top_k=top_k, num_layers=num_layers,
                                            probabilities=probabilities, score_noise=score_noise)
    except InspectError as e:
        _undo(out, before)
        _die(str(e))
    except BaseException:  # a full disk, an interrupt: nothing of the comparison stays behind
        _undo(out, before)
        raise
    for note in meta["notes"]:
        typer.echo(f"note: {note}")
    from .report.fig_flips import compare_routing_cells

    for r in rows:
        c = compare_routing_cells(r)  # words, never nan: no mismatches give a bound, not "0 ± 0" and "ratio nan"
        head = c["mismatch"] if c["mismatch"].startswith("no ") else f"{r['tokens']} tokens, mismatch {c['mismatch']}"
        typer.echo(f"layer {r['layer']}: {head}, near ties "
                   f"{c['near_ties']}, genuine {c['genuine']}, predicted {c['predicted']} (predicted/measured "
                   f"{c['ratio']})")
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command(cls=_Command)
def sweep(
    spec: Path = typer.Argument(..., metavar="SPEC.toml", help="TOML sweep spec (docs/sweeps.md; examples/)."),
    out: str = typer.Option(..., "--out", "-o", metavar="DIR", help="Output directory: the results store (created "
                            "if missing)."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N",
                                          help="Local worker processes (Dask workers with --dask-local)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="ADDR",
                                            help="Address of a running Dask scheduler."),
    dask_local: bool = typer.Option(False, "--dask-local", help="Start a Dask LocalCluster for this run."),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Skip the stored cells, or recompute every cell."),
) -> None:
    """Run a parameter sweep, one row per cell, into a resumable store; run it again to resume and to retry
    failed cells. Needs the 'sweep' extra for Parquet and Dask."""
    out = _dir(out, "--out")
    if workers is not None and workers < 1:
        _die(f"--workers must be at least 1, got {workers}")
    if scheduler is not None and dask_local:
        _die("give either --scheduler or --dask-local, not both")
    from .results.outputs import OutputError, check_output_dir
    from .runs.sweep import load_spec, run_sweep

    try:
        check_output_dir(out)
    except OutputError as e:
        _die(str(e))
    try:
        loaded = load_spec(spec, _where="softhard sweep")
    except (ValueError, TypeError) as e:
        _die(str(e))
    try:
        s = run_sweep(loaded, out, workers=workers, scheduler=scheduler, dask_local=dask_local,
                      fresh=not resume, progress=True)
    except (ValueError, TypeError, ImportError, OSError) as e:
        _die(str(e))
    typer.echo(f"{s.total} cells: {s.done} done, {s.cached} cached, {s.failed} failed ({s.seconds:.1f} s) -> {out}")
    for cell_id, error in list(s.errors.items())[:5]:
        typer.echo(f"  failed {cell_id[:12]}: {error}")
    if s.failed:
        typer.echo("run the same command again to retry the failed cells")
        raise typer.Exit(1)


@app.command("sweep-report", cls=_Command)
def sweep_report(
    out: str = typer.Argument(..., metavar="DIR", help="A directory written by 'softhard sweep'."),
    x: Optional[str] = typer.Option(None, "--x", metavar="AXIS",
                                    help="Axis on the horizontal axis (default: the first numeric one)."),
    facet: Optional[str] = typer.Option(None, "--facet", metavar="AXIS",
                                        help="Axis drawn as one line per value (default: the next one)."),
) -> None:
    """Plot a sweep: each result column against one axis, one line per value of the others (log axes where
    the grid is geometric), and the risk gap against the boundary mass when both were measured."""
    out = _dir(out, "DIR")
    if not (Path(out) / "sweep.json").is_file():
        _die(f"{out} is not a directory written by 'softhard sweep' (no sweep.json)")
    from .report.fig_sweep import sweep_figures

    try:
        for p in sweep_figures(out, x=x, facet=facet):
            typer.echo(f"wrote {p}")
    except (ValueError, TypeError) as e:
        _die(str(e))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
