"""``kiln predict DEPLOYMENT --file x.png | --json '{...}'``: one request to a running deployment
on the local runtime, in the EasyMaker format. The token is ``--token`` or ``$KILN_TOKEN`` (never
logged); the URL is the one apply recorded (``.kiln/deployments/<ws>/<name>/server.json``)."""

from __future__ import annotations

import base64
import json
import sys

import click

from kiln.api.refs import find_key
from kiln.config import load_config
from kiln.controller.deployment_steps import _read_json, post
from kiln.errors import ConfigError, KilnError


@click.command()
@click.argument("name", metavar="[WORKSPACE/]NAME")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="An image to send.")
@click.option("--json", "json_", help="One instance (a JSON object; a table row may also be a list in feature order) or a full request {'instances': [...]}.")
@click.option("-w", "--workspace", default=None,
              help="The deployment's workspace (default: the default workspace's, or the only one).")
@click.option("--token", envvar="KILN_TOKEN", default=None, help="API token (default: $KILN_TOKEN).")
@click.pass_context
def predict(ctx: click.Context, name: str, file_: str | None, json_: str | None, workspace: str | None,
            token: str | None) -> None:
    """Send one prediction request to deployment NAME and print the answer (JSON)."""

    if bool(file_) == bool(json_):
        raise ConfigError("give exactly one of --file or --json")
    root = load_config(ctx.obj["repo"] if ctx.obj else ".").kiln_dir() / "deployments"
    running = {f"Deployment/{p.parent.parent.name}/{p.parent.name}": p for p in root.glob("*/*/server.json")}
    key = find_key(name, running, kind="Deployment", workspace=workspace,
                   absent="{} is not running here (kiln apply it; kiln status shows deployments)")
    info = _read_json(running[key]) or {}
    if file_:
        with open(file_, "rb") as f:
            body: object = {"instances": [{"data": base64.b64encode(f.read()).decode()}]}
    else:
        try:
            inst = json.loads(json_ or "")
        except ValueError as exc:
            raise ConfigError(f"--json is not JSON: {exc}") from None
        body = inst if isinstance(inst, dict) and "instances" in inst else {"instances": [inst]}
    status, answer = post(info["url"], body, token)
    click.echo(json.dumps(answer, indent=1))
    if status != 200:
        hint = "pass --token or set KILN_TOKEN (kiln deployments token create NAME)" if status == 401 else None
        raise KilnError(f"deployment {name} answered HTTP {status}", hint=hint)
    sys.stdout.flush()
