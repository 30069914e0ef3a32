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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
