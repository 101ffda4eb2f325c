"""The LabelingJob's steps: project -> pre-annotate -> import -> assign -> wait-complete -> export.

Each is a ``kiln step labeling.<name>`` (a task of the Argo workflow ``render.PIPELINES`` renders)
and, for the local controller, a handler step run in-process (``handlers.labeling``). All of them
are idempotent and cheap when nothing changed, because a LabelingJob is reconciled again and again
while people label: every apply of an unfinished job re-runs them.

- project: one Label Studio project per job (``LabelingClient.ensure_project``: found by its
  ``kiln.dev/id`` marker, label config from ``spec.labels``); classes renamed in the spec
  (``renamedFrom``) or by hand in Label Studio (drift, restored to the spec) are rewritten in the
  existing annotations and predictions, so no annotation is lost.
- pre-annotate: predictions of a registered model, or of the running Deployment named by
  ``preAnnotation.deployment`` (asked over HTTP), for the items not yet in the project (cached per
  model version in the job's folder), for every image task (``PREDICTION_MAPPERS``): choices,
  boxes, polygons (instance masks traced), brush masks; an item scoring below ``threshold`` stays
  unlabelled.
- import: the dataset version's files exported (hard links) into the server's document root, a
  local-files storage over them (a storage kiln made elsewhere, e.g. in the repository before
  #20, is re-pointed), then only the new items, split among the annotators
  (``kiln.labeling.assignment``).
- assign: Label Studio users for annotators and reviewers (workspace members), one view each.
- wait-complete: evaluates the completion rule (polling up to ``--arg timeout=SECONDS``, default
  one check). It *succeeds* whether or not the job is complete: an unfinished job is Progressing,
  not Failed, and the next ``kiln apply`` (plan shows it, see ``handlers.labeling``) checks again.
- export: once complete, the JSON export is converted (``kiln.labeling.export.to_content``) into
  the output dataset's format and written as a new version through
  ``dataset_steps.write_version`` (the Dataset workflow's own path), lineage naming the job.

Connection (``connect``): ``kiln.yaml`` ``labelStudio: {url, tokenEnv, documentRoot}`` when that
section is given, else the server ``kiln labelstudio start`` runs (``.kiln/labelstudio.json``).
Either way the document root holds exported items only, never the repository (``connection``).
An unreachable server is a ``TemporaryError`` (retried by the next apply); a refused token or a
missing token variable is permanent (Stalled) until fixed. The token never leaves the process.

Persisted per job, ``.kiln/workspaces/<ws>/labeling/<name>/``::

    predictions/<model>-v<N>.json   {"<item key>": {"result": [...], "score": 0.93,
                                     "model_version": "shapes:v1"} | null}
    items/<version id>/             the dataset version's files, when it is not the checked-out one
    exported.json                   {"annotations": "<sha256 of the exported results>",
                                     "version": "<id>", "number": 2, "dataset": "vision/shapes"}
    export/                         staging folder of the output version (removed after)
    union/                          the output dataset's current items + the labelled ones, when
                                    the output is another dataset (``kiln.data.merge``; removed after)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.fs import write_json_atomic
from kiln.algorithms.base import read_meta
from kiln.algorithms.registry import get_algorithm
from kiln.api.experiment import from_experiment
from kiln.api.labeling import LabelingJob, LabelingJobSpec
from kiln.api.workspace import ROLE_PERMISSIONS
from kiln.controller.dataset_steps import data_rel, write_version
from kiln.controller.handlers.base import TemporaryError
from kiln.controller.steps import StepContext, workspace_dir
from kiln.data import load
from kiln.data.formats import export as export_format
from kiln.data.merge import load_as, merge_contents, output_format
from kiln.data.versioning import DatasetRepo
from kiln.errors import ConfigError, KilnError, NotFound
from kiln.labeling import assignment, server
from kiln.labeling.client import (
    ImportItem,
    LabelingClient,
    LabelStudioUnavailable,
    Prediction,
    box_region,
    brush_region,
    choice_region,
    polygon_region,
)
from kiln.labeling.export import DELETED_FIELD, KEY_FIELD, completion, to_content

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.data.model import DatasetContent
    from kiln.labeling.client import LabelingClient, Prediction

PREDICT_BATCH = 32


class PreAnnotationNotAvailable(KilnError):
    """The spec asks for a pre-annotation source this kiln version cannot use yet."""


# -- paths and spec ------------------------------------------------------------------------------

def job_home(config: KilnConfig, workspace: str, name: str) -> Path:
    return workspace_dir(config, workspace) / "labeling" / name


def kiln_id(repo: Path, ws: str, name: str) -> str:
    """What marks a LabelingJob's project on the server: ``<repository>#<ws>/<name>``. Teams
    share one Label Studio, and two GitOps repositories may both define ``default/boxes``: without
    the repository in the id, one would adopt (and ``--prune`` delete) the other's project."""
    return f"{repo_identity(repo)}#{ws}/{name}"


