"""The export-onnx step (export and parity check) and packaging the selected model for the
registry: the serving file at the top, what ``Algorithm.load`` reads in ``kiln-model/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kiln._util.fs import link_or_copy, read_json
from kiln.algorithms.onnx import export_and_check
from kiln.algorithms.registry import get_algorithm
from kiln.algorithms.vision import IMAGENET_MEAN, IMAGENET_STD
from kiln.api import Experiment
from kiln.controller.experiment.command import detect_framework
from kiln.controller.experiment.data import load_train_data
from kiln.controller.experiment.home import log, run_folder, write_json
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def selected_trial(run: Path) -> dict[str, Any]:
    sel = read_json(run / "selected.json")
    if not sel:
        raise KilnError("no trial has been selected for this spec yet", hint="the select task must run first")
    return sel["selected"]


def _sample(ctx: StepContext, run: Path, meta: dict[str, Any], n: int) -> Any:
    data = read_json(run / "data.json")
    td = load_train_data(ctx.config.repo, data)
    split = next((s for s in ("test", "validation", "train") if td.has_split(s)), "train")
    if td.task == "tabular":
        x, _ = td.table(split)
        return x.iloc[:n]
    return [td.content.abspath(it.path) for it in td.items(split)[:n]]


def export_onnx(ctx: StepContext) -> dict[str, Any]:
    """Export the selected model to ONNX and check it against the native model (parity); a
    trial the AutoML candidates task exported already (``onnx.json`` in its folder, for the
    model it holds now, at this tolerance) is not exported again."""
    spec = ctx.model(Experiment).spec
    run = run_folder(ctx)
    sel = selected_trial(run)
    tdir = run / "trials" / sel["trial"]
    rep = current_export(spec, tdir)
    if rep:
        log(f"ONNX parity passed (exported by the candidates task): {rep['summary']}")
    else:
        rep = export_trial(ctx, spec, run, sel["trial"])
    rep = {k: v for k, v in rep.items() if k != "modelStamp"}  # the trial's bookkeeping only
    write_json(run / "onnx.json", rep)
    return rep


def current_export(spec: Any, tdir: Path) -> dict[str, Any] | None:
    """The parity report of the trial's ``model.onnx`` when it is of the model the trial holds
    now, at the spec's tolerance; else None (export it)."""
    rep = read_json(tdir / "onnx.json")
    if rep and (tdir / "model.onnx").is_file() and rep.get("tolerance") == _tolerance(spec) \
            and rep.get("modelStamp") == _model_stamp(tdir / "model"):
        return rep
    return None


def _tolerance(spec: Any) -> float:
    return spec.registration.onnxTolerance if spec.registration else 1e-4


def _model_stamp(mdir: Path) -> int | None:
    """Which trained model an export is of: its meta file's mtime (a retrained trial rewrites it)."""
    try:
        return (mdir / "meta.json").stat().st_mtime_ns
    except OSError:
        return None


def export_trial(ctx: StepContext, spec: Any, run: Path, trial: str) -> dict[str, Any]:
    """Export one trial's model to ``trials/<trial>/model.onnx``, checked against the native
    model; the report is written beside it (``onnx.json``) and returned."""
    tdir = run / "trials" / trial
    mdir = tdir / "model"
    tol = _tolerance(spec)
    meta = read_json(mdir / "meta.json") or {}
    if not meta.get("algorithm"):
        if (mdir / "model.onnx").is_file():  # the user's script exported it itself
            return {"file": "model.onnx", "checked": False, "note": "exported by the training command"}
        raise KilnError(f"register.export [onnx]: trial {trial} was trained by a command and saved no "
                        "model.onnx in $KILN_OUTPUT_DIR", hint="export ONNX in your script, or drop register.export")

    algo = get_algorithm(meta["algorithm"])
    if not getattr(algo, "onnx_servable", True):
        raise KilnError(f"register.export [onnx]: algorithm {meta['algorithm']}'s ONNX graph takes one unbatched "
                        "image, and a Deployment sends batches", hint="drop register.export: the model is registered "
                        "as TorchScript, which serves batches")
    model = algo.load(mdir)
    sample = _sample(ctx, run, meta, 64 if algo.data_type == "tabular" else 8)
    # written in a folder beside and renamed into place: after registration model.onnx is a hard
    # link to the registry's copy, and an export re-run must not rewrite that shared file in place
    tmpdir = tdir / ".onnx-export"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    try:
        report = export_and_check(algo, model, tmpdir / "model.onnx", sample, tol)
        if report is None:
            raise KilnError(f"register.export [onnx]: algorithm {meta['algorithm']} has no ONNX exporter for this model",
                            hint="drop register.export, or use another algorithm")
        os.replace(tmpdir / "model.onnx", tdir / "model.onnx")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log(f"ONNX parity passed: {report.summary()}")
    rep = {"file": "model.onnx", "checked": True, "samples": report.samples, "compared": report.compared,
           "tolerance": report.tolerance,
           "maxAbsDiff": max(report.max_abs_diff) if report.max_abs_diff else 0.0, "summary": report.summary(),
           "modelStamp": _model_stamp(mdir)}
    write_json(tdir / "onnx.json", rep)
    return rep


