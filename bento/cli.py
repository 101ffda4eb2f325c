"""``kiln models list|describe|history|export`` and ``kiln deployments token create|list|revoke``.

Both groups are registered lazily in kiln.cli (``KilnGroup.lazy``); BentoML is imported only by
the commands that touch the model store. The repository is ``kiln -C``, else the current dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kiln.api.refs import parse_ref
from kiln.bento.auth import TokenStore, default_token_file, deployment_key
from kiln.bento.registry import Registry, default_home, who
from kiln.config import load_config
from kiln.errors import NotFound
from kiln.state.snapshot import recorded_objects


def _repo(ctx: click.Context) -> Path:
    obj = ctx.obj if isinstance(ctx.obj, dict) else None
    return Path(obj["repo"]) if obj and obj.get("repo") else Path.cwd()


def _registry(ctx: click.Context):
    return Registry(default_home(_repo(ctx)))


@click.group()
def models() -> None:
    """Registered models (BentoML's store under .kiln/bentoml): versions, aliases, metrics."""


@models.command("list")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--as", "as_user", default=None, envvar="KILN_USER", metavar="USER",
              help="Only the models of experiments USER may see (platform admins: all). Env: KILN_USER.")
@click.pass_context
def list_models(ctx: click.Context, name: str | None, output: str, as_user: str | None) -> None:
    """Every registered model version (or NAME's)."""
    rows = _registry(ctx).list(name)
    if as_user:
        rows = _visible_models(ctx, rows, as_user)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered")
        return
    click.echo(f"{'MODEL':24} {'VERSION':>7}  {'FRAMEWORK':9} {'ALIASES':16} {'EXPERIMENT':16} CREATED")
    for r in rows:
        click.echo(f"{r['name']:24} {r['version']:>7}  {r['labels'].get('framework', ''):9} "
                   f"{','.join(r['aliases']):16} {r['labels'].get('experiment', ''):16} {r['created'][:19]}")


def _visible_models(ctx: click.Context, rows: list, user: str) -> list:
    """The versions registered by an Experiment ``user`` may see (kiln.controller.policy.Viewer);
    a model registered by hand (no experiment label) only for platform admins."""
    from kiln.api.access import Viewer
    from kiln.api.experiment import experiment_label

    config = load_config(_repo(ctx))
    records = recorded_objects(config.state_url(), config.repo)
    view = Viewer.of(config, user, records)
    if view.admin:
        return rows
    seen = {experiment_label(r.workspace, r.name) for r in view.filter(records) if r.kind == "Experiment"}
    return [r for r in rows if r["labels"].get("experiment") in seen]


@models.command()
@click.argument("name")
@click.argument("version", required=False, type=int)
@click.option("--alias", help="Describe the version this alias points to.")
@click.pass_context
def describe(ctx: click.Context, name: str, version: int | None, alias: str | None) -> None:
    """One version (default: the latest) as JSON: labels, metrics, params, aliases, files."""
    reg = _registry(ctx)
    v = reg.resolve(name, version, alias)
    click.echo(json.dumps(reg.describe(name, v), indent=2))


@models.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def history(ctx: click.Context, name: str, output: str) -> None:
    """Every alias move of model NAME, oldest first: when, which alias, from and to which version,
    the commit the specs were applied from, and why (the register.aliases rule's reason)."""
    reg = _registry(ctx)
    if name not in reg.names():
        raise NotFound(f"model {name} is not registered", hint=f"registered: {', '.join(reg.names()) or 'none'}")
    rows = reg.history(name)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no alias of {name} has moved yet")
        return
    click.echo(f"{'TIME':20} {'ALIAS':14} {'MOVE':12} {'COMMIT':14} WHY")
    for r in rows:
        was = f"v{r['previous']}" if r.get("previous") else "-"
        move = f"{was} -> v{r['version']}" if r["action"] == "set_alias" else f"v{r['version']} -> -"
        why = r.get("reason") or ("removed" if r["action"] == "delete_alias" else f"set by {r.get('who', '?')}")
        click.echo(f"{r['time'][:19]:20} {r.get('alias', ''):14} {move:12} {(r.get('commit') or '-')[:12]:14} {why}")