@functools.lru_cache(maxsize=64)
def repo_identity(repo: Path) -> str:
    """The repository as every clone of it knows it (the controller's clone and a developer's
    checkout alike): git's ``origin`` URL without credentials; else its absolute path."""
    import re
    import subprocess

    try:
        url = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    if not url:
        return str(Path(repo).resolve())
    url = re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)  # https://user:token@host -> https://host
    return url.removesuffix(".git")


def classes(spec: LabelingJobSpec) -> list[str]:
    return [lb.name for lb in spec.labels]


def renames(spec: LabelingJobSpec) -> dict[str, str]:
    """old class name -> new one, from ``renamedFrom``."""
    return {lb.renamedFrom: lb.name for lb in spec.labels if lb.renamedFrom}


def output_dataset(spec: LabelingJobSpec, job_ws: str) -> tuple[str, str]:
    """(workspace, name) of the dataset the finished labels become a version of."""
    if spec.output.dataset:
        return job_ws, spec.output.dataset
    return spec.dataset.workspace or job_ws, spec.dataset.name


# -- connection ----------------------------------------------------------------------------------

@dataclass
class Connection:
    url: str
    token: str
    document_root: Path | None  # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    export_root: Path | None    # where this repository's items are exported (under document_root)
    source: str  # where the settings came from, for messages

    def __repr__(self) -> str:  # never print the token
        return f"Connection(url={self.url!r}, source={self.source!r})"


def connection(config: KilnConfig) -> Connection:
    """Where Label Studio is and the token to use (module doc); ConfigError when unknown.

    The document root never covers the repository (``server.unsafe_root``): every Label Studio
    user can read any file under it. A shared server (``kiln.yaml``) gets each repository's items
    in a folder of their own under it, named after the repository as every clone knows it."""

    ls = config.labelStudio
    if "labelStudio" in config.model_fields_set:
        token = os.environ.get(ls.tokenEnv)
        if not token:
            raise ConfigError(f"Label Studio token variable {ls.tokenEnv} is not set (kiln.yaml labelStudio.tokenEnv)",
                              hint=f"export {ls.tokenEnv}=<the API token of a Label Studio admin>")
        root = None
        if ls.documentRoot:
            root = Path(ls.documentRoot) if Path(ls.documentRoot).is_absolute() else config.repo / ls.documentRoot
            root = root.resolve()
            why = server.unsafe_root(root, config.repo, keep=(config.kiln_dir(),))
            if why:
                raise ConfigError(f"kiln.yaml labelStudio.documentRoot {why}: every Label Studio user could "
                                  "read it through a local-files storage",
                                  hint="point the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT and documentRoot "
                                       "at an empty folder outside the repository; kiln exports the items there")
        return Connection(ls.url.rstrip("/"), token, root, root / _namespace(config.repo) if root else None,
                          "kiln.yaml labelStudio")
    info = server.read_state(config.kiln_dir())
    if info is None:
        raise ConfigError("no Label Studio server: kiln.yaml has no labelStudio section and "
                          "`kiln labelstudio start` has not been run in this repository",
                          hint="run `kiln labelstudio start`, or set labelStudio: {url, tokenEnv} in kiln.yaml")
    why = server.unsafe_root(Path(info.document_root), config.repo, keep=(Path(info.data_dir),),
                             allowed=server.files_dir(config.kiln_dir()))
    if why:
        raise ConfigError(f"the Label Studio server at {info.url} has document root {why}: every Label Studio user "
                          "could read kiln's secrets there",
                          hint="run `kiln labelstudio start`: it restarts the server onto kiln's export folder")
    try:
        token = server.read_token(config.kiln_dir())
    except server.LabelStudioError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None
    root = Path(info.document_root)
    return Connection(info.url, token, root, root, ".kiln/labelstudio.json")


def _namespace(repo: Path) -> str:
    """A folder name for the repository on a shared server: readable, and unique per repository."""
    import re

    ident = repo_identity(repo)
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", ident.rstrip("/").rsplit("/", 1)[-1]).strip(".-") or "repo"
    return f"{base}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


# one checked client per server and token in a process: the in-process handler runs six steps
# per apply, and checking the token costs a round trip each time
_CLIENTS: dict[tuple[str, str, str], LabelingClient] = {}


def connect(config: KilnConfig, timeout: float = 60.0) -> LabelingClient:
    """A checked client. Unreachable -> TemporaryError (retry); refused token -> permanent."""

    conn = connection(config)
    key = (conn.url, hashlib.sha256(conn.token.encode()).hexdigest(), str(conn.document_root))
    if key in _CLIENTS:
        return _CLIENTS[key]
    try:
        client = LabelingClient(conn.url, conn.token, document_root=conn.document_root, timeout=timeout)
        _CLIENTS[key] = client
        return client
    except LabelStudioUnavailable as exc:
        if "refused the API token" in exc.message:
            raise KilnError(exc.message + f" (token from {conn.source})", hint=exc.hint) from None
        raise TemporaryError(exc.message, hint=exc.hint) from None


# -- the dataset version's items -----------------------------------------------------------------

@dataclass
class Items:
    dataset: str          # ws/name
    version: str          # DVC id
    number: int
    folder: Path          # where the files are (exported for Label Studio by ``export_items``)
    content: DatasetContent


