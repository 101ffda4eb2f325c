"""``kiln infer MODEL[:VERSION|@alias] DATASET[@version]``: batch inference of a registered model
over a dataset version (AI Studio's "inference test"; results can become training data).

Output (``--out``, default ``.kiln/predictions/<model>-v<N>/<dataset>-<version id[:12]>/``)::

    predictions.jsonl   one line per item, in dataset order:
                        {"item": "test/3/0042.png" | <row number>, "split": "test",
                         "prediction": <what a Deployment of the model answers for the item>}

The prediction has the served shape (``kiln.bento.predictions`` builds both), so a script reads
batch and online results alike: ``[{"score", "label"}, ...]`` for an image's classes (best first,
the top 5), ``{"label", "score"}`` for a table row's class, a number for regression, a list for
dimension reduction, ``{"cluster", "distance" | "score"}`` for clustering, ``[{"<label>": {"xmin",
"ymin", "xmax", "ymax"}, "score"}, ...]`` for detection and instance segmentation (in the image's
pixels), a category id per pixel for semantic segmentation.

    summary.json        {"model", "version", "dataset", "datasetVersion", "items", "seconds"}

Tables: the label column is the one ``dataset_label`` names (as for training and ``kiln data
export``); raw rows get the model's own copy of its training data's fitted preprocessing, as
serving applies it, so batch and online predictions agree.

``--as-version NEW`` also writes the items with their predictions as a new version of dataset
``NEW`` (``data/<ws>/NEW``, DVC-versioned like any dataset, through ``dataset_steps.write_version``)
in the model's task: classification as labels, detection as boxes, instance segmentation as
boxes with masks, semantic segmentation as mask PNGs, tables as a CSV whose label column holds
the predictions. Onto an existing dataset the new version *adds* them to its current items
(``kiln.data.merge``; to ``train``, or the ``--split`` given, when it is split); ``--replace``
makes a version of the predictions alone.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from kiln.config import load_config
from kiln.errors import ConfigError, KilnError

TOP_K = 5
# what a prediction is filed as: labels, a table's label column, boxes, instance masks, mask PNGs
# (a dimension reduction's components are no label)
AS_VERSION_TASKS = ("classification", "regression", "clustering", "detection", "instance-segmentation",
                    "semantic-segmentation")


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``name``, ``name:3``/``name:v3`` or ``name@alias``."""
    m = re.fullmatch(r"([a-z0-9][-a-z0-9]*)(?::v?(\d+)|@([a-z0-9][-a-z0-9]*))?", ref)
    if not m:
        raise ConfigError(f"cannot read model reference {ref!r}", hint="write NAME, NAME:VERSION or NAME@ALIAS")
    return m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3)


def parse_dataset_ref(ref: str, repo: Path, workspace: str | None = None) -> tuple[str, str, str]:
    """``[WS/]NAME[@VERSION]`` (or ``Dataset/WS/NAME``, ``-w WS``: ``kiln.api.refs``) -> (workspace,
    name, version), among the datasets of ``repo`` that have versions."""
    from kiln.api.refs import find_key
    from kiln.controller.dataset_steps import DATA_ROOT

    name, _, version = ref.partition("@")
    keys = [f"Dataset/{p.parent.name}/{p.name.removesuffix('.versions.json')}"
            for p in (repo / DATA_ROOT).glob("*/*.versions.json")]
    _, ws, nm = find_key(name, keys, kind="Dataset", workspace=workspace,
                         absent="{} has no versions (apply its Dataset spec first)").split("/")
    return ws, nm, version or "latest"