@models.command()
@click.argument("name")
@click.argument("version", type=int)
@click.argument("path", type=click.Path())
@click.pass_context
def export(ctx: click.Context, name: str, version: int, path: str) -> None:
    """Write a version as a BentoML model archive (import with `bentoml models import`)."""
    out = _registry(ctx).export(name, version, path)
    click.echo(f"exported {name} v{version} to {out}")


@click.group()
def deployments() -> None:
    """Deployments' API tokens (serving itself is `kiln apply` of Deployment specs)."""


@deployments.group()
def token() -> None:
    """API tokens: sent as 'Authorization: Bearer <token>' or 'X-API-Key: <token>'."""


def _tokens(ctx: click.Context):
    return TokenStore(default_token_file(_repo(ctx)))


def _key(name: str, workspace: str | None) -> str:
    """``workspace/name`` of the tokens' deployment: NAME, WORKSPACE/NAME, Deployment/WORKSPACE/NAME
    or ``-w`` (``kiln.api.refs``). A bare name is the default workspace's deployment, never looked
    up in the others: a token's deployment is an identity (docs/security.md, finding 6)."""
    ref = parse_ref(name, kind="Deployment", workspace=workspace)
    return deployment_key(ref.name, ref.workspace)


def _applied_deployment(ctx: click.Context, name: str, workspace: str | None) -> str:
    """``workspace/name`` of an applied Deployment that NAME names (``_key``); a clear error for
    one that does not exist, so that no token is made for a deployment someone may create later."""
    key = _key(name, workspace)
    config = load_config(_repo(ctx))
    records = recorded_objects(config.state_url(), config.repo)
    known = sorted(f"{r.workspace}/{r.name}" for r in records if r.kind == "Deployment")
    if key not in known:
        raise NotFound(f"no applied Deployment {key}",
                       hint=(f"deployments: {', '.join(known)}" if known else "no deployment is applied yet")
                       + "; write WORKSPACE/NAME (or -w WORKSPACE) for one outside the default workspace")
    return key


_workspace = click.option("-w", "--workspace", default=None, help="The deployment's workspace.")


@token.command("create")
@click.argument("name", metavar="[WORKSPACE/]NAME")
@_workspace
@click.pass_context
def token_create(ctx: click.Context, name: str, workspace: str | None) -> None:
    """A new token for deployment NAME (or WORKSPACE/NAME). It is printed once; only its hash
    is kept. The deployment must have been applied."""

    key = _applied_deployment(ctx, name, workspace)
    tok = _tokens(ctx).create(key, who())
    click.echo(tok)
    click.echo("store it now: it cannot be shown again (revoke with `kiln deployments token revoke "
               f"{key} {tok.split('_')[1]}`)", err=True)


@token.command("list")
@click.argument("name", metavar="[WORKSPACE/]NAME")
@_workspace
@click.pass_context
def token_list(ctx: click.Context, name: str, workspace: str | None) -> None:
    """Token ids of deployment NAME or WORKSPACE/NAME (never the tokens)."""
    key = _key(name, workspace)
    rows = _tokens(ctx).list(key)
    if not rows:
        click.echo(f"deployment {key} has no tokens")
        return
    click.echo(f"{'ID':10} {'CREATED':21} {'BY':28} REVOKED")
    for r in rows:
        click.echo(f"{r['id']:10} {r['created']:21} {str(r['who'])[:28]:28} {r['revoked'] or '-'}")


@token.command("revoke")
@click.argument("name", metavar="[WORKSPACE/]NAME")
@click.argument("token_id")
@_workspace
@click.pass_context
def token_revoke(ctx: click.Context, name: str, token_id: str, workspace: str | None) -> None:
    """Revoke token TOKEN_ID of deployment NAME or WORKSPACE/NAME (running servers notice at
    their next request)."""
    key = _key(name, workspace)
    _tokens(ctx).revoke(key, token_id)
    click.echo(f"revoked token {token_id} of deployment {key}")