def dataset_items(ctx: StepContext, spec: LabelingJobSpec) -> Items:
    ws, name = ctx.workspace, ctx.name
    dws = spec.dataset.workspace or ws
    rel = data_rel(dws, spec.dataset.name)
    dr = DatasetRepo(ctx.config.repo, remote_url=ctx.config.dvc.remote)
    try:
        v = dr.resolve(rel, spec.dataset.version)
    except NotFound as exc:
        raise NotFound(f"LabelingJob {ws}/{name}: dataset {dws}/{spec.dataset.name}: {exc.message}",
                       hint=exc.hint or "apply the Dataset spec first") from None
    folder = ctx.config.repo / rel
    if dr.current(rel) != v.id or not folder.is_dir():
        folder = job_home(ctx.config, ws, name) / "items" / v.id
        if not folder.is_dir():
            dr.materialize(rel, v.id, folder)
    content = load(folder, "auto", None, verify=False)
    if content.task == "tabular":
        raise ConfigError(f"LabelingJob {ws}/{name}: dataset {dws}/{spec.dataset.name} is a table; "
                          "tabular labelling is not available in this kiln version",
                          hint="label image datasets for now")
    return Items(f"{dws}/{spec.dataset.name}", v.id, dr.number(rel, v.id), folder, content)


def export_items(config: KilnConfig, items: Items) -> Path:
    """The items' folder as Label Studio serves it: hard links (copies across filesystems) under
    the export root, at their path relative to the repository, so a task's URL
    (``/data/local-files/?d=data/<ws>/<name>/0001.png``) reads as it did when the server's root was
    the repository. A file that leaves the dataset folder (a ``..`` name, a symlink to elsewhere
    than the DVC cache) is refused: the annotators would read it."""
    conn = connection(config)
    if conn.export_root is None:
        raise ConfigError("kiln.yaml labelStudio.documentRoot is not set: kiln cannot export the items "
                          "to the server's local-files folder",
                          hint="set documentRoot to the folder the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT names")
    folder = items.folder.resolve()
    repo = config.repo.resolve()
    rel = folder.relative_to(repo) if folder.is_relative_to(repo) else Path("external", items.version)
    inside = (folder, (repo / ".dvc" / "cache").resolve())
    pairs = []
    for it in items.content.items:
        src = (folder / it.path).resolve()
        if not any(src.is_relative_to(d) for d in inside):
            raise ConfigError(f"dataset {items.dataset}: item {it.path!r} leads outside the dataset folder "
                              f"(to {src})", hint="replace the link by the file itself")
        pairs.append((src, it.path))
    dest = conn.export_root / rel
    server.export(pairs, dest)
    return dest


# -- project -------------------------------------------------------------------------------------