def _predict_batch(algo: Any, model: Any, batch: Any) -> tuple[list[Any], list[Any]]:
    """(the served predictions, what ``--as-version`` files) for one batch (rows or image paths).
    The two differ for detectors only: a served box has no category id or instance mask, which a
    new dataset version keeps."""
    import numpy as np

    from kiln.bento import predictions as P

    classes = [str(c) for c in model.meta.get("classes") or ()]

    def label(k: int) -> str:
        return classes[k] if 0 <= k < len(classes) else str(k)

    if algo.data_type == "tabular":
        xx = algo.features(model.meta, batch) if algo.task in ("classification", "clustering") else None
        pipe = model.native
        if algo.task == "classification" and hasattr(pipe[-1], "predict_proba"):
            out = [P.best(p, label) for p in pipe.predict_proba(xx)]
        elif algo.task == "classification":
            out = [{"label": str(p)} for p in algo.predict(model, batch)]
        elif algo.task == "clustering" and hasattr(pipe[-1], "predict_proba"):  # a mixture
            out = [P.clustered(p, "probabilities") for p in pipe.predict_proba(xx)]
        elif algo.task == "clustering" and hasattr(pipe[-1], "transform"):  # k-means
            out = [P.clustered(p, "distances") for p in pipe.transform(xx)]
        elif algo.task == "clustering":
            out = [P.clustered(p, None) for p in algo.predict(model, batch)]
        else:  # regression: a number; dimension reduction: the components, as the server answers
            out = [float(np.reshape(p, -1)[0]) if np.size(p) == 1 else np.asarray(p, dtype=np.float64).tolist()
                   for p in algo.predict(model, batch)]
        return out, out
    if algo.task == "classification":  # every image classifier, whatever its framework returns
        out = [P.ranked(p, label, TOP_K) for p in algo.probabilities(model, batch)]
        return out, out
    raw = algo.predict(model, batch)
    if algo.task in ("detection", "instance-segmentation"):
        return [P.boxes((d["label"], d["box"], d["score"]) for d in found) for found in raw], raw
    out = [P.mask(m) for m in raw]  # a mask of category ids, as lists
    return out, out


@click.command("infer")
@click.argument("model_ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.argument("dataset_ref", metavar="[WS/]DATASET[@VERSION]")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Output folder.")
@click.option("--as-version", "as_version", default=None, metavar="NEW_DATASET",
              help="Also write the predicted labels as a new version of dataset NEW_DATASET.")
@click.option("--split", default=None,
              help="Only items of this split (train, validation, test); with --as-version onto a split dataset, "
                   "the split the new items join (default train).")
@click.option("--replace", is_flag=True, default=False,
              help="With --as-version onto an existing dataset: the new version holds the predictions only "
                   "(default: they are added to its current items).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("-w", "--workspace", default=None, help="The dataset's workspace.")
@click.pass_context
def infer(ctx: click.Context, model_ref: str, dataset_ref: str, out: str | None, as_version: str | None,
          split: str | None, replace: bool, batch_size: int, workspace: str | None) -> int:
    """Predict every item of a dataset version with a registered model."""
    from kiln.controller.dataset_steps import data_rel, dataset_label
    from kiln.data.versioning import DatasetRepo

    if replace and not as_version:
        raise ConfigError("--replace applies to --as-version only", hint="add --as-version NEW_DATASET")
    cfg = load_config((ctx.find_root().obj or {}).get("repo") or ".")
    repo = cfg.repo
    ws, ds, dver = parse_dataset_ref(dataset_ref, repo, workspace)
    name, v, algo, model, mdir = _load_model(repo, model_ref)
    if as_version and algo.task not in AS_VERSION_TASKS:  # before predicting: nothing to file them as
        raise KilnError(f"--as-version: model {name} v{v} is a {algo.task} model; its predictions cannot become "
                        "a dataset version",
                        hint=f"--as-version files {', '.join(AS_VERSION_TASKS)} predictions; "
                             "drop it to write predictions.jsonl only")
    rel = data_rel(ws, ds)
    dr = DatasetRepo(repo, remote_url=cfg.dvc.remote)
    dv = dr.resolve(rel, dver)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cfg.kiln_dir()) as tmp:
        root = Path(tmp) / "data"
        dr.materialize(rel, dv.id, root)
        td, tabular = _train_data(repo, root, dataset_label(cfg, ws, ds, dv.lineage), algo.task)
        pipeline = _model_transform(mdir, root, f"{name} v{v}", f"{ws}/{ds} v{dr.number(rel, dv.id)}") if tabular else None
        keys, splits, batches = _batches(td, tabular, split, batch_size)
        if not keys:
            raise KilnError(f"dataset {ws}/{ds}@{dver} has no items" + (f" in split {split!r}" if split else ""))
        preds: list[Any] = []  # served shape, written
        filed: list[Any] = []  # what --as-version files (a detector's boxes with category ids, masks)
        with click.progressbar(batches, label=f"{name} v{v} on {ds} {dver}", file=sys.stderr,
                               item_show_func=lambda b: None) as bar:
            for b in bar:
                shown, kept = _predict_batch(algo, model, b if pipeline is None else pipeline.transform(b))
                preds.extend(shown)
                filed.extend(kept)
        out_dir = Path(out) if out else cfg.kiln_dir() / "predictions" / f"{name}-v{v}" / f"{ds}-{dv.id[:12]}"
        _write_predictions(out_dir, keys, splits, preds)
        summary = {"model": name, "version": v, "dataset": f"{ws}/{ds}", "datasetVersion": dv.id,
                   "items": len(keys), "seconds": round(time.perf_counter() - t0, 3)}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        click.echo(f"{len(keys)} predictions -> {out_dir / 'predictions.jsonl'}")
        if as_version:
            nv = _as_version(cfg, ws, as_version, root, td, keys, filed, tabular, algo, model.meta, replace=replace,
                             split=split, source={"dataset": f"{ws}/{ds}", "version": dv.id})
            click.echo(f"dataset {ws}/{as_version} {nv}")

    return 0


