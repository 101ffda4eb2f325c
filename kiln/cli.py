"""The ``kiln`` command line: thin verbs over functions that do the work.

Each command parses its arguments, calls one function in the layer below, prints, and returns an
exit code. ``main()`` is the one place where errors become exit codes; a user's mistake prints a
message, never a traceback, unless ``--debug`` is given.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from kiln.config import KilnConfig, load_config
from kiln.controller.steps import StepContext, run_step
from kiln.errors import KilnError, SpecErrors

# `kiln step` (one process per workflow task) imports only kiln.config and kiln.controller.steps.
# The controller core behind the other verbs (project -> plan/apply -> every handler, validate,
# loader; status; runs; render; deployment_k8s; api.schema) is imported inside each command: at
# module level it would add 38-42 ms to every step (measured 2026-12-07, 7 runs: `import
# kiln.controller.project, .status, .runs, .render` after `import kiln.cli`).


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when that command runs, so ``kiln plan`` never pays
    for the runners' or the ML layers' imports."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            mod = __import__(module, fromlist=[attr])
            return getattr(mod, attr)
        return super().get_command(ctx, name)


class KilnGroup(_LazyGroup):
    # command name -> "module:attribute" of a click.Command
    lazy = {
        "algorithms": "kiln.algorithms.cli:algorithms",
        "run-workflow": "kiln.runners.cli:run_workflow",
        "resume": "kiln.runners.cli:resume",
        "data": "kiln.controller.data_cli:data",
        "labelstudio": "kiln.labeling.cli:labelstudio",
        "models": "kiln.bento.cli:models",
        "deployments": "kiln.bento.cli:deployments",
        "infer": "kiln.controller.infer_cli:infer",
        "predict": "kiln.controller.deployment_cli:predict",
        "report": "kiln.controller.report_cli:report",
        "controller": "kiln.controller.daemon:controller",
        "policy": "kiln.controller.policy_cli:policy",
        "ui": "kiln.controller.console.cli:ui",
        "tensorboard": "kiln.controller.console.cli:tensorboard",
    }


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="KILN_DEBUG", help="Show tracebacks and debug logs.")
@click.option("-C", "--repo", "repo", type=click.Path(file_okay=False), default=None, envvar="KILN_REPO",
              help="The GitOps repository (default: the current directory).")
@click.version_option(package_name="kiln")
@click.pass_context
def cli(ctx: click.Context, debug: bool, repo: str | None) -> None:
    """kiln: declarative ML. Edit YAML specs, `kiln plan`, `kiln apply`."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if repo:  # like `git -C`: paths in messages and in the state are relative to the repository
        try:
            os.chdir(repo)
        except OSError as exc:
            raise KilnError(f"cannot use repository {repo}: {exc.strerror}") from None
    ctx.obj["repo"] = os.getcwd()
    if debug:
        os.environ["KILN_DEBUG"] = "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _config(ctx: click.Context) -> KilnConfig:
    return load_config(ctx.obj["repo"])


# -w on every verb that names objects: a shorthand for KIND/WORKSPACE/NAME (kiln.api.refs)
workspace_option = click.option("-w", "--workspace", default=None, metavar="WORKSPACE",
                                help="The objects' workspace (instead of writing KIND/WORKSPACE/NAME).")


@cli.command()
@click.argument("path", required=False, type=click.Path())
@click.pass_context
def validate(ctx: click.Context, path: str | None) -> int:
    """Check every spec under PATH (default: the specs folder): types, ranges, references,
    roles and quotas. Prints one line per problem (file:line:col  path  message)."""
    from kiln.controller.project import load_valid

    specs = load_valid(_config(ctx), path)
    kinds: dict[str, int] = {}
    for s in specs.specs:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
    click.echo(f"{len(specs.specs)} specs valid in {specs.files} files ({detail})")
    return 0


