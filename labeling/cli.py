"""``kiln labelstudio start|stop|status|token``: the local Label Studio server (see ``server``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kiln.labeling import server


def _state_dir(ctx: click.Context) -> Path:
    repo = (ctx.obj or {}).get("repo") or os.getcwd()
    return Path(repo) / ".kiln"


@click.group()
def labelstudio() -> None:
    """The local Label Studio server (own venv, loopback only)."""


@labelstudio.command()
@click.option("--port", type=int, default=None, help="Port (default: a free one).")
@click.option("--document-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder local-files storages may serve: exported items only, never the repository "
                   "(default: .kiln/labelstudio/files, where the labeling steps export them).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Server data dir (default: .kiln/labelstudio/data).")
@click.pass_context
def start(ctx: click.Context, port: int | None, document_root: str | None, data_dir: str | None) -> None:
    """Install Label Studio if missing, start it and wait until it is healthy."""

    if not server.is_installed():
        click.echo(f"installing label-studio {server.LS_VERSION} into {server.venv_dir()} (a few minutes) ...")
    info = server.start(_state_dir(ctx), port=port,
                        document_root=Path(document_root) if document_root else None,
                        data_dir=Path(data_dir) if data_dir else None, echo=click.echo)
    click.echo(f"Label Studio {info.version} at {info.url} (pid {info.pid}); admin {info.admin}; "
               f"token: `kiln labelstudio token` or ${info.token_env}")


@labelstudio.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the server started by `kiln labelstudio start`."""

    info = server.stop(_state_dir(ctx))
    click.echo(f"stopped Label Studio at {info.url} (pid {info.pid})" if info else "Label Studio is not running")


@labelstudio.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def status(ctx: click.Context, output: str) -> None:
    """Whether the server is running and where."""

    st = server.status(_state_dir(ctx))
    if output == "json":
        click.echo(json.dumps(st, indent=2))
    elif not st.get("process"):
        click.echo("Label Studio is not running")
    else:
        state = "up" if st["running"] else "not answering /health"
        click.echo(f"Label Studio {st['version']} at {st['url']} (pid {st['pid']}): {state}; log {st['log']}")
    ctx.exit(0 if st.get("running") else 1)


@labelstudio.command()
@click.pass_context
def token(ctx: click.Context) -> None:
    """Print the admin API token (for `export KILN_LABELSTUDIO_TOKEN=...` or the UI)."""

    click.echo(server.read_token(_state_dir(ctx)))