def _load_model(repo: Path, model_ref: str) -> tuple[str, int, Any, Any, Path]:
    """(name, version, algorithm, loaded model, version folder) of a registered model a kiln
    algorithm trained."""
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home

    name, version, alias = parse_model_ref(model_ref)
    reg = Registry(default_home(repo))
    v = reg.resolve(name, version, alias)
    kdir = reg.path(name, v) / "kiln-model"
    if not (kdir / "meta.json").is_file():
        raise KilnError(f"model {name} v{v} was not trained by a kiln algorithm (no kiln-model/ in it)",
                        hint="batch inference covers built-in algorithms; serve your own model with a Deployment")
    meta = json.loads((kdir / "meta.json").read_text())
    algo = get_algorithm(meta["algorithm"])
    return name, v, algo, algo.load(kdir), reg.path(name, v)


def _model_transform(model_dir: Path, root: Path, model: str, dataset: str) -> Any:
    """The fitted preprocessing to apply to the dataset's rows before the model, as serving does:
    the model's copy of its training data's fit (``Registry.register(preprocess_from=...)``) for
    raw rows; None for rows that carry that very fit already (the model's own training data) or
    for a model without one. Rows transformed by another fit (another version's train rows)
    cannot be used: they are an error, not silently wrong predictions."""
    from kiln.bento.registry import SERVING_FILE
    from kiln.data.preprocess import load_pipeline

    pre = json.loads((model_dir / SERVING_FILE).read_text()).get("preprocess") if (model_dir / SERVING_FILE).is_file() else None
    if not pre:
        return None
    fitted = model_dir / pre / ".kiln" / "preprocess.joblib"
    own = root / ".kiln" / "preprocess.joblib"
    if not own.is_file():
        return load_pipeline(model_dir / pre)
    if own.read_bytes() == fitted.read_bytes():
        return None
    raise KilnError(f"dataset {dataset} was preprocessed by another fit than the one model {model} was trained with",
                    hint="infer on the dataset version the model was trained on (its dataset_version label), "
                         "or on raw rows (a dataset without preprocessing): kiln applies the model's own fit to them")