@cli.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text")
@click.option("--prune", is_flag=True, help="Plan deletions for specs that were removed.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0: no changes, 2: changes, 1: error.")
@click.option("-v", "--verbose", is_flag=True, help="List unchanged objects too.")
@click.option("--target", "targets", multiple=True, metavar="KIND/[WORKSPACE/]NAME",
              help="Only this object and what it depends on (workspace, datasets it reads); repeatable.")
@click.option("--policy", "policy_range", default=None, metavar="BASE..HEAD",
              help="Also check who may change what: each commit's author against the Workspaces' roles "
              "(docs/security.md); a change not allowed is a line with its file:line, exit 1.")
@click.option("--actor", default=None, metavar="EMAIL",
              help="With --policy: judge every commit as this user (the CI actor) instead of its author.")
@workspace_option
@click.pass_context
def plan(ctx: click.Context, path: str | None, fmt: str, prune: bool, detailed_exitcode: bool,
         verbose: bool, targets: tuple[str, ...], policy_range: str | None, actor: str | None,
         workspace: str | None) -> int:
    """Show what `kiln apply` would create, update or delete (the pull-request check)."""
    from kiln.controller.project import plan as make

    cfg = _config(ctx)
    if actor and not policy_range:
        raise click.UsageError("--actor needs --policy BASE..HEAD")
    p = make(cfg, path, prune=prune, targets=targets, workspace=workspace)
    report = None
    if policy_range:
        from kiln.controller.policy import check_range

        report = check_range(cfg, policy_range, actor=actor)
    if fmt == "json":
        data = json.loads(p.to_json())
        if report is not None:
            data["policy"] = {"base": report.base, "head": report.head, "commits": len(report.commits),
                              "violations": [str(v) for v in report.violations]}
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(p.to_markdown() if fmt == "markdown" else p.to_text(verbose))
        if report is not None:
            lines = report.text().splitlines()
            click.echo("\n".join(["### kiln policy", "", *[f"- `{x}`" for x in lines]]) + "\n"
                       if fmt == "markdown" else "\n".join(lines))
    if report is not None and not report.ok:
        return 1
    return 2 if detailed_exitcode and p.has_changes else 0


@cli.command()
@click.argument("path", required=False, type=click.Path())
@click.option("--prune", is_flag=True, help="Delete what removed specs created (per-object opt-out: "
              "annotation kiln.dev/prune: disabled).")