def labeling_project(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    ws, name = ctx.workspace, ctx.name
    client = connect(ctx.config)
    # a rename in the spec: make the server's config carry the old name until annotations moved
    ref = client.ensure_project(
        kiln_id(ctx.config.repo, ws, name), title=f"{ws}/{name}" if ws != "default" else name, task=spec.task,
        classes=classes(spec), colors={lb.name: lb.color for lb in spec.labels if lb.color},
        instructions=spec.instructions, overlap=spec.overlap,
        description=f"kiln LabelingJob {ws}/{name} over dataset {spec.dataset.name}")
    moves = dict(renames(spec))
    # drift: a class renamed by hand is restored; annotations made under the hand-made name follow
    moves.update({found: wanted for wanted, found in ref.drift.renamed})
    moved = rename_labels(client, ref.id, moves) if moves and not ref.created else 0
    return {"project": ref.id, "url": f"{client.url}/projects/{ref.id}", "created": ref.created,
            "drift": ref.drift.describe() if ref.drift.drifted else "", "relabelled": moved,
            "changed": ref.created or ref.drift.drifted or ref.updated or moved > 0}


_LABEL_KEYS = ("choices", "rectanglelabels", "polygonlabels", "brushlabels", "labels")


def _renamed(result: list[dict[str, Any]], moves: dict[str, str]) -> list[dict[str, Any]] | None:
    changed = False
    out = []
    for r in result:
        v = dict(r.get("value") or {})
        for k in _LABEL_KEYS:
            if k in v and any(x in moves for x in v[k]):
                v[k] = [moves.get(x, x) for x in v[k]]
                changed = True
        out.append({**r, "value": v})
    return out if changed else None


def rename_labels(client: LabelingClient, project_id: int, moves: dict[str, str]) -> int:
    """Rewrite ``old -> new`` class names in the project's annotations and predictions."""
    n = 0
    for t in client.export_tasks(project_id):
        for a in t.get("annotations", []):
            new = _renamed(a.get("result") or [], moves)
            if new is not None:
                client._call(client.ls.annotations.update, a["id"], result=new, what=f"relabel annotation {a['id']}")
                n += 1
    # the JSON export lists prediction ids only
    for p in client._call(client.ls.predictions.list, project=project_id, what="list predictions"):
        new = _renamed(p.result or [], moves)
        if new is not None:
            client._call(client.ls.predictions.update, p.id, result=new, what=f"relabel prediction {p.id}")
            n += 1
    return n


# -- pre-annotation ------------------------------------------------------------------------------

@dataclass
class ResolvedModel:
    name: str
    version: int
    path: Path

    @property
    def tag(self) -> str:
        return f"{self.name}:v{self.version}"


def resolve_model(config: KilnConfig, ref: Any, job_ws: str) -> ResolvedModel:
    """A registered model from ``{name, version|alias}`` or ``{experiment}`` (the newest version
    registered with that experiment's label)."""
    try:
        from kiln.bento.registry import Registry, default_home
    except ImportError as exc:  # pragma: no cover - the serving package is part of kiln
        raise PreAnnotationNotAvailable(f"the model registry is not available ({exc})") from None
    try:
        reg = Registry(default_home(config.repo))
        if ref.experiment:
            found: list[tuple[str, int]] = []
            for name in reg.names():
                for v in reg.versions(name):
                    labels = (reg.describe(name, v).get("labels") or {})
                    if from_experiment(labels, job_ws, ref.experiment):
                        found.append((reg.describe(name, v)["created"], name, v))  # type: ignore[arg-type]
            if not found:
                raise NotFound(f"no registered model comes from experiment {ref.experiment!r}",
                               hint="apply the Experiment with a `register` section first")
            _, name, version = max(found)  # type: ignore[misc]
        else:
            name = ref.name
            version = reg.resolve(name, ref.version, ref.alias)
        return ResolvedModel(name, version, reg.path(name, version))
    except ModuleNotFoundError as exc:
        raise PreAnnotationNotAvailable(f"the model registry needs {exc.name}, which is not installed",
                                        hint="pip install 'kiln[serve]'") from None


@dataclass
class Predictor:
    """``predict(paths)`` gives one output per image in the shape ``kiln.algorithms`` predict
    gives it (module doc of ``kiln.algorithms.detection``), whatever answers: a registered model
    loaded here, or a running Deployment whose answers are brought back to that shape
    (``deployment_predictor``). ``categories`` (category id -> class name) reads the ids of a
    semantic mask."""

    predict: Callable[[list[Path]], list[Any]]
    categories: dict[int, str]


def _categories(meta: dict[str, Any]) -> dict[int, str]:
    names = [str(c) for c in meta.get("classes") or []]
    return dict(zip([int(i) for i in meta.get("category_ids") or range(len(names))], names))


def load_predictor(model: ResolvedModel) -> Predictor:
    """The model's ``kiln.algorithms`` predict (the saved model folder's ``meta.json`` names the
    algorithm)."""

    # an experiment registers the serving package (e.g. ONNX) with the native model beside it
    path = model.path if (model.path / "meta.json").is_file() else model.path / "kiln-model"
    meta = read_meta(path)
    algo = get_algorithm(meta["algorithm"])
    trained = algo.load(path)
    return Predictor(lambda paths: algo.predict(trained, [str(p) for p in paths]), _categories(meta))


def deployment_predictor(config: KilnConfig, ws: str, name: str, task: str) -> tuple[ResolvedModel, Predictor]:
    """The model a Deployment serves (its ``server.json``), and a predictor that asks it: images
    as EasyMaker instances (base64), 16 per request, under a token made for the run and dropped
    after it (never written anywhere), marked so that capture skips them (they are no user
    input). The answers, in the serving contract, are brought back to the algorithms' shape."""
    from kiln._util.fs import read_json
    from kiln.bento.auth import TokenStore, default_token_file
    from kiln.bento.capture import NO_CAPTURE_HEADER
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.deployment_steps import deployment_home, post, ready

    info = read_json(deployment_home(config, ws, name) / "server.json")
    if not info:
        raise TemporaryError(f"preAnnotation.deployment {name!r}: Deployment {ws}/{name} has no server",
                             hint="apply the Deployment (kiln apply); the job pre-annotates once it answers")
    reg = Registry(default_home(config.repo))
    model = ResolvedModel(str(info["model"]), int(info["version"]), reg.path(str(info["model"]), int(info["version"])))
    path = model.path if (model.path / "meta.json").is_file() else model.path / "kiln-model"
    classes = [str(c) for c in read_meta(path).get("classes") or []]

    def predict(paths: list[Path]) -> list[Any]:
        import base64

        if not ready(info["url"]):
            raise TemporaryError(f"preAnnotation.deployment {name!r}: Deployment {ws}/{name} does not answer "
                                 f"at {info['url']}", hint="check it with `kiln status`; the next apply retries")
        store = TokenStore(default_token_file(config.repo))
        token = store.create(f"{ws}/{name}", "kiln pre-annotation")
        out: list[Any] = []
        try:
            for i in range(0, len(paths), 16):
                batch = paths[i:i + 16]
                body = {"instances": [{"data": base64.b64encode(p.read_bytes()).decode()} for p in batch]}
                status, answer = post(info["url"], body, token, timeout=120, headers={NO_CAPTURE_HEADER: "1"})
                if status != 200:
                    raise TemporaryError(f"preAnnotation.deployment {name!r}: HTTP {status}: "
                                         f"{json.dumps(answer)[:300]}")
                out.extend(served_outputs(task, answer, len(batch)))
        finally:
            store.forget(f"{ws}/{name}", token.split("_")[1])
        return out

    # served masks hold class indices (the argmax over the model's classes), not category ids
    cats = dict(enumerate(classes)) if task == "semantic-segmentation" else {}
    return model, Predictor(predict, cats)


def served_outputs(task: str, answer: Any, n: int) -> list[Any]:
    """A deployment's answer to ``n`` instances -> one output per image in the algorithms' shape.
    Serving answers ``{"predictions": [one entry per instance]}`` in EasyMaker's formats (a
    deployment built before that contract answered one classified instance with its bare ranked
    list, still read); a box is ``{"<label>": {xmin, ymin, xmax, ymax}, "score"}``; a semantic
    mask a list of rows of class indices."""
    preds = answer.get("predictions") if isinstance(answer, dict) else answer
    if task == "classification" and n == 1 and isinstance(preds, list) and preds and isinstance(preds[0], dict):
        preds = [preds]
    if not isinstance(preds, list) or len(preds) != n:
        raise KilnError(f"the deployment answered {n} instance(s) with {json.dumps(answer)[:200]}",
                        hint="pre-annotate from a Deployment of a kiln image model of the job's task")
    if task in ("detection", "instance-segmentation"):
        return [[d if "box" in d else _served_box(d) for d in p] for p in preds]
    return preds


def _served_box(d: dict[str, Any]) -> dict[str, Any]:
    (label, b), = ((k, v) for k, v in d.items() if k != "score")
    return {"label": label, "score": float(d.get("score", 1.0)),
            "box": [float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])]}


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def classification_prediction(out: Any, path: Path, classes: Sequence[str], version: str,
                              **_: Any) -> Prediction | None:
    """``{"label", "score"}`` (kiln.algorithms' classification predict) -> a Choices prediction."""

    if isinstance(out, list):  # top-k lists: the best first
        out = out[0] if out else None
    if not out or out.get("label") is None:
        return None
    label = str(out["label"])
    if label not in classes:
        return None  # a class the job does not label: leave the item for a person
    return Prediction([choice_region(label)], float(out.get("score", 0.0)), version)


