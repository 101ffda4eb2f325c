"""``kiln ui`` (the read-only console), ``kiln ui token`` and ``kiln tensorboard EXPERIMENT``."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from kiln.config import KilnConfig, load_config
from kiln.errors import KilnError


def _config(ctx: click.Context) -> KilnConfig:
    return load_config((ctx.find_root().obj or {}).get("repo") or ".")


def _need(module: str, extra: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise KilnError(
            f"{what} needs the Python package {module!r}, which is not installed", hint=f"pip install 'kiln[{extra}]'"
        )


# who is looking (kiln.api.access.Viewer), as `kiln get --as`: without it, everything
def _as_option(help: str) -> Callable[[Any], Any]:
    return click.option("--as", "as_user", default=None, envvar="KILN_USER", metavar="USER", help=help)


@click.group("ui", invoke_without_command=True)
@click.option("--port", default=8090, show_default=True, help="Port to listen on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs a token ($KILN_UI_TOKEN or `kiln ui token`).",
)
@_as_option(
    "Show only what USER (an e-mail) may see, as `kiln get --as` does; a token made with "
    "`kiln ui token --user` shows its own user's view instead. Env: KILN_USER."
)
@click.pass_context
def ui(ctx: click.Context, port: int, host: str, as_user: str | None) -> int:
    """Serve the read-only web console: objects, datasets, experiments (live curves), models,
    labeling and deployments."""
    if ctx.invoked_subcommand is not None:
        return 0
    for module in ("starlette", "uvicorn"):
        _need(module, "serve", "kiln ui")
    from kiln.controller.console.app import serve

    config = _config(ctx)
    user = _user(config, as_user, "kiln ui --as") if as_user else None  # KILN_USER= (empty): no one
    serve(config, host, port, lambda line: click.echo(line, err=True), user=user)
    return 0


@ui.command("token")
@click.option("--revoke", "revoke", default=None, metavar="ID", help="Revoke the console token with this id.")
@click.option(
    "--user",
    default=None,
    metavar="EMAIL",
    help="Bind the token to this user: its holder sees that user's workspaces and the datasets shared "
    "with them (platform admins: everything). Without it the token is an admin's view: everything.",
)
@click.pass_context
def token(ctx: click.Context, revoke: str | None, user: str | None) -> int:
    """Create a token for `kiln ui --host ...` (printed once, stored hashed), or revoke one."""
    from kiln.bento.auth import TokenStore, default_token_file
    from kiln.controller.console.app import CONSOLE_KEY

    config = _config(ctx)
    store = TokenStore(default_token_file(config.repo))
    if revoke:
        store.revoke(CONSOLE_KEY, revoke)
        click.echo(f"revoked console token {revoke}")
        return 0
    bound = _user(config, user, "kiln ui token --user") if user is not None else None
    click.echo(store.create(CONSOLE_KEY, user=bound))
    return 0


def _user(config: KilnConfig, given: str, option: str) -> str:
    """The e-mail a console is bound to, as the Viewer compares it; a note on stderr when it is in
    no applied Workspace and no platform admin (it sees nothing until a Workspace names it)."""
    from kiln.api.access import Viewer, lower
    from kiln.controller.console import read

    user = lower(given)
    if not user:
        raise KilnError(f"{option} needs a user's e-mail", hint=f"e.g. {option} ada@example.com")
    view = Viewer.of(config, user, read.records(config, "Workspace"))
    if not view.admin and not view.roles:
        click.echo(
            f"note: {user} is a member of no applied Workspace and not a platform admin (kiln.yaml policy.admins): "
            "the console shows them nothing until a Workspace names them",
            err=True,
        )
    return user


@click.command("tensorboard")
@click.argument("experiment", metavar="[Experiment/][WORKSPACE/]NAME")
@click.option("--port", default=6006, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("-w", "--workspace", default=None, metavar="WORKSPACE")
@_as_option("Only an experiment USER may see (as `kiln get --as`). Env: KILN_USER.")
@click.pass_context
def tensorboard(ctx: click.Context, experiment: str, port: int, host: str, workspace: str | None, as_user: str | None) -> int:
    """Serve TensorBoard on the event files of an experiment's trials (one run per trial)."""
    from kiln.controller.console import read
    from kiln.controller.project import find_key

    config = _config(ctx)
    ref = experiment if experiment.split("/")[0] == "Experiment" else f"Experiment/{experiment}"
    recs = read.records(config, "Experiment", read.viewer(config, as_user))  # one not theirs: "has not been applied"
    key = find_key(ref, [r.key for r in recs], workspace=workspace, absent="{} has not been applied")
    rec = next(r for r in recs if r.key == key)
    runs = read.tensorboard_runs(config, rec)
    if not runs:
        raise KilnError(
            f"{key}: no TensorBoard event files in its run folder",
            hint="its trials write them while they train (kiln.report); apply it first",
        )
    _need("tensorboard", "ml", "kiln tensorboard")
    click.echo(f"TensorBoard on http://{host}:{port}/ for {key}: {len(runs)} trial(s)", err=True)
    spec = ",".join(f"{tid}:{path}" for tid, path in runs.items())
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec, "--host", host, "--port", str(port)]
    # TensorBoard replaces this process: Ctrl-C and a service manager's signals reach it, no child is left
    os.execve(sys.executable, cmd, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return 0  # not reached
