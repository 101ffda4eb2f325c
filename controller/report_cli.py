"""``kiln report [--base REF] [--out DIR]``: the pull-request comment of a kiln repository
(``kiln.controller.report``): experiments' metric deltas against REF, training/HPO/evaluation
plots and dataset version diffs, as ``DIR/report.md`` plus PNGs it links relatively."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.config import load_config
from kiln.controller.report import DEFAULT_OUT, write


@click.command("report")
@click.option("--base", "base", default=None, metavar="REF",
              help="Compare with the results recorded at this git ref (branch, tag, sha), e.g. origin/main.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True,
              help="Folder for report.md and its PNG plots.")
@click.pass_context
def report(ctx: click.Context, base: str | None, out: str) -> int:
    """Write a markdown report (for a PR comment) with plots, compared with --base."""
    cfg = load_config((ctx.find_root().obj or {}).get("repo") or ".")
    md, pngs = write(cfg, Path(out), base)
    click.echo(f"report -> {md} ({len(pngs)} plot(s))")
    return 0