def _kept(out: Any, classes: Sequence[str], threshold: float) -> list[dict[str, Any]]:
    """The objects of one image's detection output (``[{"label", "score", "box": [x1, y1, x2, y2]
    (pixels), "mask"?}]``, the one shape every detector's predict gives) of classes the job
    labels, scoring at least ``threshold``."""
    return [d for d in out or [] if str(d["label"]) in classes and float(d.get("score", 1.0)) >= threshold]


def detection_prediction(out: Any, path: Path, classes: Sequence[str], version: str, threshold: float = 0.0,
                         **_: Any) -> Prediction | None:
    """A detection output for one image -> a RectangleLabels prediction; the item's score is the
    mean of the kept boxes' scores; no box kept -> None (the item stays unlabelled)."""

    kept = _kept(out, classes, threshold)
    if not kept:
        return None
    w, h = _image_size(path)
    result = []
    for d in kept:
        x1, y1, x2, y2 = (float(c) for c in d["box"])
        result.append(box_region(str(d["label"]), x1, y1, x2 - x1, y2 - y1, w, h))
    return Prediction(result, sum(float(d.get("score", 1.0)) for d in kept) / len(kept), version)


def mask_polygons(mask: Any, min_points: int = 3) -> list[list[tuple[float, float]]]:
    """The outlines of a binary ``(h, w)`` mask as pixel polygons (one per connected part, holes
    left out: Label Studio's PolygonLabels has none), traced at the 0.5 level between pixel
    centres and shifted to pixel edges, so a filled square of pixels 2..5 gives corners near 2 and 6."""
    import numpy as np
    from contourpy import contour_generator

    m = np.pad(np.asarray(mask, dtype=np.float64) > 0, 1).astype(np.float64)
    lines = contour_generator(z=m).lines(0.5)
    polys = []
    for ln in lines:
        pts = [(float(x) - 0.5, float(y) - 0.5) for x, y in np.asarray(ln)[:-1]]  # closed: last == first
        if len(pts) >= min_points:
            polys.append(pts)
    return polys


def instance_prediction(out: Any, path: Path, classes: Sequence[str], version: str, threshold: float = 0.0,
                        **_: Any) -> Prediction | None:
    """An instance segmentation output (detection's shape with ``mask``, COCO RLE) -> one
    PolygonLabels region per object part (``mask_polygons``); an object without a mask gets
    its box as a four-point polygon."""
    from kiln.data.formats import _masks

    kept = _kept(out, classes, threshold)
    w, h = _image_size(path)
    result = []
    for d in kept:
        x1, y1, x2, y2 = (float(c) for c in d["box"])
        polys = mask_polygons(_masks.decode(d["mask"])) if d.get("mask") else []
        for pts in polys or [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]]:
            result.append(polygon_region(str(d["label"]), pts, w, h))
    if not result:
        return None
    return Prediction(result, sum(float(d.get("score", 1.0)) for d in kept) / len(kept), version)


