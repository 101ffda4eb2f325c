"""What the console's pages show, read from the state store and the repository's files.

Reads only. Each function takes what one page needs and returns plain JSON-like data; the
pages (``kiln.controller.console.pages``) turn it into HTML. Values that come from specs or
records pass through ``redact`` before they are shown: a spec may name a secret's variable, never
its value, but a misplaced password in a spec must not reach a page either.

Who looks (#26): every reader that lists or opens objects takes ``view``, the request's
``kiln.api.access.Viewer`` (``viewer``), or None for everything (a console with no user bound,
or a platform admin). An object the viewer may not see reads exactly as one never applied, so a
page says nothing about what exists elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln._util.redact import redact, redact_text
from kiln.api.access import Viewer
from kiln.config import KilnConfig
from kiln.controller.dataset_steps import data_rel
from kiln.controller.experiment.home import experiment_home, run_dir
from kiln.controller.experiment.results import metric_series, trials
from kiln.controller.status import row, spec_field
from kiln.state import ObjectRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
THUMBNAILS = 24  # a grid's worth: enough to see what the data looks like
LOG_TAIL = 200  # lines of each step's log shown on the experiment page
AUDIT_TAIL = 200  # newest audit lines on the models page


def viewer(config: KilnConfig, user: str | None) -> Viewer | None:
    """What ``user`` may see, from the applied Workspaces (read once per request); None (see
    everything) without a user or for a platform admin."""
    if not user:
        return None
    view = Viewer.of(config, user, records(config, "Workspace"))
    return None if view.admin else view


def sees(view: Viewer | None, rec: ObjectRecord) -> bool:
    return view is None or view.sees(rec.kind, rec.workspace, rec.name, rec.spec or {})


def records(config: KilnConfig, kind: str | None = None, view: Viewer | None = None) -> list[ObjectRecord]:
    from kiln.controller.project import open_state

    store = open_state(config, read_only=True)  # looking never creates a state database
    try:
        recs = store.all_objects(kind=kind)
    finally:
        store.close()
    return recs if view is None else view.filter(recs)


def one(config: KilnConfig, key: str, view: Viewer | None = None) -> tuple[ObjectRecord | None, list[Any]]:
    """The record ``key`` and its apply attempts (newest first); (None, []) when it has not been
    applied or ``view`` may not see it."""
    from kiln.controller.project import open_state

    store = open_state(config, read_only=True)
    try:
        rec = store.get(key)
        if rec is None or not sees(view, rec):
            return None, []
        return rec, store.attempts(key, limit=20)
    finally:
        store.close()


# -- overview -------------------------------------------------------------------------------------


def _days_left(end: Any, today: dt.date | None = None) -> int | None:
    try:
        day = dt.date.fromisoformat(str(end))
    except ValueError:
        return None
    return (day - (today or dt.date.today())).days


def _running(rec: ObjectRecord) -> bool:
    wf = rec.extra.get("workflow")
    busy = rec.condition("Reconciling")
    return (isinstance(wf, dict) and wf.get("phase") == "Running") or (busy is not None and busy.status == "True")


# quota -> how the overview counts its use now, from the running queue entries of the workspace
# (``jobs``: the local runner's resource queue, as ``kiln queue`` lists it) and its running local
# deployments' GPUs (``dep_gpus``). The quotas counted per object (maxDeployments...) are below.
RUN_TIME_USE: dict[str, Callable[[list[dict[str, Any]], int], Any]] = {
    "cpu": lambda jobs, _: round(sum(j["cpu"] for j in jobs), 3),
    "memory": lambda jobs, _: f"{sum(j['memory'] for j in jobs) / 2**30:.3g}Gi",
    "trainingGpus": lambda jobs, _: sum(j["gpu"] for j in jobs),  # local servers do not queue: all training
    "deploymentGpus": lambda _, dep_gpus: dep_gpus,
    "maxConcurrentJobs": lambda jobs, _: len(jobs),
}


def _deployment_gpus(ws_spec: dict[str, Any], dep: ObjectRecord) -> int:
    """The GPUs a running local deployment holds, counted as the validate-time quota check
    counts them (``kiln.validate``): its preset's GPUs times its replicas (``maxReplicas`` when
    it autoscales). 0 when its server is not running here (no live ``pid`` in the record)."""
    from kiln._util.proc import pid_alive
    from kiln.api.deployment import DeploymentSpec
    from kiln.api.workspace import WorkspaceSpec

    try:
        pid = int(dep.extra.get("pid") or 0)
    except (TypeError, ValueError):
        pid = 0
    if pid <= 0 or not pid_alive(pid):
        return 0
    try:  # records hold validated specs; one that no longer parses (an older kiln's) counts nothing
        ws = WorkspaceSpec.model_validate(ws_spec)
        spec = DeploymentSpec.model_validate((dep.spec or {}).get("spec") or {})
    except ValueError:
        return 0
    replicas = spec.autoscaling.maxReplicas if spec.autoscaling else spec.replicas
    return ws.resolve(spec.resources).gpu * max(replicas, 1)


def workspaces(recs: list[ObjectRecord], jobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each Workspace with its members, period (days left) and quotas against what it uses now.
    ``jobs``: the resource queue's rows (``queue``), None where there is no local queue (Argo):
    CPU, memory, GPUs and concurrent jobs are then counted from the running queue entries and
    the running local deployments, and ``waiting`` says how many jobs wait; without a queue,
    concurrent jobs are the objects applying or training and the rest shows no use."""
    out = []
    for ws in sorted((r for r in recs if r.kind == "Workspace"), key=lambda r: r.name):
        spec = (ws.spec or {}).get("spec") or {}
        mine = [r for r in recs if r.workspace == ws.name and r.kind != "Workspace"]
        quotas = spec.get("quotas") or {}
        use: dict[str, Any] = {
            "maxDeployments": sum(1 for r in mine if r.kind == "Deployment"),
            "maxExperiments": sum(1 for r in mine if r.kind == "Experiment"),
            "maxDatasets": sum(1 for r in mine if r.kind == "Dataset"),
        }
        waiting = None
        if jobs is None:
            use["maxConcurrentJobs"] = sum(1 for r in mine if r.kind != "Deployment" and _running(r))
        else:
            running = [j for j in jobs if j["workspace"] == ws.name and j["state"] == "running"]
            waiting = sum(1 for j in jobs if j["workspace"] == ws.name and j["state"] == "waiting")
            dep_gpus = sum(_deployment_gpus(spec, r) for r in mine if r.kind == "Deployment")
            use.update({k: fn(running, dep_gpus) for k, fn in RUN_TIME_USE.items()})
        period = spec.get("period") or {}
        out.append(
            {
                "name": ws.name,
                "health": ws.health,
                "sync": ws.sync,
                "members": [
                    {"user": m.get("user"), "role": m.get("role")} for m in spec.get("members") or [] if isinstance(m, dict)
                ],
                "period": {
                    "start": period.get("start"),
                    "end": period.get("end"),
                    "daysLeft": _days_left(period["end"]) if period.get("end") else None,
                },
                "quotas": [{"name": k, "limit": v, "used": use.get(k)} for k, v in quotas.items() if v is not None],
                "waiting": waiting,
                "objects": len(mine),
            }
        )
    return redact(out)


