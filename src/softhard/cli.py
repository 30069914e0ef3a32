"""The ``softhard`` command line: thin wrappers that parse, call the public API and print.

Errors a user can fix (bad option, bad config, unwritable directory) print one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def _die(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


@app.command()
def reproduce(
    out: Path = typer.Option(Path("results"), "--out", help="output directory"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated tables, e.g. table1,table3"),
    samples: Optional[int] = typer.Option(None, "--samples", help="Monte Carlo sample size per estimate"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed (default: each table's own)"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file: [table1] key = value ..."),
) -> None:
    """Reproduce the paper's §7 diagnostics: tables (CSV/JSON/LaTeX), figures and a manifest."""
    from .reproduce import ReproduceError, reproduce as run

    try:
        run(out, only=only, samples=samples, seed=seed, config=config, echo=typer.echo)
    except ReproduceError as e:
        _die(str(e))


@app.command()
def render(out: Path = typer.Argument(..., help="a directory written by `softhard reproduce`")) -> None:
    """Re-draw every figure from the tables in OUT, without recomputing."""
    from .reproduce import ReproduceError, render_all

    try:
        for p in render_all(out):
            typer.echo(f"wrote {p}")
    except ReproduceError as e:
        _die(str(e))


# --- further commands (landscape, inspect, sweep, ...) are added below this line ---