def semantic_prediction(out: Any, path: Path, classes: Sequence[str], version: str,
                        categories: dict[int, str] | None = None, **_: Any) -> Prediction | None:
    """A semantic mask (``(h, w)`` category ids) -> one BrushLabels region per class the job
    labels. A class map carries no confidence: its score is 1.0, so ``threshold`` keeps it."""
    import numpy as np

    arr = np.asarray(out)
    names = categories or {}
    h, w = arr.shape[:2]
    result = [brush_region(names[int(cid)], arr == cid, w, h) for cid in np.unique(arr).tolist()
              if names.get(int(cid)) in classes]
    return Prediction(result, 1.0, version) if result else None


# task -> how one predict output becomes a Label Studio prediction
PREDICTION_MAPPERS: dict[str, Callable[..., Any]] = {
    "classification": classification_prediction,
    "detection": detection_prediction,
    "instance-segmentation": instance_prediction,
    "semantic-segmentation": semantic_prediction,
}


def predictions_for(task: str, outputs: Sequence[Any], paths: Sequence[Path], classes: Sequence[str],
                    version: str, threshold: float, categories: dict[int, str] | None = None
                    ) -> list[Prediction | None]:
    try:
        mapper = PREDICTION_MAPPERS[task]
    except KeyError:
        raise PreAnnotationNotAvailable(
            f"pre-annotation of {task} jobs is not available in this kiln version",
            hint=f"pre-annotation works for: {', '.join(PREDICTION_MAPPERS)}") from None
    return [mapper(o, p, classes, version, threshold=threshold, categories=categories)
            for o, p in zip(outputs, paths)]


def _pred_file(ctx: StepContext, model: ResolvedModel) -> Path:
    ws, name = ctx.workspace, ctx.name
    return job_home(ctx.config, ws, name) / "predictions" / f"{model.name}-v{model.version}.json"


def pre_annotation_source(ctx: StepContext, spec: LabelingJobSpec) -> tuple[ResolvedModel, Callable[[], Predictor]]:
    """The model whose predictions pre-annotate the job (its predictions are cached per model
    version) and how to get its predictor: the registered model loaded here, or the Deployment
    that serves it (``deployment_predictor``)."""
    pa = spec.preAnnotation
    assert pa is not None
    if pa.deployment:
        model, predictor = deployment_predictor(ctx.config, ctx.workspace, pa.deployment, spec.task)
        return model, lambda: predictor
    model = resolve_model(ctx.config, pa.model, ctx.workspace)
    return model, lambda: load_predictor(model)