def _train_data(repo: Path, root: Path, label: str | None, task: str) -> tuple[Any, bool]:
    """The materialised dataset at ``root`` as the algorithms read it, and whether it is a table
    (``label``: its label column, ``dataset_label``; None: the CSV reader's default; ``task``:
    the model's, which picks the reading of a layout that holds several, e.g. COCO)."""
    from kiln.controller.experiment.data import load_train_data  # builds the dataset models (0.3 s)
    from kiln.data.formats import FORMATS, detect_format

    fmt = detect_format(root)
    tabular = fmt == "csv"
    # a layout that cannot hold the model's task (captured images in a folder, for a detector)
    # is read as it reads itself: predicting needs its images, not its labels
    image_task = task if task in FORMATS[fmt].tasks else None
    data_info = {"path": str(root.relative_to(repo)) if root.is_relative_to(repo) else str(root), "format": fmt,
                 "type": "tabular" if tabular else "image", "task": "tabular" if tabular else image_task,
                 "label": label}
    if tabular and task in ("clustering", "dimension-reduction"):
        data_info["problem"] = task  # no default label: the model was fitted on every column
    if not root.is_relative_to(repo):
        data_info["path"] = str(root)
    return load_train_data(repo, data_info), tabular


def _batches(td: Any, tabular: bool, split: str | None, batch_size: int) -> tuple[list[Any], list[Any], list[Any]]:
    """(item keys, their splits, batches of rows or image paths) in dataset order."""
    if tabular:
        x, _ = td.table(split, labelled=False)  # rows without a label are what one predicts
        keys: list[Any] = [int(i) for i in x.index]
        splits = [td.row_splits.get(k) if td.row_splits else None for k in keys]
        return keys, splits, [x.iloc[i:i + batch_size] for i in range(0, len(x), batch_size)]
    items = [it for it in td.content.items if split is None or it.split == split]
    paths = [td.content.abspath(it.path) for it in items]
    return ([it.path for it in items], [it.split for it in items],
            [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)])


