"""``kiln run-workflow``: any Argo Workflow manifest through the local runner, from the command line.

(``kiln logs`` and ``kiln stop`` take objects or runs of either runner: see ``kiln.controller.runs``.)

Runs live under ``<repo>/.kiln/runs`` (the repo is ``kiln -C``, else the current directory).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click
import yaml

from kiln.errors import WorkflowError
from kiln.runners.base import runner_workdir
from kiln.runners.local import LocalRunner


def _repo(ctx: click.Context) -> Path:
    obj = ctx.obj if isinstance(ctx.obj, dict) else None
    return Path(obj["repo"]) if obj and obj.get("repo") else Path.cwd()


def _load_workflow(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise WorkflowError(f"{path}: {exc.strerror}") from exc
    wfs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Workflow"]
    if not wfs:
        kinds = sorted({str(d.get("kind")) for d in docs if isinstance(d, dict)})
        raise WorkflowError(f"{path}: no Workflow document (found kinds: {', '.join(kinds) or 'none'})")
    return wfs[0]


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name:
            raise WorkflowError(f"-p {v!r} is not NAME=VALUE")
        out[name] = value
    return out


class _Progress:
    """Prints one line per node phase change, from the runner's on_update snapshots."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, wf: dict[str, Any]) -> None:
        nodes = wf.get("status", {}).get("nodes", {})
        for nid, n in sorted(nodes.items(), key=lambda kv: (kv[1].get("startedAt") or "", kv[1]["name"])):
            if n.get("type") in ("StepGroup", "TaskGroup"):
                continue
            if self.seen.get(nid) != n["phase"]:
                self.seen[nid] = n["phase"]
                msg = f"  {n['message']}" if n.get("message") and n["phase"] != "Running" else ""
                click.echo(f"{time.strftime('%H:%M:%S')} {n['phase']:<9} {n['name']}{msg}")


@click.command("run-workflow")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--parameter", "params", multiple=True, metavar="NAME=VALUE", help="Override a workflow parameter.")
@click.option("-o", "--output", "output", type=click.Choice(["text", "json"]), default="text")
@click.option("--concurrency", type=int, default=None, help="Steps run at once on this machine (default: CPU count).")
@click.option("--templates", "templates", type=click.Path(file_okay=False), default=None,
              help="Folder of WorkflowTemplates that templateRef/workflowTemplateRef name (default: $KILN_WORKFLOW_TEMPLATES).")
@click.pass_context
def run_workflow(ctx: click.Context, file: str, params: tuple[str, ...], output: str, concurrency: int | None,
                 templates: str | None) -> None:
    """Run an Argo Workflow manifest on this machine with kiln's local runner."""
    manifest = _load_workflow(file)
    runner = LocalRunner(runner_workdir(_repo(ctx)), max_concurrency=concurrency,
                         templates_dir=Path(templates) if templates else None)
    progress = _Progress() if output == "text" else None
    old = signal.getsignal(signal.SIGTERM)
    if threading_main():
        # `kill PID` of the CLI cancels like Ctrl-C does
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        wf = runner.submit(manifest, parameters=_parse_params(params), on_update=progress)
    finally:
        if threading_main():
            signal.signal(signal.SIGTERM, old)
    st = wf.get("status", {})
    if output == "json":
        click.echo(json.dumps(wf, indent=2))
    else:
        if progress is not None:
            progress(wf)
        line = f"{wf['metadata']['name']}: {st.get('phase')}"
        if st.get("message"):
            line += f" ({st['message']})"
        click.echo(line)
        for p in (st.get("outputs") or {}).get("parameters") or []:
            click.echo(f"  output {p['name']} = {p.get('value', '')}")
    ctx.exit(0 if st.get("phase") == "Succeeded" else 1)


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@click.command("resume")
@click.argument("workflow")
@click.pass_context
def resume(ctx: click.Context, workflow: str) -> None:
    """Resume the suspended steps of a local run (its suspend templates waiting now)."""
    LocalRunner(runner_workdir(_repo(ctx))).resume(workflow)
    click.echo(f"{workflow}: resumed")
