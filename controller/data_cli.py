"""``kiln data``: read a dataset's versions (``versions``, ``diff``) and write one out (``export``).

A dataset is named ``NAME``, ``WORKSPACE/NAME``, ``Dataset/WORKSPACE/NAME`` or ``-w WORKSPACE NAME``
(``kiln.api.refs``: without a workspace, the default one's or the only one's). Versions are
``vN`` (1-based, in the order they were created), ``latest``, or an id prefix of at least 6
hex digits. Everything is read from the repository (``data/<ws>/<name>.versions.json`` and
DVC's cache/remote), so the commands also work in a fresh clone after ``dvc pull``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kiln.config import KilnConfig, load_config
from kiln.controller.dataset_steps import DATA_ROOT, data_rel, dataset_label
from kiln.controller.handlers.dataset import human_size
from kiln.controller.project import find_key
from kiln.data import export as export_fmt
from kiln.data import load
from kiln.data.schema import summary as schema_summary
from kiln.data.versioning import DatasetRepo
from kiln.errors import KilnError


def _config(ctx: click.Context) -> KilnConfig:
    root = ctx.find_root()
    return load_config((root.obj or {}).get("repo") or ".")


def _resolve(config: Any, name: str, workspace: str | None = None) -> tuple[str, str, str]:
    """NAME, WS/NAME or Dataset/WS/NAME (``-w``: ``kiln.api.refs``) -> (workspace, name, rel path
    of the versioned folder), among the datasets that have versions."""
    keys = [f"Dataset/{p.parent.name}/{p.name.removesuffix('.versions.json')}"
            for p in (config.repo / DATA_ROOT).glob("*/*.versions.json")]
    key = find_key(name, keys, kind="Dataset", workspace=workspace,
                   absent="{} has no versions (apply its Dataset spec first: kiln apply)")
    _, ws, n = key.split("/")
    return ws, n, data_rel(ws, n)


def _repo(config: Any):

    return DatasetRepo(config.repo, remote_url=config.dvc.remote)


@click.group()
def data() -> None:
    """Dataset versions: list, diff, export."""


_NAME = "[WORKSPACE/]NAME"
_workspace = click.option("-w", "--workspace", default=None, help="The dataset's workspace.")


@data.command()
@click.argument("name", metavar=_NAME)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_workspace
@click.pass_context
def versions(ctx: click.Context, name: str, output: str, workspace: str | None) -> int:
    """List the versions of dataset NAME (current one marked *)."""

    config = _config(ctx)
    ws, n, rel = _resolve(config, name, workspace)
    dr = _repo(config)
    current = dr.current(rel)
    vs = dr.versions(rel)
    if output == "json":
        click.echo(json.dumps([{"number": f"v{i + 1}", "id": v.id, "current": v.id == current, "created": v.created,
                                "files": v.files, "size": v.size, "classes": v.per_class_counts,
                                "classesPerSplit": v.per_split_class_counts, "schema": v.schema,
                                "lineage": v.lineage} for i, v in enumerate(vs)], indent=2))
        return 0
    rows = [["", "VERSION", "ID", "CREATED", "FILES", "SIZE", "CLASSES", "OPS"]]
    for i, v in enumerate(vs):
        ops = ", ".join(o.get("op", "?") for o in (v.lineage or {}).get("ops") or []) or "-"
        rows.append(["*" if v.id == current else "", f"v{i + 1}", v.id[:12], v.created, str(v.files),
                     human_size(v.size), _classes(v.per_class_counts), ops])
        # one line per split under its version, when the version has splits
        if set(v.per_split_class_counts) - {"unsplit"}:
            rows += [["", "", "", "", "", "", f"{s}: {_classes(c)}", ""] for s, c in _in_order(v.per_split_class_counts)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    for i, v in enumerate(vs):
        if v.schema:  # a table: its column types (kiln.data.schema), too long for a table cell
            click.echo(f"v{i + 1} columns: {schema_summary(v.schema)}")
    click.echo(f"dataset {ws}/{n}: {len(vs)} version(s) in {rel}.versions.json")
    return 0


def _classes(counts: dict[str, int], width: int = 60) -> str:
    text = " ".join(f"{k}:{c}" for k, c in counts.items())
    return (text[:width] + "...") if len(text) > width else (text or "-")


def _in_order(per_split: dict[str, dict[str, int]]) -> list[tuple[str, dict[str, int]]]:
    order = ("train", "validation", "test")
    return sorted(per_split.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


@data.command()
@click.argument("name", metavar=_NAME)
@click.argument("v1")
@click.argument("v2")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--limit", type=int, default=20, show_default=True, help="Files listed per group (text output).")
@_workspace
@click.pass_context
def diff(ctx: click.Context, name: str, v1: str, v2: str, output: str, limit: int, workspace: str | None) -> int:
    """Files added/removed/changed and class count changes from V1 to V2."""
    config = _config(ctx)
    _, _, rel = _resolve(config, name, workspace)
    dr = _repo(config)
    a, b = dr.resolve(rel, v1), dr.resolve(rel, v2)
    d = dr.diff(rel, a.id, b.id)
    if output == "json":
        click.echo(json.dumps({"from": a.id, "to": b.id, "added": d.added, "removed": d.removed,
                               "changed": d.changed,
                               "classes": {k: {"from": x, "to": y} for k, (x, y) in d.class_counts.items()}},
                              indent=2))
        return 0
    click.echo(f"{rel}: v{dr.number(rel, a.id)} ({a.id[:12]}) -> v{dr.number(rel, b.id)} ({b.id[:12]})")
    for label, files in (("added", d.added), ("removed", d.removed), ("changed", d.changed)):
        click.echo(f"{label}: {len(files)}")
        for f in files[:limit]:
            click.echo(f"  {f}")
        if len(files) > limit:
            click.echo(f"  ... and {len(files) - limit} more")
    if d.class_counts:
        click.echo("class counts:")
        for k, (x, y) in d.class_counts.items():
            click.echo(f"  {k}: {x} -> {y} ({y - x:+d})")
    else:
        click.echo("class counts: unchanged")
    return 0


@data.command()
@click.argument("name", metavar=_NAME)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--version", "version", default="latest", show_default=True, help="vN, latest or an id prefix.")
@click.option("--format", "fmt", type=click.Choice(["coco", "image-folder", "csv", "studio", "segmentation-json"]),
              default=None, help="Default: the dataset's own format.")
@_workspace
@click.pass_context
def export(ctx: click.Context, name: str, out: str, version: str, fmt: str | None, workspace: str | None) -> int:
    """Write a version of dataset NAME to folder OUT (which must not exist or be empty)."""
    import shutil
    import tempfile


    config = _config(ctx)
    ws, n, rel = _resolve(config, name, workspace)
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise KilnError(f"{dest} is not empty", hint="export into a new folder")
    dr = _repo(config)
    tmp = Path(tempfile.mkdtemp(prefix=".kiln-export-", dir=config.kiln_dir() if config.kiln_dir().is_dir() else None))
    try:
        v = dr.materialize(rel, version, tmp / "v")
        options: dict[str, Any] = {}
        label = dataset_label(config, ws, n, v.lineage)
        if label:
            options["label"] = label
        content = load(tmp / "v", verify=False, **options)
        if dest.exists():
            dest.rmdir()
        export_fmt(content, dest, fmt or content.format)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"exported {ws}/{n} v{dr.number(rel, v.id)} ({v.id[:12]}) as {fmt or content.format} to {dest}")
    return 0