def _write_predictions(out_dir: Path, keys: list[Any], splits: list[Any], preds: list[Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_out = out_dir / ".predictions.jsonl.tmp"
    with open(tmp_out, "w") as f:
        for k, s, p in zip(keys, splits, preds):
            f.write(json.dumps({"item": k, "split": s, "prediction": jsonable(p)}) + "\n")
    os.replace(tmp_out, out_dir / "predictions.jsonl")


def _top_label(p: Any) -> Any:
    """The label a prediction files in a dataset: an image's best class, a row's class or cluster."""
    if isinstance(p, list) and p and isinstance(p[0], dict):
        return p[0]["label"]
    if isinstance(p, dict):
        return p["label"] if "label" in p else p.get("cluster")
    return p


def jsonable(p: Any) -> Any:
    """A prediction as JSON holds it: numpy arrays (a semantic mask of category ids) and numpy
    scalars become lists and numbers, the shape EasyMaker's responses use."""
    if hasattr(p, "tolist"):
        return p.tolist()
    if isinstance(p, dict):
        return {k: jsonable(v) for k, v in p.items()}
    if isinstance(p, (list, tuple)):
        return [jsonable(v) for v in p]
    return p


def prediction_content(task: str, root: Path, keys: list[Any], preds: list[Any], meta: dict[str, Any],
                       mask_dir: Path, split: str | None) -> Any:
    """The predictions as a dataset of the model's task (``kiln.data.model``), item paths under
    ``root``: classification -> labels, detection -> boxes, instance segmentation -> boxes with
    their RLE masks, semantic segmentation -> a mask PNG of category ids per image (written to
    ``mask_dir``). Categories are the model's, so merging onto its training data matches them."""
    import numpy as np
    from PIL import Image

    from kiln.data.model import Annotation, DatasetContent, Item

    names = [str(c) for c in meta["classes"]]
    ids = [int(i) for i in meta.get("category_ids") or range(len(names))]
    by_name = dict(zip(names, ids))
    items = []
    for k, p in zip(keys, preds):
        it = Item(path=str(k), split=split)
        if task == "classification":
            it.label = str(_top_label(p))
        elif task in ("detection", "instance-segmentation"):
            for d in p:
                x1, y1, x2, y2 = (float(v) for v in d["box"])
                cid = int(d["category_id"]) if "category_id" in d else by_name[str(d["label"])]
                it.annotations.append(Annotation(category_id=cid, bbox=[x1, y1, x2 - x1, y2 - y1],
                                                 rle=d.get("mask") if task == "instance-segmentation" else None))
        elif task == "semantic-segmentation":
            arr = np.asarray(p)
            out = mask_dir / (Path(str(k)).with_suffix("").as_posix().replace("/", "__") + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            # category ids as pixel values: 8 bits when they fit, as the segmentation formats read them
            Image.fromarray(arr.astype(np.uint8 if arr.max(initial=0) < 256 else np.int32)).save(out, format="PNG")
            it.mask = os.path.relpath(out, root)
        else:
            raise KilnError(f"--as-version: {task} predictions cannot become a dataset version",
                            hint="--as-version writes classification, detection, segmentation and tabular datasets")
        items.append(it)
    return DatasetContent(task=task, root=root, format=None, items=items, categories=dict(zip(ids, names)))


def _as_version(cfg: Any, ws: str, new: str, root: Path, td: Any, keys: list[Any], preds: list[Any],
                tabular: bool, algo: Any, meta: dict[str, Any], *, replace: bool, split: str | None,
                source: dict[str, str]) -> str:
    """Write the predictions as the next version of dataset ``new``: added to its current items
    (to ``split``, default ``train``, when it is split), or, with ``replace``, instead of them."""
    from kiln.controller.dataset_steps import data_rel, write_version
    from kiln.data.formats import export as export_format
    from kiln.data.formats import load
    from kiln.data.merge import load_as, merge_contents, merge_tables, output_format
    from kiln.data.versioning import DatasetRepo

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", new):
        raise ConfigError(f"--as-version {new!r} is not a valid dataset name", hint="lower-case letters, digits, '-'")
    repo = cfg.repo
    rel = data_rel(ws, new)
    dr = DatasetRepo(repo, remote_url=cfg.dvc.remote)
    current = dr.current(rel) if (repo / rel).is_dir() else None
    lineage: dict[str, Any] = {"source": f"kiln infer ({algo.name})", "predictedBy": algo.name,
                               "derivedFrom": source, "items": len(keys)}
    with tempfile.TemporaryDirectory(dir=cfg.kiln_dir()) as tmp:
        stage = Path(tmp) / new
        base = load_as(repo / rel, None if tabular else algo.task) if current and not replace else None
        if tabular:
            frame = td.content.table.frame.loc[keys].copy()
            label = td.content.table.label or "prediction"
            if algo.task == "clustering":  # a column of its own: a label the Dataset names (kept for
                # evaluation) or a column the model clustered on is never to be overwritten
                label = next(c for c in ("cluster", "predicted_cluster", "kiln_cluster") if c not in frame.columns)
            frame[label] = [_top_label(p) for p in preds]
            if base is not None:
                if base.table is None:
                    raise KilnError(f"--as-version {new}: dataset {ws}/{new} holds {base.task} items, not table rows",
                                    hint="name another dataset, or replace this one with --replace")
                merge_tables(base, frame, stage, split=split or "train")
            else:
                stage.mkdir(parents=True)
                frame.to_csv(stage / "data.csv", index=False)
            # the label stays where the source had it: say which column it is (dataset_label), and
            # count classes and type columns on it rather than on the last column
            lineage["label"] = label
            written = load(stage, "csv", label=label)
        else:
            content = prediction_content(algo.task, root, keys, preds, meta, Path(tmp) / "masks", None)
            fmt = output_format(content.task, td.content.format)
            if base is not None:
                fmt = base.format or fmt
                content = merge_contents(base, content, Path(tmp) / "union", split=split or "train")
            written = export_format(content, stage, fmt)
        if base is not None:
            lineage["addedTo"] = {"dataset": f"{ws}/{new}", "version": current, "items": len(keys)}
        elif current:
            lineage["replaced"] = current
        out = write_version(cfg, ws, new, stage, written, lineage,
                            message=f"kiln: dataset {ws}/{new} from kiln infer")
    how = "added to" if base is not None else "replacing" if current else "new dataset"
    prev = f" v{dr.number(rel, current)}" if current else ""
    return f"v{out['number']} ({out['version'][:12]}): {len(keys)} item(s), {how}{prev}"
