"""``kiln policy check|codeowners``: who may change what (kiln.controller.policy)."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.config import load_config


def _config(ctx: click.Context):  # type: ignore[no-untyped-def]
    obj = ctx.obj if isinstance(ctx.obj, dict) else None
    return load_config(obj["repo"] if obj and obj.get("repo") else Path.cwd())


@click.group()
def policy() -> None:
    """Who may change what: workspace roles and access rules on commits (docs/security.md)."""


@policy.command()
@click.argument("rev_range", metavar="BASE..HEAD")
@click.option("--actor", default=None, metavar="EMAIL", help="Judge every commit as this user (the CI actor).")
@click.pass_context
def check(ctx: click.Context, rev_range: str, actor: str | None) -> int:
    """The policy check of `kiln plan --policy`, alone: one line per change not allowed, exit 1."""
    from kiln.controller.policy import check_range

    report = check_range(_config(ctx), rev_range, actor=actor)
    click.echo(report.text())
    return 0 if report.ok else 1


@policy.command()
@click.option(
    "-o", "--out", default=".github/CODEOWNERS", show_default=True, metavar="PATH", help="Where to write it ('-': print it)."
)
@click.pass_context
def codeowners(ctx: click.Context, out: str) -> int:
    """Write a CODEOWNERS file from the Workspaces' members, the objects' owners and access, and
    kiln.yaml's policy.admins, so that the forge asks the same people to review."""
    from kiln.controller.policy import codeowners as make

    cfg = _config(ctx)
    text = make(cfg)
    if out == "-":
        click.echo(text, nl=False)
        return 0
    path = cfg.repo / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {out} ({sum(1 for line in text.splitlines() if line.startswith('/'))} paths)")
    return 0
