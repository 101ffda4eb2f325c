"""The prepare-data step: resolve the dataset version an experiment trains on and materialise
it read-only in the experiment's folder (a new dataset version starts a new run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.api import Experiment
from kiln.controller.dataset_steps import applied_dataset_spec, data_rel, dataset_label
from kiln.controller.experiment.home import experiment_home, file_lock, log, run_dir, run_folder, write_json
from kiln.controller.steps import StepContext
from kiln.data.formats import detect_format
from kiln.data.versioning import DatasetRepo
from kiln.errors import ConfigError, KilnError, NotFound


def prepare_data(ctx: StepContext) -> dict[str, Any]:
    """Resolve the dataset version (latest | vN | hash) and materialise it read-only."""
    from kiln.controller.experiment.automl import mark_experiment_start

    spec = ctx.model(Experiment).spec
    ws, name = ctx.workspace, ctx.name
    ref = spec.dataset
    dws = ref.workspace or ws
    rel = data_rel(dws, ref.name)
    dr = DatasetRepo(ctx.config.repo, remote_url=ctx.config.dvc.remote)
    if not (ctx.config.repo / f"{rel}.versions.json").is_file():
        raise KilnError(f"experiment {ws}/{name}: dataset {dws}/{ref.name} has no versions yet",
                        hint=f"apply the Dataset {ref.name!r} first (its spec must be in this repository)")
    try:
        v = dr.resolve(rel, ref.version)
    except NotFound as exc:
        raise KilnError(f"experiment {ws}/{name}: {exc}", hint=exc.hint or "see `kiln data versions`") from None
    number = f"v{dr.number(rel, v.id)}"
    home = experiment_home(ctx.config, ws, name)
    dest = home / "data" / v.id
    with file_lock(home / "data.lock"):
        if not dest.is_dir():
            # hard links to DVC's cache objects (read-only already): the data is on disk once
            dr.materialize(rel, v.id, dest, link=True)
            for root, _, files in os.walk(dest):  # read-only: trials must not change the data
                for f in files:
                    os.chmod(os.path.join(root, f), 0o444)
    ds = dataset_meta(ctx, dws, ref.name, dest, v.lineage)
    if ds["type"] == "tabular" and ds["problem"] is None:
        # a table without a task: a clustering / dimension-reduction experiment reads it without
        # the default label (the last column), so that column is a feature too
        ds["problem"] = unsupervised_task(spec)
    _refuse_resplit_of_fitted_table(spec, dest, ds, f"{dws}/{ref.name} {number}")
    info = {"dataset": f"{dws}/{ref.name}", "version": v.id, "number": number,
            "path": str(dest.relative_to(ctx.config.repo)), **ds}
    run = run_dir(ctx.config, ws, name, ctx.spec_hash)
    prev = read_json(run / "data.json") or {}
    if prev.get("version") and prev["version"] != v.id:
        # same spec, new data: the old run's trials/selection/registration must not be reused
        old = run.with_name(f"{run.name}-{prev['version'][:8]}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run, old)
        log(f"dataset moved from {prev.get('number', '?')} to {number}: a new run (the previous one is in {old.name})")
    write_json(run_folder(ctx) / "data.json", info)
    mark_experiment_start(ctx, spec)  # an AutoML time budget counts from here (imports included)
    log(f"dataset {dws}/{ref.name} {number} ({v.id[:12]}, {v.files} files) -> {info['path']}")
    return {"dataset": info["dataset"], "version": v.id, "number": number, "task": info["task"]}


def _refuse_resplit_of_fitted_table(spec: Any, root: Path, ds: dict[str, Any], shown: str) -> None:
    """A table's fitted preprocessing learnt from the version's own train rows: another split
    would validate and test on rows the fit has seen (optimistic metrics), so it is an error."""
    if ds["type"] != "tabular" or not (root / ".kiln" / "preprocess.joblib").is_file():
        return
    where = [("spec.split", spec.split)]
    if spec.algorithm is not None:
        where.append(("spec.algorithm.split", spec.algorithm.split))
    if spec.automl is not None:
        where += [(f"spec.automl.candidates[{i}].split", c.split) for i, c in enumerate(spec.automl.candidates)]
    for field, split in where:
        if split is not None:
            raise ConfigError(f"{field} re-splits dataset {shown}, whose preprocessing was fitted on the "
                              "dataset's own train split: validation and test rows would have been seen by the fit",
                              hint="remove the split from the Experiment and set it in the Dataset's spec.splits")


def unsupervised_task(spec: Any) -> str | None:
    """clustering | dimension-reduction when the experiment trains for it (its task, else its
    built-in algorithm's or all its AutoML candidates'), else None."""
    from kiln.algorithms.catalogue import CATALOGUE
    from kiln.data.model import UNSUPERVISED

    names = [spec.algorithm.name] if spec.algorithm is not None else []
    names += [c.name for c in spec.automl.candidates] if spec.automl is not None else []
    tasks = {spec.task} if spec.task else {CATALOGUE[n].task if n in CATALOGUE else None for n in names}
    task = tasks.pop() if len(tasks) == 1 else None
    return task if task in UNSUPERVISED else None


def dataset_meta(ctx: StepContext, ws: str, name: str, root: Path, lineage: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Type, task, format and label column of the dataset, from its applied spec when recorded,
    else detected from the files."""
    try:
        doc = applied_dataset_spec(ctx.config, ws, name)
    except Exception:  # noqa: BLE001 - the record is a convenience; the files decide below
        doc = {}
    fmt = doc.get("format") or "auto"
    if fmt in ("auto", "masks"):
        fmt = detect_format(root)
    tabular = doc.get("type") == "tabular" or fmt == "csv"
    label = dataset_label(ctx.config, ws, name, lineage, applied=doc)
    return {"format": fmt, "type": "tabular" if tabular else "image",
            "task": "tabular" if tabular else (doc.get("task") or "classification"),
            "label": label, "problem": doc.get("task")}