@click.option("--wait-lock", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another kiln process applying the same object (or one it "
              "depends on); without it such an object is reported busy (exit 3).")
@click.option("--target", "targets", multiple=True, metavar="KIND/[WORKSPACE/]NAME",
              help="Only this object and what it depends on (workspace, datasets it reads); repeatable.")
@click.option("--summary/--no-summary", default=True, show_default=True,
              help="After an apply that did something: what runs where (deployment URLs with a curl, Label "
              "Studio) and commands to try next.")
@workspace_option
@click.pass_context
def apply(ctx: click.Context, path: str | None, prune: bool, wait_lock: float, targets: tuple[str, ...],
          summary: bool, workspace: str | None) -> int:
    """Make it so: reconcile every spec. Safe to re-run; unchanged objects are skipped.

    Exit 0: all reconciled; 1: something failed; 2: nothing failed but some kinds have no
    handler in this kiln version yet (they are listed, never reported as applied).

    With --target (repeatable) only the named objects and their dependencies are applied, e.g.
    the experiments a pull request changed; nothing else is planned, noted or pruned (with
    --prune, a target whose spec was removed is deleted)."""
    from kiln.controller.project import apply as run

    # on a terminal, progress is one line rewritten in place; piped (CI), plain lines
    write = (lambda text: click.echo(text, nl=False)) if sys.stdout.isatty() else None
    done = run(_config(ctx), path, prune=prune, echo=click.echo, wait_lock=wait_lock,
               command=" ".join(["kiln apply", *sys.argv[2:]]), targets=targets, workspace=workspace, write=write)
    click.echo(done.result.summary())
    if summary and done.result.actions:  # what runs where now, and what to try (an apply that changed nothing stays short)
        from kiln.controller.summary import next_steps

        for line in next_steps(_config(ctx)):
            click.echo(line)
    return done.result.exit_code


# who is looking (kiln.controller.policy.Viewer): without it, every object is shown
as_option = click.option("--as", "as_user", default=None, envvar="KILN_USER", metavar="USER",
                         help="Show only what USER (an e-mail) may see: their workspaces and the datasets "
                         "shared with them (platform admins: everything). Env: KILN_USER.")


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@as_option
@click.pass_context
def status(ctx: click.Context, output: str, as_user: str | None) -> int:
    """Every object: kind, name, sync, health, last change."""
    from kiln.controller.status import controller_lines, status_rows, status_table

    rows = status_rows(_config(ctx), as_user)
    click.echo(json.dumps(rows, indent=2) if output == "json" else status_table(rows))
    if output == "table":
        for line in controller_lines(_config(ctx)):  # written by `kiln controller`
            click.echo(line)
    return 0


@cli.command()
@click.argument("kind")
@click.argument("name", required=False, metavar="[[WORKSPACE/]NAME]")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("-l", "--selector", "selectors", multiple=True, metavar="KEY=VALUE",
              help="Only objects whose metadata.labels match (key=value, key!=value, key; a=b,c=d: all).")
@click.option("--sort-by", default=None, metavar="FIELD",
              help="name, workspace, owner, created, lastChange, status, health, sync, ready or generation.")
@workspace_option
@as_option
@click.pass_context
def get(ctx: click.Context, kind: str, name: str | None, output: str, selectors: tuple[str, ...],
        sort_by: str | None, workspace: str | None, as_user: str | None) -> int:
    """Recorded state of objects of KIND (of one workspace with -w), or of one object."""
    from kiln.controller.status import get_records, record_json, row, status_table

    cfg = _config(ctx)
    recs = get_records(cfg, kind, name, workspace, selectors, sort_by, as_user)
    if output == "table":
        click.echo(status_table([row(r) for r in recs], owners=True)
                   if recs or not selectors else "No objects match the selector.")
    else:
        data = record_json(cfg, recs)
        if name is not None:
            data = data[0]  # type: ignore[assignment]
        if output == "json":
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            import yaml

            click.echo(yaml.safe_dump(data, sort_keys=False))
    return 0


@cli.command()
@click.option("-w", "--workspace", default=None, metavar="WORKSPACE",
              help="Only this workspace's objects (and the Workspace itself).")
@click.option("--since", default=None, metavar="WHEN",
              help="Only what started since: a duration (30m, 2h, 3d, 1w) or an ISO date or time (UTC).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def events(ctx: click.Context, workspace: str | None, since: str | None, output: str) -> int:
    """What changed, newest first: each create, update and delete that apply made, when, with
    what result, from which git commit and by whom (the state store's history; each object
    keeps its newest historyLimit entries)."""
    from kiln.controller.events import history, history_table, parse_since

    rows = history(_config(ctx), workspace, parse_since(since) if since else None)
    click.echo(json.dumps(rows, indent=2) if output == "json" else history_table(rows))
    return 0


@cli.command()
@click.argument("ref", metavar="KIND/[WORKSPACE/]NAME")
@workspace_option
@click.pass_context
def describe(ctx: click.Context, ref: str, workspace: str | None) -> int:
    """Conditions, history and inventory of one object."""
    from kiln.controller.status import describe as text

    click.echo(text(_config(ctx), ref, workspace))
    return 0


@cli.command()
@click.argument("ref", metavar="KIND/[WORKSPACE/]NAME")
@click.option("--what", type=click.Choice(["all", "spec", "workflow", "k8s"]), default="all",
              help="The composed spec (templates applied), its Argo Workflow, or both; k8s: a "
                   "Deployment's Kubernetes manifests (Deployment, Service, HPA).")
@click.option("--path", type=click.Path(), default=None, help="Specs folder (default: from kiln.yaml).")
@workspace_option
@click.pass_context
def render(ctx: click.Context, ref: str, what: str, path: str | None, workspace: str | None) -> int:
    """Print KIND/NAME as composed from its templates and the workflow it runs as."""
    import yaml

    from kiln.controller.project import load_valid
    from kiln.controller.render import workspaces_of
    from kiln.controller.status import find_spec

    cfg = _config(ctx)
    specs = load_valid(cfg, path)
    spec = find_spec(cfg, ref, path, workspace, specs=specs)
    # the workspace as apply resolves it: its presets and quotas (one resolution, render.workspaces_of)
    ws = workspaces_of(specs.specs).get(spec.workspace)
    docs = []
    if what in ("all", "spec"):
        docs.append(spec.doc)
    if what in ("all", "workflow"):
        from kiln.controller.render import render_workflow

        docs.append(render_workflow(cfg, spec, workspace=ws))
    if what == "k8s":
        if spec.kind != "Deployment":
            raise KilnError(f"--what k8s renders Deployments, not {spec.kind}", hint="use --what spec|workflow")
        from kiln._util.fs import read_json
        from kiln.controller.deployment_k8s import render_k8s
        from kiln.controller.deployment_steps import deployment_home

        # a rollout's stable track runs the version served here, when there is one
        served = read_json(deployment_home(cfg, spec.workspace, spec.name) / "server.json") or {}
        docs += render_k8s(cfg, spec, workspace=ws, stable_version=served.get("version"))
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
    return 0


_STEP_RAN = False  # set by `kiln step`: entry() then ends the process with _exit_now


@cli.command(hidden=False)
@click.argument("name")
@click.option("--object", "ref", required=True, help="Kind/workspace/name of the object.")
@click.option("--spec", "spec_json", required=True, help="The composed spec as JSON.")
@click.option("--spec-hash", required=True)
@click.option("--arg", "args", multiple=True, help="KEY=VALUE step argument.")
@click.pass_context
def step(ctx: click.Context, name: str, ref: str, spec_json: str, spec_hash: str, args: tuple[str, ...]) -> int:
    """Run one workflow step (what each task of a rendered workflow runs)."""
    global _STEP_RAN
    _STEP_RAN = True
    try:
        spec = json.loads(spec_json)
    except json.JSONDecodeError as exc:
        raise KilnError(f"--spec is not JSON: {exc}") from None
    parsed = dict(a.split("=", 1) for a in args if "=" in a)
    out = run_step(name, StepContext(_config(ctx), ref, spec, spec_hash, parsed))
    click.echo(json.dumps(out))
    return 0


@cli.command()
@click.argument("name", metavar="KIND/[WORKSPACE/]NAME|WORKFLOW")
@click.option("--node", default=None, help="Only this task (name or node id).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run finishes.")
@workspace_option
@click.pass_context
def logs(ctx: click.Context, name: str, node: str | None, follow: bool, workspace: str | None) -> int:
    """Logs of an object's workflow run (or of a run by name), on the configured runner."""
    from kiln.controller.runs import logs as lines

    for line in lines(_config(ctx), name, node, follow, workspace):
        click.echo(line)
    return 0


@cli.command()
@click.argument("name", metavar="KIND/[WORKSPACE/]NAME|WORKFLOW")
@click.option("-m", "--message", default="stopped by user", help="Recorded as the run's message.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for it to end.")
@click.option("--job", default=None, metavar="NODE",
              help="Stop only this job (a node as `kiln queue` lists it, e.g. one trial): the rest go on.")
@workspace_option
@click.pass_context
def stop(ctx: click.Context, name: str, message: str, timeout: float, job: str | None, workspace: str | None) -> int:
    """Cancel a running workflow: its steps are killed and it ends Failed with MESSAGE. With
    --job, only that job: the next one waiting for its resources starts."""
    from kiln.controller.runs import stop as do_stop

    click.echo(do_stop(_config(ctx), name, message, timeout, workspace, job=job))
    return 0


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False), default=".")
def init(directory: str) -> int:
    """Scaffold a kiln repository in DIRECTORY (default: here): a .gitignore entry that keeps
    kiln's private folder .kiln/ out of git, and a specs/ folder. Never overwrites a file."""
    from kiln.controller.scaffold import init as scaffold

    for line in scaffold(Path(directory)):
        click.echo(line)
    return 0


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what would go and the bytes; remove nothing.")
@click.option("--wait-lock", type=float, default=0.0, show_default=True,
              help="Seconds to wait for a running kiln apply to finish.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, wait_lock: float) -> int:
    """Remove experiment runs beyond gc.keepRuns (kiln.yaml), staging folders and workflow
    folders that nothing refers to; share model files with the registry (one copy on disk).
    Runs a record or a registered model version refers to, and objects still running, stay."""
    from kiln.controller.gc import gc as collect

    cfg = _config(ctx)
    for line in collect(cfg, dry_run=dry_run, wait_lock=wait_lock).lines(cfg.repo):
        click.echo(line)
    return 0


@cli.command()
@click.option("-w", "--workspace", default=None, metavar="WORKSPACE", help="Only this workspace's jobs.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def queue(ctx: click.Context, workspace: str | None, output: str) -> int:
    """Jobs running and waiting for resources on this machine (every kiln process's), with their
    workspace, resources, position and why they wait."""
    from kiln.controller.compute import queue_rows, queue_table

    rows = queue_rows(_config(ctx), workspace)
    click.echo(json.dumps(rows, indent=2) if output == "json" else queue_table(rows))
    return 0


@cli.command()
@click.option("-w", "--workspace", default=None, metavar="WORKSPACE", help="Only this workspace's usage.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only pods that started since: a duration (30m, 2h, 3d, 1w) or an ISO date or time (UTC).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def usage(ctx: click.Context, workspace: str | None, since: str | None, output: str) -> int:
    """CPU-, GPU- and memory-hours per workspace and object (experiment, deployment, dataset...),
    from the run records: each step's run time times the resources it asked for."""
    from kiln.controller.compute import usage_rows, usage_table
    from kiln.controller.events import parse_since

    rows = usage_rows(_config(ctx), workspace, parse_since(since) if since else None)
    click.echo(json.dumps(rows, indent=2) if output == "json" else usage_table(rows))
    return 0


@cli.command()
@click.option("--out", "out", type=click.Path(file_okay=False), default="schemas", show_default=True)
@click.pass_context
def schema(ctx: click.Context, out: str) -> int:
    """Write a JSON Schema per kind, for editors (`# yaml-language-server: $schema=...`)."""
    from kiln.api.schema import write_schemas

    for p in write_schemas(Path(out)):
        click.echo(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("KILN_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="kiln", standalone_mode=False)
    except SpecErrors as exc:
        if debug:
            raise
        click.echo(str(exc), err=True)  # already one located line per problem
        return exc.exit_code
    except KilnError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown: freeing every module of a process that loaded
    scikit-learn, pandas or torch takes 0.2-0.5 s, on the critical path of every workflow step.
    What an exit must do still happens: non-daemon threads are joined, atexit handlers (logging,
    weakref finalizers, multiprocessing) run, and the standard streams are flushed. Only object
    destructors are skipped: kiln's own code closes what it writes."""
    # what the interpreter runs first at exit: threading's own exit hooks (they end idle
    # ThreadPoolExecutor workers, which a plain join would wait on forever), then the joins
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:  # pragma: no cover - every CPython has it; keep the joins on anything else
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
    atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def entry() -> NoReturn:
    """The ``kiln`` program (console script and ``python -m kiln.cli``); ``main`` is for callers
    in a process that goes on (tests, embedding)."""
    code = main()
    if _STEP_RAN:  # workflow steps run by the thousand: their teardown is pure latency
        _exit_now(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