def queue(config: KilnConfig, view: Viewer | None, recs: list[ObjectRecord] | None = None) -> dict[str, Any]:
    """The local runner's running and waiting jobs, as ``kiln queue`` lists them (its reader,
    ``kiln.controller.compute.queue_rows``), of what ``view`` sees: a job of an object the viewer
    may not see (a private experiment, another workspace's) is left out; a job no record claims,
    by its workspace. ``{"jobs": [...], "note"}``: the note says why there is no queue (Argo).
    ``recs``: every record, when the caller has read them already."""
    from kiln.controller.compute import queue_rows
    from kiln.errors import KilnError

    try:
        rows = queue_rows(config)
    except KilnError as exc:
        return {"jobs": None, "note": str(exc)}
    if view is not None:
        every = recs if recs is not None else records(config)
        owner = {}
        for r in every:
            wf = r.extra.get("workflow")
            if isinstance(wf, dict) and wf.get("name"):
                owner[str(wf["name"])] = r
        rows = [j for j in rows if (sees(view, owner[j["workflow"]]) if j["workflow"] in owner else j["workspace"] in view.roles)]
    return {"jobs": redact(rows), "note": ""}


def overview(config: KilnConfig, view: Viewer | None) -> dict[str, Any]:
    from kiln.api import KINDS

    every = records(config)
    recs = every if view is None else view.filter(every)  # a workspace's counts and quotas: of what the viewer sees
    rank = {k: i for i, k in enumerate(KINDS)}
    rows = [row(r) for r in sorted(recs, key=lambda r: (rank.get(r.kind, 99), r.workspace, r.name))]
    q = queue(config, view, every)
    return {"objects": redact(rows), "workspaces": workspaces(recs, q["jobs"]), "queue": q}


