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
@click.option("-o", "--output", type=click.Choice(["json", "summary"]), default="json", show_default=True,
              help="json: the whole answer; summary: a few lines (best labels and scores, number of boxes "
                   "and the best ones).")
@click.pass_context
def predict(ctx: click.Context, name: str, file_: str | None, json_: str | None, workspace: str | None,
            token: str | None, output: str) -> None:
    """Send one prediction request to deployment NAME and print the answer (JSON, or -o summary)."""

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
    if output == "summary" and status == 200:
        for line in summarize_answer(answer):
            click.echo(line)
    else:  # an error answer is shown whole: it says what went wrong
        click.echo(json.dumps(answer, indent=1))
    if status != 200:
        hint = "pass --token or set KILN_TOKEN (kiln deployments token create NAME)" if status == 401 else None
        raise KilnError(f"deployment {name} answered HTTP {status}", hint=hint)
    sys.stdout.flush()


def summarize_answer(answer: object, best: int = 3) -> list[str]:
    """A few lines for an EasyMaker-format answer (``bento.runtime``'s responses), one per instance:
    a classification's ``best`` labels with their scores, a detection's number of boxes and the
    ``best`` ones, a mask's size and classes. A detection answer is hundreds of lines of JSON; the
    quickstart prints this instead. Anything else is shown as compact JSON, cut at 200 characters."""
    wrapped = isinstance(answer, dict) and "predictions" in answer
    preds = answer["predictions"] if isinstance(answer, dict) and wrapped else answer
    if not isinstance(preds, list) or not preds:
        return [_short(answer)]
    # {"predictions": [one entry per instance]}; a server from before that contract answered one
    # classified instance unwrapped: [{score, label}, ...]
    instances = [preds] if not wrapped and all(isinstance(p, dict) for p in preds) else preds
    lines = []
    for i, inst in enumerate(instances):
        head = f"[{i}] " if len(instances) > 1 else ""
        if isinstance(inst, dict) and "label" in inst:  # a table row: {label, score?}
            lines.append(head + str(inst["label"]) + (f" ({float(inst['score']):.3f})" if "score" in inst else ""))
        elif isinstance(inst, dict) and "cluster" in inst:  # a row's cluster: {cluster, distance | score}
            lines.append(head + f"cluster {inst['cluster']}" + "".join(f" ({k} {float(inst[k]):.3f})"
                                                                       for k in ("distance", "score") if k in inst))
        elif isinstance(inst, list) and inst and all(isinstance(p, dict) and "label" in p for p in inst):
            lines.append(head + ", ".join(f"{p['label']} ({float(p['score']):.3f})" for p in inst[:best]))
        elif isinstance(inst, list) and all(isinstance(p, dict) and "score" in p for p in inst):
            shown = [f"{k} {float(p['score']):.2f} at ({b['xmin']},{b['ymin']})-({b['xmax']},{b['ymax']})"
                     for p in inst[:best] for k, b in p.items() if k != "score" and isinstance(b, dict)]
            lines.append(head + f"{len(inst)} box{'es' if len(inst) != 1 else ''}"
                         + (f"; best: {', '.join(shown)}" if shown else ""))
        elif isinstance(inst, list) and inst and all(isinstance(r, list) for r in inst):
            classes = sorted({v for r in inst for v in r if isinstance(v, int)})
            lines.append(head + f"mask {len(inst)}x{len(inst[0])}, classes {classes}")
        else:
            lines.append(head + _short(inst))
    return lines


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."