def labeling_pre_annotate(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    pa = spec.preAnnotation
    if pa is None:
        return {"model": None, "changed": False}
    reason = pre_annotation_unavailable(spec)
    if reason:
        raise PreAnnotationNotAvailable(reason)
    model, get_predictor = pre_annotation_source(ctx, spec)
    items = dataset_items(ctx, spec)
    f = _pred_file(ctx, model)
    cache: dict[str, Any] = json.loads(f.read_text()) if f.is_file() else {}
    client = connect(ctx.config)
    have = client.existing_keys(project_id(ctx, client)) if ctx.args.get("skip-existing", "1") == "1" else {}
    todo = [it for it in items.content.items if it.path not in cache and it.path not in have]
    if todo:
        predictor = get_predictor()
        for i in range(0, len(todo), PREDICT_BATCH):
            batch = todo[i:i + PREDICT_BATCH]
            paths = [items.folder / it.path for it in batch]
            preds = predictions_for(spec.task, predictor.predict(paths), paths, classes(spec), model.tag,
                                    pa.threshold, predictor.categories)
            for it, p in zip(batch, preds):
                cache[it.path] = None if p is None else {"result": p.result, "score": p.score,
                                                         "model_version": p.model_version}
        write_json_atomic(f, cache, indent=None)
    scored = [c for c in cache.values() if c is not None]
    return {"model": model.tag, "via": f"deployment {pa.deployment}" if pa.deployment else "registry",
            "predicted": len(todo), "cached": len(cache), "changed": bool(todo),
            "aboveThreshold": sum(c["score"] >= pa.threshold for c in scored)}


def pre_annotation_unavailable(spec: LabelingJobSpec) -> str | None:
    pa = spec.preAnnotation
    if pa is None:
        return None
    if pa.default:
        return (f"preAnnotation.default {pa.default!r}: default pretrained models are not available in "
                "this kiln version; register one and use preAnnotation.model")
    if spec.task not in PREDICTION_MAPPERS:
        return f"pre-annotation of {spec.task} jobs is not available yet (only {', '.join(PREDICTION_MAPPERS)})"
    return None


def project_id(ctx: StepContext, client: LabelingClient) -> int:
    ws, name = ctx.workspace, ctx.name
    p = client.find_project(kiln_id(ctx.config.repo, ws, name))
    if p is None:
        raise KilnError(f"LabelingJob {ws}/{name}: its Label Studio project does not exist",
                        hint="run the labeling.project step first (kiln apply does)")
    return int(p.id)


# -- import --------------------------------------------------------------------------------------

def labeling_import(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    client = connect(ctx.config)
    pid = project_id(ctx, client)
    items = dataset_items(ctx, spec)
    preds: dict[str, Any] = {}
    if spec.preAnnotation is not None and not pre_annotation_unavailable(spec):
        f = _pred_file(ctx, pre_annotation_source(ctx, spec)[0])
        preds = json.loads(f.read_text()) if f.is_file() else {}
    served = export_items(ctx.config, items)
    client.ensure_local_storage(pid, served)
    batch = []
    for it in items.content.items:
        p = preds.get(it.path)
        batch.append(ImportItem(key=it.path, path=served / it.path, split=it.split,
                                prediction=Prediction(p["result"], p["score"], p["model_version"]) if p else None))
    weights = [a.weight for a in spec.annotators] if spec.assignment == "weighted" else None
    threshold = spec.preAnnotation.threshold if spec.preAnnotation else None
    rep = client.import_items(pid, batch, annotators=[a.user for a in spec.annotators], weights=weights,
                              threshold=threshold, task=spec.task)
    return {"project": pid, "dataset": items.dataset, "datasetVersion": items.version,
            "datasetNumber": f"v{items.number}", "items": len(batch), "new": rep.new,
            "existing": rep.existing, "withPredictions": rep.with_predictions,
            "belowThreshold": rep.below_threshold,
            "assignment": {u: list(r) for u, r in rep.assignment.items()}, "relinked": rep.relinked,
            "changed": rep.new > 0 or rep.relinked > 0}


# -- assign --------------------------------------------------------------------------------------

def _members(ctx: StepContext, ws: str) -> dict[str, str] | None:
    """user -> role of the job's workspace (recorded by the Workspace's members step), or None
    when the workspace is not managed by kiln (then anyone may be listed)."""
    store = ctx.store()
    try:
        value = store.get_kv("workspace", ws)
    finally:
        store.close()
    return None if value is None else dict(value.get("members") or {})


def labeling_assign(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    ws, name = ctx.workspace, ctx.name
    members = _members(ctx, ws)
    people = [a.user for a in spec.annotators] + [r for r in spec.reviewers if r not in {a.user for a in spec.annotators}]
    if members is None and ctx.config.policy_enforced():
        # with a policy, a Label Studio account is a workspace member's only (#26)
        raise ConfigError(f"LabelingJob {ws}/{name}: workspace {ws} has no applied Workspace spec, so none of "
                          f"{', '.join(people)} is known to be a member of it and no Label Studio account is made",
                          hint=f"add a Workspace {ws} with these users as members (role annotator, or developer "
                               "for reviewers) and apply it first")
    if members is not None:
        missing = [u for u in people if u not in members]
        if missing:
            raise ConfigError(f"LabelingJob {ws}/{name}: {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not a member of workspace {ws}",
                              hint=f"members: {', '.join(sorted(members)) or 'none'}; add them to the Workspace spec")
        # the roles as applied now (validate checked the spec's): annotate / review permissions
        wrong = [f"{u} ({members[u]}) may not {what}" for what, users in
                 (("annotate", [a.user for a in spec.annotators]), ("review", spec.reviewers))
                 for u in users if what not in ROLE_PERMISSIONS.get(members[u], frozenset())]
        if wrong:
            raise ConfigError(f"LabelingJob {ws}/{name}: {'; '.join(wrong)} in workspace {ws}",
                              hint="reviewers must be developers or admins of the workspace")
    client = connect(ctx.config)
    pid = project_id(ctx, client)
    before = set(client.users())
    users = {u: client.ensure_user(u) for u in people}
    n_views = len(client._call(client.ls.views.list, project=pid, what="list views"))
    views = client.ensure_annotator_views(pid, [a.user for a in spec.annotators])
    new_views = len(client._call(client.ls.views.list, project=pid, what="list views")) - n_views
    return {"project": pid, "users": users, "views": views,
            "changed": bool(set(users) - before) or new_views > 0}


# -- completion ----------------------------------------------------------------------------------

def _reviewer_ids(client: LabelingClient, spec: LabelingJobSpec) -> list[int]:
    known = client.users()
    return [known[r] for r in spec.reviewers if r in known]


def check_completion(client: LabelingClient, pid: int, spec: LabelingJobSpec) -> tuple[dict[str, Any], list[dict]]:
    tasks = client.export_tasks(pid)
    known = client.users()
    c = completion(tasks, spec.completion.rule, reviewer_ids=[known[r] for r in spec.reviewers if r in known],
                   min_count=spec.completion.minCount, overlap=spec.overlap)
    emails = {uid: email for email, uid in known.items()}
    prog = assignment.progress(tasks, emails)
    moves = renames(spec)
    per_class: dict[str, int] = {}
    for k, n in prog.per_class.items():
        per_class[moves.get(k, k)] = per_class.get(moves.get(k, k), 0) + n
    return {**c.as_dict(), "progress": {**prog.as_dict(), "per_class": dict(sorted(per_class.items()))}}, tasks


def labeling_wait_complete(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    client = connect(ctx.config)
    pid = project_id(ctx, client)
    timeout = float(ctx.args.get("timeout", "0") or 0)
    interval = float(ctx.args.get("interval", "10") or 10)
    deadline = time.monotonic() + timeout
    while True:
        state, _ = check_completion(client, pid, spec)
        if state["complete"] or time.monotonic() + interval > deadline:
            return {"project": pid, **state, "changed": False}  # an observation, not a change
        time.sleep(interval)


# -- export --------------------------------------------------------------------------------------

def _annotations_hash(tasks: list[dict[str, Any]]) -> str:
    slim = sorted([(t.get("data", {}).get(KEY_FIELD), bool(t.get("data", {}).get(DELETED_FIELD)),
                    sorted(json.dumps([a.get("id"), a.get("result"), a.get("was_cancelled"),
                                       a.get("updated_at")], sort_keys=True, default=str)
                           for a in t.get("annotations", [])))
                   for t in tasks], key=lambda x: str(x[0]))
    return hashlib.sha256(json.dumps(slim, default=str).encode()).hexdigest()


def labeling_export(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(LabelingJob).spec
    ws, name = ctx.workspace, ctx.name
    client = connect(ctx.config)
    pid = project_id(ctx, client)
    state, tasks = check_completion(client, pid, spec)
    if not state["complete"]:
        return {"exported": False, "reason": f"not complete: {state['reason']}", "changed": False}
    home = job_home(ctx.config, ws, name)
    marker = home / "exported.json"
    digest = _annotations_hash(tasks)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("annotations") == digest:
            return {"exported": True, **{k: v for k, v in done.items() if k != "annotations"}, "new": False,
                    "changed": False}
    moves = renames(spec)
    if moves:  # annotations made before a rename that the project step has not rewritten (yet)
        for t in tasks:
            for a in t.get("annotations", []):
                a["result"] = _renamed(a.get("result") or [], moves) or a.get("result")
    items = dataset_items(ctx, spec)
    stage = home / "export"
    shutil.rmtree(stage, ignore_errors=True)
    out_ws, out_name = output_dataset(spec, ws)
    added_to = _current_version(ctx.config, out_ws, out_name) if f"{out_ws}/{out_name}" != items.dataset else None
    # the job's own dataset keeps the items nobody labelled (a min-count rule completes before
    # every item is): a version without them would lose data; another dataset gets labelled ones only
    conv = to_content(tasks, task=spec.task, classes=classes(spec), root=items.folder,
                      reviewer_ids=_reviewer_ids(client, spec), mask_dir=home / "masks",
                      include_unlabelled=added_to is None)
    content = conv.content
    fmt = output_format(spec.task, items.content.format)
    union = home / "union"
    shutil.rmtree(union, ignore_errors=True)
    if added_to is not None:  # labels for another dataset: its next version adds them (kiln.data.merge)

        current = load_as(ctx.config.repo / "data" / out_ws / out_name, spec.task)
        fmt = current.format or fmt
        content = merge_contents(current, content, union)
    # a staging folder: a crash leaves a partial one, which the next try removes first
    written = export_format(content, stage, fmt)
    versioning = _output_versioning(ctx, out_ws, out_name)
    lineage = {"source": f"labelingjob:{ws}/{name}", "labelingJob": {
        "job": f"LabelingJob/{ws}/{name}", "project": pid, "url": f"{client.url}/projects/{pid}",
        "rule": spec.completion.rule, "annotated": state["done"], "skipped": conv.skipped,
        "deleted": conv.deleted, "unlabelled": len(conv.unlabelled)},
        "derivedFrom": {"dataset": items.dataset, "version": items.version}}
    if added_to is not None:
        lineage["addedTo"] = {"dataset": f"{out_ws}/{out_name}", "version": added_to,
                              "items": len(conv.content.items)}  # labelled items added
    out = write_version(ctx.config, out_ws, out_name, stage, written, lineage,
                        message=f"kiln: dataset {out_ws}/{out_name} labelled by LabelingJob {ws}/{name}",
                        **versioning)
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(union, ignore_errors=True)
    result = {"dataset": f"{out_ws}/{out_name}", "version": out["version"], "number": f"v{out['number']}",
              "items": len(content.items), "skipped": len(conv.skipped), "deleted": len(conv.deleted),
              "format": fmt, "commit": out["commit"]}
    write_json_atomic(marker, {**result, "annotations": digest}, indent=None)
    return {"exported": True, **result, "new": out["new"], "changed": True}


def _current_version(config: KilnConfig, ws: str, name: str) -> str | None:
    """The current version id of dataset ``ws/name`` when it has one checked out, else None."""
    from kiln.data.versions_log import read_versions_log

    current = (read_versions_log(config.repo / "data" / ws / f"{name}.versions.json") or {}).get("current")
    return current if current and (config.repo / "data" / ws / name).is_dir() else None


def _output_versioning(ctx: StepContext, ws: str, name: str) -> dict[str, Any]:
    """push/remote/commit of the output Dataset's spec, when kiln manages it."""
    store = ctx.store()
    try:
        rec = store.get(f"Dataset/{ws}/{name}")
    finally:
        store.close()
    v = (((rec.spec if rec else {}) or {}).get("spec") or {}).get("versioning") or {}
    return {"push": v.get("push", True), "remote": v.get("remote"), "commit": v.get("commit", "manual")}