# -- datasets -------------------------------------------------------------------------------------


def dataset(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> dict[str, Any] | None:
    rec, attempts = one(config, f"Dataset/{ws}/{name}", view)
    if rec is None:
        return None
    rel = data_rel(ws, name)
    log = read_json(config.repo / f"{rel}.versions.json") or {}
    versions = []
    for i, v in enumerate(log.get("versions") or []):
        lineage = v.get("lineage") or {}
        versions.append(
            {
                "number": f"v{i + 1}",
                "id": v.get("id"),
                "created": v.get("created"),
                "files": v.get("files"),
                "size": (v.get("out") or {}).get("size"),
                "classes": v.get("per_class_counts") or {},
                "current": v.get("id") == log.get("current"),
                "source": lineage.get("source"),
                "parent": lineage.get("parent"),
                "ops": lineage.get("ops") or [],
            }
        )
    return {
        "record": rec,
        "attempts": attempts,
        "versions": redact(versions),
        "path": rel,
        "extra": redact(rec.extra),
        "task": spec_field(rec, "task"),
        "type": spec_field(rec, "type"),
    }


def class_delta(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(class, count in a, count in b) for every class of either version."""
    ca, cb = a.get("classes") or {}, b.get("classes") or {}
    return [(c, int(ca.get(c, 0)), int(cb.get(c, 0))) for c in sorted(set(ca) | set(cb), key=str)]


def file_diff(config: KilnConfig, ws: str, name: str, v1: str, v2: str) -> dict[str, Any]:
    """Files added, removed and changed between two versions (DVC's listings), or why not."""
    from kiln.data.versioning import DatasetRepo

    try:
        d = DatasetRepo(config.repo, remote_url=config.dvc.remote).diff(data_rel(ws, name), v1, v2)
    except Exception as exc:  # noqa: BLE001 - e.g. a version made on another branch, not in this cache
        return {"error": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}
    return {"added": d.added, "removed": d.removed, "changed": d.changed}


def _inside(root: Path, base: Path, rel: Any) -> str | None:
    """``rel`` (a path an annotation file names, relative to ``base``) relative to the dataset's
    folder, or None when it is not a plain path inside it."""
    try:
        out = (base / str(rel)).relative_to(root).as_posix()
    except ValueError:
        return None
    return None if out.startswith("..") or "/../" in out else out


def samples(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> dict[str, Any]:
    """Up to ``THUMBNAILS`` images of the current version as checked out, each with its label
    (an image folder's class folder), its boxes (a COCO file beside the images) or its mask (a
    segmentation pair list): ``{"items": [{"path": relative to the dataset folder, "label",
    "boxes": [[x, y, w, h, label]], "size", "mask"}], "id2label": {...}}``. The browser colours a
    mask's category ids (it reads the PNG's pixels); the masks are not thumbnails themselves."""
    root = config.repo / data_rel(ws, name)
    if not root.is_dir() or not _dataset_seen(config, ws, name, view):
        return {"items": [], "id2label": {}}
    boxes: dict[str, list[list[Any]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    masks: dict[str, str] = {}
    id2label: dict[str, Any] = {}
    for f in sorted(root.rglob("*.json"))[:8]:
        doc = read_json(f)
        if isinstance(doc, list):  # a segmentation pair list: [{"image", "seg_map"}]
            for pair in doc:
                if isinstance(pair, dict) and "image" in pair and "seg_map" in pair:
                    base = f.parent if (f.parent / str(pair["image"])).is_file() else root
                    img, mask = _inside(root, base, pair["image"]), _inside(root, base, pair["seg_map"])
                    if img and mask:
                        masks[img] = mask
            continue
        if f.name in ("id2label.json", "id2lable.json") and isinstance(doc, dict):
            id2label = {str(k): v for k, v in doc.items()}
            continue
        if not (isinstance(doc, dict) and isinstance(doc.get("images"), list) and "annotations" in doc):
            continue
        cats = {c.get("id"): c.get("name") for c in doc.get("categories") or [] if isinstance(c, dict)}
        by_id = {}
        for im in doc["images"]:
            if isinstance(im, dict) and (rel := _inside(root, f.parent, im.get("file_name"))) is not None:
                by_id[im.get("id")] = rel
                sizes[rel] = (int(im.get("width") or 0), int(im.get("height") or 0))
        for a in doc.get("annotations") or []:
            if isinstance(a, dict) and a.get("image_id") in by_id and isinstance(a.get("bbox"), list):
                boxes.setdefault(by_id[a["image_id"]], []).append([*a["bbox"][:4], cats.get(a.get("category_id"), "?")])
    mask_files = set(masks.values())
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel in mask_files:
            continue
        label = p.parent.name if p.parent != root and rel not in boxes and rel not in masks else ""
        out.append({"path": rel, "label": label, "boxes": boxes.get(rel, []), "size": sizes.get(rel), "mask": masks.get(rel)})
        if len(out) >= THUMBNAILS:
            break
    return {"items": out, "id2label": id2label}


def sample_file(config: KilnConfig, ws: str, name: str, rel: str, view: Viewer | None) -> Path | None:
    """The image ``rel`` inside the dataset's folder, None for anything else (a path that leaves
    the folder, through ``..`` or a link, a file that is not an image, or a dataset the viewer
    may not see)."""
    root = (config.repo / data_rel(ws, name)).resolve()
    p = (root / rel).resolve()
    if not p.is_relative_to(root) or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
        return None
    return p if _dataset_seen(config, ws, name, view) else None


def _dataset_seen(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> bool:
    """Whether a dataset's files may be shown: always without a viewer (the folder is read as
    checked out, applied or not), else only an applied dataset the viewer sees."""
    return view is None or one(config, f"Dataset/{ws}/{name}", view)[0] is not None


# -- experiments ----------------------------------------------------------------------------------


def live_run(config: KilnConfig, rec: ObjectRecord) -> Path | None:
    """The run folder the experiment trains in now, or trained in last: while apply runs a new
    spec the record still has the old hash (the Reconciling condition names the new one)."""
    busy = rec.condition("Reconciling")
    hashes = []
    if busy is not None and busy.status == "True":
        m = re.search(r"applying spec (\w+)", busy.message)
        if m:
            hashes.append(m.group(1))
    hashes.append(rec.spec_hash)
    for h in hashes:
        if h and (d := run_dir(config, rec.workspace, rec.name, h)).is_dir():
            return d
    runs = experiment_home(config, rec.workspace, rec.name) / "runs"
    found = sorted((d for d in runs.glob("*") if d.is_dir()), key=lambda d: d.stat().st_mtime) if runs.is_dir() else []
    return found[-1] if found else None


def curves(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> dict[str, Any] | None:
    """The live curves' JSON: per trial, each metric's ``[[step, value]]`` so far, and whether
    it still trains (the page polls until it does not)."""
    rec, _ = one(config, f"Experiment/{ws}/{name}", view)
    if rec is None:
        return None
    run = live_run(config, rec)
    recs = trials(run) if run is not None else []
    objective = ((spec_field(rec, "objective") or {}).get("metric")) or "validation_accuracy"
    series = metric_series(run) if run is not None else {}
    points = sum(len(v) for per in series.values() for v in per.values())
    return {
        "objective": objective,
        "series": series,
        "points": points,
        "running": _running(rec) or any(r.get("state") == "RUNNING" for r in recs),
        "states": {r.get("id"): r.get("state") for r in recs},
    }


def experiment(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> dict[str, Any] | None:
    rec, attempts = one(config, f"Experiment/{ws}/{name}", view)
    if rec is None:
        return None
    run = live_run(config, rec)
    recs = (trials(run) if run is not None else []) or list(rec.extra.get("trials") or [])
    sel = read_json(run / "selected.json") if run is not None else None
    board = (sel or {}).get("leaderboard") or rec.extra.get("leaderboard") or []
    objective = spec_field(rec, "objective") or {}
    done = [
        (r.get("number", i), r.get("objective"))
        for i, r in enumerate(recs)
        if r.get("state") == "COMPLETE" and isinstance(r.get("objective"), (int, float))
    ]
    return {
        "record": rec,
        "attempts": attempts,
        "run": run,
        "trials": redact(recs),
        "leaderboard": redact(board),
        "failed": redact((sel or {}).get("failed") or []),
        "mode": rec.extra.get("mode") or spec_field(rec, "mode"),
        "objective": {
            "metric": objective.get("metric", "validation_accuracy"),
            "direction": objective.get("direction", "maximize"),
        },
        "history": [[n, v] for n, v in sorted(done)],
        "confusion": confusion(run) if run is not None else None,
        "pr": pr_curves(run) if run is not None else None,
        "best": redact(rec.extra.get("best") or {}),
        "registered": rec.extra.get("registered"),
        "logs": step_logs(config, rec),  # rec: one the viewer sees
        "extra": redact(rec.extra),
    }


def confusion(run: Path) -> dict[str, Any] | None:
    """The chosen model's confusion matrix on its validation split (``eval.json``, saved by
    select for the built-in classifiers), counted here without numpy."""
    ev = read_json(run / "eval.json")
    if not isinstance(ev, dict) or not ev.get("y_true") or not ev.get("classes"):
        return None
    k = len(ev["classes"])
    matrix = [[0] * k for _ in range(k)]
    for y, scores in zip(ev["y_true"], ev.get("scores") or []):
        if isinstance(y, int) and 0 <= y < k and scores:
            matrix[y][max(range(len(scores)), key=lambda j: scores[j])] += 1
    return {"classes": [str(c) for c in ev["classes"]], "matrix": matrix, "split": ev.get("split", "validation")}


def pr_curves(run: Path, points: int = 100) -> dict[str, Any] | None:
    """One-vs-rest precision-recall curves of the chosen model on its validation split
    (``eval.json``): per class ``[[recall, precision], ...]`` (at most ``points``) and its
    average precision. At most 10 classes: beyond that a chart is unreadable."""
    ev = read_json(run / "eval.json")
    if not isinstance(ev, dict) or not ev.get("y_true") or not ev.get("scores"):
        return None
    classes = [str(c) for c in ev.get("classes") or []][:10]
    series: dict[str, list[list[float]]] = {}
    ap: dict[str, float] = {}
    for k, name in enumerate(classes):
        ranked = sorted(((row[k], y == k) for y, row in zip(ev["y_true"], ev["scores"]) if len(row) > k), key=lambda p: -p[0])
        positives = sum(1 for _, hit in ranked if hit)
        if not positives:
            continue
        tp, curve, area, last_recall = 0, [], 0.0, 0.0
        for i, (_, hit) in enumerate(ranked, 1):
            if hit:
                tp += 1
                recall, precision = tp / positives, tp / i
                area += (recall - last_recall) * precision  # average precision: precision at each recall step
                last_recall = recall
            curve.append([tp / positives, tp / i])
        step = max(1, len(curve) // points)
        series[name] = [[round(r, 4), round(p, 4)] for r, p in curve[::step]] + [[round(x, 4) for x in curve[-1]]]
        ap[name] = area
    return {"series": series, "ap": ap, "split": ev.get("split", "validation")} if series else None


# study.db -> (its mtime, importances): optuna's fANOVA takes a second or more, and a finished
# study does not change
_IMPORTANCE: dict[Path, tuple[float, dict[str, float]]] = {}


def importance(config: KilnConfig, ws: str, name: str, view: Viewer | None) -> dict[str, Any] | None:
    """Each hyperparameter's importance for the objective (optuna's fANOVA over the HPO study),
    or why there is none; None when the experiment has not been applied (or is not the viewer's).
    Served as its own JSON, fetched after the page has loaded."""
    from kiln.controller.experiment.home import STUDY

    rec, _ = one(config, f"Experiment/{ws}/{name}", view)
    if rec is None:
        return None
    run = live_run(config, rec)
    db = run / "study.db" if run is not None else None
    if db is None or not db.is_file():
        return {"error": "no hyperparameter study (only mode: hpo keeps one)"}
    mtime = db.stat().st_mtime
    cached = _IMPORTANCE.get(db)
    if cached is not None and cached[0] == mtime:
        return {"importances": cached[1]}
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
        imp = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as exc:  # noqa: BLE001 - e.g. too few completed trials, or optuna not installed
        return {"error": f"not computable: {type(exc).__name__}: {str(exc)[:200]}"}
    _IMPORTANCE[db] = (mtime, imp)
    return {"importances": imp}


def step_logs(config: KilnConfig, rec: ObjectRecord) -> list[dict[str, Any]]:
    """The last lines of each step's log of the object's workflow run (the local runner writes
    them under ``.kiln/runs/<workflow>/logs``), URL passwords masked. ``rec`` comes from ``one``
    with the request's viewer: the logs of what it sees only."""
    wf = rec.extra.get("workflow")
    name = wf.get("name") if isinstance(wf, dict) else None
    if not name or "/" in str(name) or str(name).startswith("."):
        return []
    logs = config.kiln_dir() / "runs" / str(name) / "logs"
    out = []
    for p in sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[-20:] if logs.is_dir() else []:
        try:
            lines = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        out.append({"name": p.stem, "lines": [redact_text(ln) for ln in lines[-LOG_TAIL:]], "total": len(lines)})
    return out


def tensorboard_runs(config: KilnConfig, rec: ObjectRecord) -> dict[str, Path]:
    """Trial id -> the folder of its TensorBoard event files (``trials/<id>/tensorboard``,
    written by ``kiln.report`` as it trains): one TensorBoard run per trial. ``rec``, as for
    ``step_logs``, is one the viewer sees."""
    run = live_run(config, rec)
    if run is None:
        return {}
    return {
        d.parent.name: d
        for d in sorted((run / "trials").glob("*/tensorboard"))
        if re.fullmatch(r"[\w.-]+", d.parent.name) and any(d.glob("events.out.tfevents.*"))
    }


# -- models ---------------------------------------------------------------------------------------


def models(config: KilnConfig, view: Viewer | None) -> dict[str, Any]:
    """Every registered version (from the BentoML model folders' ``model.yaml``, without loading
    BentoML), its aliases, the deployments serving it, and the registry's audit log. With a
    viewer, as ``kiln models list --as``: the versions registered by an experiment it sees (a
    model registered by hand: platform admins only), the audit lines of those models."""
    import yaml

    from kiln.api.experiment import experiment_label

    home = config.kiln_dir() / "bentoml"
    reg = read_json(home / "kiln-registry.json") or {}
    seen = None if view is None else {experiment_label(r.workspace, r.name) for r in records(config, "Experiment", view)}
    serving: dict[tuple[str, int], list[str]] = {}
    for r in records(config, "Deployment", view):
        if r.extra.get("model"):
            try:
                serving.setdefault((str(r.extra["model"]), int(r.extra.get("version") or 0)), []).append(
                    f"{r.workspace}/{r.name}"
                )
            except (TypeError, ValueError):
                continue
    versions: list[dict[str, Any]] = []
    for f in sorted((home / "models").glob("*/v*/model.yaml")):
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        name, m = f.parent.parent.name, re.fullmatch(r"v(\d+)", f.parent.name)
        if not m or not isinstance(doc, dict):
            continue
        v = int(m.group(1))
        meta = doc.get("metadata") or {}
        if seen is not None and (doc.get("labels") or {}).get("experiment") not in seen:
            continue
        versions.append(
            {
                "model": name,
                "version": v,
                "created": doc.get("creation_time"),
                "labels": doc.get("labels") or {},
                "metrics": meta.get("metrics") or {},
                "objective": meta.get("objective") or {},
                "tags": meta.get("tags") or [],
                "description": meta.get("description") or "",
                "aliases": sorted(a for a, av in ((reg.get("aliases") or {}).get(name) or {}).items() if av == v),
                "deployments": serving.get((name, v), []),
            }
        )
    versions.sort(key=lambda x: (x["model"], -x["version"]))
    # an audit line of a version shown (a model's name may be registered by others' experiments too)
    shown = {v["model"] for v in versions} | {(v["model"], v["version"]) for v in versions}
    audit = []
    p = home / "kiln-audit.jsonl"
    if p.is_file():
        for line in p.read_text().splitlines()[-AUDIT_TAIL:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if view is None or _audit_shown(entry, shown):
                audit.append(entry)
    return {"versions": redact(versions), "audit": redact(audit[::-1])}


def _audit_shown(entry: Any, shown: set[Any]) -> bool:
    """An audit line of a version shown (by model and version; a line naming no version, by model)."""
    if not isinstance(entry, dict):
        return False
    return (entry.get("model"), entry["version"]) in shown if entry.get("version") is not None else entry.get("model") in shown


# -- labeling and deployments ---------------------------------------------------------------------


def labeling(config: KilnConfig, view: Viewer | None) -> dict[str, Any]:
    from kiln.labeling import server

    jobs = []
    for r in sorted(records(config, "LabelingJob", view), key=lambda r: r.key):
        x = r.extra
        prog = x.get("progress") or {}
        jobs.append(
            {
                "workspace": r.workspace,
                "name": r.name,
                "health": r.health,
                "url": x.get("url"),
                "completion": x.get("completion") or {},
                "perAnnotator": prog.get("per_annotator") or {},
                "perClass": prog.get("per_class") or {},
                "output": x.get("output"),
                "info": x.get("info", ""),
            }
        )
    try:  # where Label Studio runs, from its state file (no request: the page stays fast)
        info = server.read_state(config.kiln_dir().resolve())
    except Exception:  # noqa: BLE001 - an unreadable state file only leaves the link out
        info = None
    return {"jobs": redact(jobs), "studio": getattr(info, "url", None)}


# the last scrape of each deployment's /metrics: the request rate is the change between two
_SCRAPES: dict[str, tuple[float, float]] = {}
_METRIC = re.compile(r"^(kiln_requests_total|kiln_request_duration_seconds_(?:sum|count))(\{[^}]*\})?\s+([0-9.eE+-]+)$")


def server_metrics(url: str, timeout: float = 0.3) -> dict[str, Any]:
    """Requests so far, their mean latency and (from the second look on) the request rate,
    from the deployment's Prometheus ``/metrics``; ``{"error"}`` when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as r:
            text = r.read(2_000_000).decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - a page shows why, it never fails on one server
        return {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    total = dsum = dcount = 0.0
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        if not m:
            continue
        value = float(m.group(3))
        if m.group(1) == "kiln_requests_total":
            total += value
        elif m.group(1).endswith("_sum"):
            dsum += value
        else:
            dcount += value
    now = time.monotonic()
    last = _SCRAPES.get(url)
    _SCRAPES[url] = (now, total)
    rate = (total - last[1]) / (now - last[0]) if last and now > last[0] else None
    return {"requests": int(total), "latencyMs": 1000 * dsum / dcount if dcount else None, "ratePerS": rate}


def deployments(config: KilnConfig, view: Viewer | None, scrape: bool = True) -> list[dict[str, Any]]:
    out = []
    for r in sorted(records(config, "Deployment", view), key=lambda r: r.key):
        url = r.extra.get("url")
        out.append(
            {
                "workspace": r.workspace,
                "name": r.name,
                "health": r.health,
                "sync": r.sync,
                "url": url,
                "model": r.extra.get("model"),
                "version": r.extra.get("version"),
                "metrics": server_metrics(str(url)) if scrape and url and r.health == "Healthy" else {},
            }
        )
    return redact(out)