def _serving(algo: Any, meta: dict[str, Any], framework: str, file: str) -> dict[str, Any]:
    # the serving layer's tasks: an instance segmenter answers as a detector (boxes, labels and
    # scores per instance; EasyMaker's formats have no instance masks), a semantic one with masks;
    # a dimension reduction's components come back as the numbers they are (the regression path
    # answers an instance's outputs as a list)
    task = {"semantic-segmentation": "segmentation", "instance-segmentation": "detection",
            "dimension-reduction": "regression"}.get(algo.task, algo.task)
    cfg: dict[str, Any] = {"framework": framework, "file": file, "task": task}
    if algo.data_type == "tabular":
        cfg["input"] = "tabular"
        cfg["features"] = list(meta.get("columns", []))
        if meta.get("schema"):  # featurised in the model: raw rows, the schema published
            cfg["schema"] = meta["schema"]
            # a date column is a string field of the raw row (the model parses it)
            cfg["feature_types"] = {c: "string" if t["type"] == "datetime" else t["type"]
                                    for c, t in meta["schema"]["columns"].items()}
        elif meta.get("categorical"):
            cfg["feature_types"] = {c: "string" for c in meta["categorical"]}
    else:
        s = int(meta.get("input_size", 224))
        cfg["input"] = "image"
        cfg["image"] = {"size": [s, s], "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if meta.get("classes") is not None:
        cfg["labels"] = [str(c) for c in meta["classes"]]
    threshold = (meta.get("hyperparameters") or {}).get("threshold")
    if task == "detection" and threshold is not None:  # the served boxes are those predict() keeps
        cfg["threshold"] = float(threshold)
    return cfg


def package_model(ctx: StepContext, run: Path, sel: dict[str, Any], want_onnx: bool) -> tuple[Path, str, dict[str, Any] | None]:
    """A folder to register: the serving file at the top (model.onnx | model.joblib | TorchScript
    model.pt) plus ``kiln-model/`` (what ``Algorithm.load`` reads, for ``kiln infer``)."""
    tdir = run / "trials" / sel["trial"]
    mdir = tdir / "model"
    pkg = tdir / ".package"
    shutil.rmtree(pkg, ignore_errors=True)
    meta = read_json(mdir / "meta.json") or {}
    if not meta.get("algorithm"):  # the user's own model: registered as the script saved it
        shutil.copytree(mdir, pkg, copy_function=link_or_copy)  # a transient folder: links, no copy
        serving = read_json(mdir / "kiln-serving.json")
        fw = detect_framework(mdir)
        if want_onnx and (mdir / "model.onnx").is_file():
            fw = "onnx"
            serving = {**(serving or {}), "framework": "onnx", "file": "model.onnx"}
        if fw == "unknown":
            raise KilnError(f"trial {sel['trial']}: the training command saved no model into $KILN_OUTPUT_DIR",
                            hint="save model.joblib, model.pt (TorchScript) or model.onnx there")
        if serving is not None:
            (pkg / "kiln-serving.json").unlink(missing_ok=True)
        return pkg, fw, serving

    algo = get_algorithm(meta["algorithm"])
    shutil.copytree(mdir, pkg / "kiln-model", copy_function=link_or_copy)  # transient: links, no copy
    if want_onnx:
        link_or_copy(tdir / "model.onnx", pkg / "model.onnx")
        return pkg, "onnx", _serving(algo, meta, "onnx", "model.onnx")
    if algo.framework in ("sklearn", "xgboost"):
        link_or_copy(mdir / "model.joblib", pkg / "model.joblib")
        return pkg, "sklearn", _serving(algo, meta, "sklearn", "model.joblib")
    import torch

    model = algo.load(mdir)
    own = algo.export_torchscript(model, pkg / "model.pt")
    if own is not None:  # detectors: post-processing folded in, their own image size and labels
        return pkg, "torch", {**_serving(algo, meta, "torch", "model.pt"), **own}
    s = int(meta.get("input_size", 224))
    # strict=False: torchvision segmenters answer {"out": logits}, which the serving layer's torch
    # runtime unwraps; a strict trace refuses any dict output and the registration failed
    traced = torch.jit.trace(model.native.eval().cpu(), torch.zeros(1, 3, s, s), strict=False)
    traced.save(str(pkg / "model.pt"))
    return pkg, "torch", _serving(algo, meta, "torch", "model.pt")