@app.command()
def landscape(
    out: Path = typer.Option(..., "--out", help="output directory"),
    problem: str = typer.Option("binary", "--problem", help="ready-made problem: binary or voronoi3"),
    samples: int = typer.Option(8192, "--samples", help="sample size of the critical-point search"),
    seed: int = typer.Option(0, "--seed", help="seed"),
) -> None:
    """Teacher–student landscape: critical points, Hessian spectra, recovery and the uniform gap vs τ."""
    from .landscape import run_landscape
    from .report.fig_landscape import figure_landscape
    from .report.io import write_table
    from .teacher import PROBLEMS

    if problem not in PROBLEMS:
        _die(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")
    if samples < 16 or seed < 0:
        _die("--samples must be at least 16 and --seed non-negative")
    table = run_landscape(problem, samples=samples, seed=seed, progress=True)
    try:
        paths = write_table(table, out) + figure_landscape(out)
    except OSError as e:
        _die(f"cannot write to {out}: {e.strerror or e}")
    for p in paths:
        typer.echo(f"wrote {p}")
    kinds = [f"{r['kind']}{'' if r['teacher_equivalent'] else ' (not teacher-equivalent)'} at tau={r['tau']:g}"
             for r in table.rows]
    typer.echo("critical points: " + "; ".join(kinds))
    typer.echo(f"uniform gap exponent {table.meta['gamma_alpha']:.3f} (predicted 1); "
               f"recovery error slope {table.meta['recovery_slope']:.2f} in tau")


@app.command("inspect")
def inspect_cmd(
    model: str = typer.Argument(..., help="a local model directory (config.json [+ weights]), softhard:digits or "
                                          "softhard:tiny-lm"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    tokens: int = typer.Option(2048, "--tokens", help="tokens (images for softhard:digits) to inspect"),
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text file to tokenize (needs a tokenizer)"),
    random_ids: bool = typer.Option(False, "--random-ids", help="uniform random token ids (default without --text)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="MoE layer indices, e.g. 0,2,5-7 (default all)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="allow the model directory's code"),
    router_path: Optional[str] = typer.Option(None, "--router-path", help="module name pattern of the routers"),
    seq_len: int = typer.Option(64, "--seq-len", help="tokens per sequence"),
    batch_size: int = typer.Option(8, "--batch-size", help="sequences per forward call"),
    taus: str = typer.Option("0.25,0.5,1,2", "--taus", help="router temperatures for the sensitivity ('' for none)"),
    tie_widths: str = typer.Option("0.01,0.1", "--tie-widths", help="widths w of the 'within w of a tie' columns"),
    perturb: str = typer.Option("fp16", "--perturb", help="flip-rate perturbation: fp16, noise or none"),
    noise: float = typer.Option(1e-3, "--noise", help="relative size of the Gaussian noise (--perturb noise)"),
    seed: int = typer.Option(0, "--seed", help="seed (random ids, random weights, noise, sampling)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar per batch"),
    harden: bool = typer.Option(False, "--harden", help="also the model's loss as routing is made harder (tau -> 0), "
                                                        "beside its first-order prediction (docs/hardening.md)"),
    harden_taus: str = typer.Option("1,0.5,0.2,0.1,0.05,0.02,0.01,0.005,0.002,0.001", "--harden-taus",
                                    help="router temperatures in (0, 1] of the hardening curve"),
) -> None:
    """Router margins, boundary mass and soft-vs-hard sensitivity of an MoE model, layer by layer."""
    from .inspect import InspectError, inspect_path

    try:
        grid = {name: [float(v) for v in s.split(",") if v.strip()] for name, s in (("taus", taus),
                                                                                  ("tie-widths", tie_widths),
                                                                                  ("harden-taus", harden_taus))}
    except ValueError:
        _die(f"--taus, --tie-widths and --harden-taus take comma-separated numbers; got {taus!r}, {tie_widths!r} "
             f"and {harden_taus!r}")
    try:
        ins, paths = inspect_path(model, out, tokens=tokens, text=text, random_ids=random_ids, layers=layers,
                                  trust_remote_code=trust_remote_code, router_path=router_path, seq_len=seq_len,
                                  batch_size=batch_size, taus=grid["taus"], tie_widths=grid["tie-widths"],
                                  perturbation=None if perturb == "none" else perturb, noise=noise, seed=seed,
                                  progress=progress, harden=harden, harden_taus=grid["harden-taus"])
    except InspectError as e:
        _die(str(e))
    typer.echo(f"{ins.meta['layers']} MoE layers, {ins.meta['tokens']} tokens, hook overhead "
               f"{ins.meta['hook_overhead']:.1%} of forward time -> {out}")
    if harden:
        typer.echo(f"hardening: {ins.meta['hardening']['verdict']}")
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="TOML sweep spec (see docs/sweeps.md)"),
    out: Path = typer.Option(..., "--out", help="output directory (results store)"),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="local worker processes (Dask workers with --dask-local)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running Dask scheduler"),
    dask_local: bool = typer.Option(False, "--dask-local", help="start a Dask LocalCluster for this run"),
    resume: bool = typer.Option(True, "--resume/--fresh", help="skip the stored cells, or recompute every cell"),
) -> None:
    """Run a parameter sweep, one row per cell; rerun to resume and to retry failed cells."""
    from .sweep import load_spec, run_sweep

    try:
        s = run_sweep(load_spec(spec), out, workers=workers, scheduler=scheduler, dask_local=dask_local,
                      fresh=not resume, progress=True)
    except (ValueError, TypeError, ImportError, OSError) as e:
        _die(str(e))
    typer.echo(f"{s.total} cells: {s.done} done, {s.cached} cached, {s.failed} failed ({s.seconds:.1f} s) -> {out}")
    for cell_id, error in list(s.errors.items())[:5]:
        typer.echo(f"  failed {cell_id[:12]}: {error}")
    if s.failed:
        typer.echo("run the same command again to retry the failed cells")
        raise typer.Exit(1)


@app.command("sweep-report")
def sweep_report(
    out: Path = typer.Argument(..., help="a directory written by `softhard sweep`"),
    x: Optional[str] = typer.Option(None, "--x", help="axis on the horizontal axis (default: the first numeric one)"),
    facet: Optional[str] = typer.Option(None, "--facet", help="axis with one panel per value (default: the next one)"),
) -> None:
    """Draw the standard plots of a sweep (lines over one axis, faceted by another) into OUT."""
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
