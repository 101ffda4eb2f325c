"""The contract every training algorithm implements, and the data/model/report types around it.

Why one base class: the controller, HPO (Optuna), AutoML and the model repository all drive
algorithms the same way, so each algorithm only says how to build, fit, score and serialise its
model; everything else (splits, metric names, TensorBoard, checkpoints) is shared here.

Contract of an ``Algorithm`` subclass
-------------------------------------
Class attributes
    ``name`` (registry key), ``task`` (classification | regression | clustering |
    dimension-reduction | detection | instance-segmentation | semantic-segmentation),
    ``data_type`` (tabular | image), ``framework`` (sklearn | xgboost | pytorch | transformers |
    tensorflow) and
    ``Hyperparameters``: a pydantic model whose fields carry the type, the default and the range
    (``Field(ge=, le=)``), so ``Algorithm.hyperparameters({...})`` validates a spec's values and
    ``describe()`` lists them.
``train(data, hp, *, callbacks, workdir, resume_from) -> TrainedModel``
    Fits on ``data.split("train")``; after every epoch (or once, for one-shot fits) calls
    ``callbacks.report(step, metrics)`` with metric names prefixed by split
    (``train_loss``, ``validation_accuracy``). The callback may raise ``Pruned`` to stop the trial;
    ``train`` lets it propagate. Epoch-based algorithms write ``workdir/checkpoints/epoch-NNNN.pt``
    (model + optimizer + epoch, atomically) and continue after the last epoch of ``resume_from``
    (a checkpoint file or a checkpoints folder). TensorBoard event files go to ``workdir/tensorboard``.
``evaluate(model, data, split) -> Evaluation``
    A ``dict[str, float]`` of ``<split>_<metric>`` (see ``kiln.algorithms.metrics``) whose
    ``artifacts`` attribute holds non-scalar results (confusion matrix, per-category lists).
``predict(model, inputs) -> list``
    Tabular: rows (DataFrame or list of dicts/lists) -> labels / values / cluster ids / components.
    Image: paths or PIL images -> labels (classification), box lists (detection), masks (segmentation).
``save(model, path)`` / ``load(path)``
    ``path`` is a folder: ``meta.json`` (algorithm, hyperparameters, classes, columns) plus the
    weights (``model.joblib`` for sklearn/xgboost, ``model.pt`` state dict for torch); ``load``
    rebuilds the model from ``meta.json`` and never unpickles torch files (``weights_only=True``).
``export_onnx(model, path, sample) -> Path | None``
    One self-contained ONNX file, or ``None`` where the model type has no exporter.
``input_batch(model, inputs)`` (image algorithms) / ``features(meta, rows)`` (tabular)
    The native model's input, preprocessed as in training: what the experiment steps (the
    report's scores), ``kiln infer`` and the ONNX parity check feed ``model.native``.
``export_torchscript(model, path) -> dict | None`` (optional)
    Where a plain ``torch.jit.trace`` of the network is not what the server needs (detectors: the
    serving layer wants ``boxes``/``scores``/``labels``): writes a TorchScript file the serving
    layer's torch runtime runs on ``N x 3 x H x W`` and returns the ``kiln-serving.json`` keys that
    differ from the defaults (image size and normalisation, labels, threshold). ``None``/absent: the
    registration step traces ``model.native`` itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kiln._util.fs import write_json_atomic
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.data.model import DatasetContent, Item

TASKS = (
    "classification", "regression", "clustering", "dimension-reduction",
    "detection", "instance-segmentation", "semantic-segmentation",
)


class AlgorithmError(KilnError):
    """Bad hyperparameters, data that does not fit the algorithm, unreadable checkpoints."""


class Pruned(Exception):  # noqa: N818 - the name HPO libraries use
    """Raised by a ``ReportCallback`` to stop a trial early (HPO pruning)."""

    def __init__(self, step: int, reason: str = "pruned") -> None:
        self.step = step
        super().__init__(f"{reason} at step {step}")


class ReportCallback:
    """Receives metrics during training. Subclass and override ``report``; raise ``Pruned`` to stop.

    ``step`` is the epoch number (1-based) for epoch-based algorithms, 0 for one-shot fits.
    ``checkpoint_every``/``checkpoint_unit`` (an Experiment's ``checkpoint:``) say how often a
    training loop saves a resumable checkpoint; see ``checkpoint_due``.
    """

    checkpoint_every: int = 1
    checkpoint_unit: str = "epoch"
    # (metric, "maximize" | "minimize"): the loop returns the weights of the report where that
    # metric was best (``BestWeights``), not the last; None: the last (register.checkpoint: last)
    keep_best: tuple[str, str] | None = None

    def report(self, step: int, metrics: dict[str, float]) -> None:  # pragma: no cover - default no-op
        pass

    def close(self) -> None:
        pass


class BestWeights:
    """The weights of the best report so far by ``callbacks.keep_best``, held in memory.

    Why: the model a trial registers and the metrics it reports must be one checkpoint's; the
    last epoch is often not the best (validation 0.40 reported, 0.42 earlier). A copy in memory,
    not a file: checkpoints are written every ``checkpoint.every`` and pruned to ``keep``, so the
    best epoch's file may not exist. A resumed run tracks the best from where it resumed (the
    weights of earlier epochs are gone with the process). ``record()`` states the choice, as the
    model's ``meta["checkpoint"]``: ``{"kind": "best" | "last", "step", "metric", "value"}``."""

    def __init__(self, callbacks: ReportCallback | None, snapshot: Callable[[], Any]) -> None:
        self.objective = callbacks.keep_best if callbacks is not None else None
        self.snapshot = snapshot
        self.step: int | None = None
        self.value: float | None = None
        self.state: Any = None

    def offer(self, step: int, metrics: dict[str, Any]) -> None:
        """After a report: keep a snapshot when it holds the objective and improves on the best."""
        if self.objective is None:
            return
        metric, direction = self.objective
        v = metrics.get(metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return
        if self.value is None or (v > self.value if direction == "maximize" else v < self.value):
            self.step, self.value, self.state = step, float(v), self.snapshot()

    def finish(self, last_step: int, restore: Callable[[Any], None]) -> dict[str, Any]:
        """Put the best weights back when they are not the last ones; the record of the choice."""
        if self.objective is None or self.step is None:
            why = None if self.objective is None else f"{self.objective[0]} was never reported during training"
            return {"kind": "last", "step": last_step, **({"note": why} if why else {})}
        if self.step != last_step:
            restore(self.state)
        self.state = None
        return {"kind": "best", "step": self.step, "metric": self.objective[0], "value": self.value}


def torch_snapshot(model: Any) -> Callable[[], Any]:
    """A ``BestWeights`` snapshot of a torch module: its state dict copied to the CPU."""
    return lambda: {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def checkpoint_due(callbacks: ReportCallback | None, n: int, *, last: bool, unit: str = "epoch",
                   default: int = 1) -> bool:
    """Whether epoch (or optimiser step, ``unit``) ``n`` saves a checkpoint: every
    ``callbacks.checkpoint_every`` when the callback counts in this loop's unit, else every
    ``default``; the last one always (a finished trial must be resumable to its end)."""
    if last:
        return True
    every = callbacks.checkpoint_every if callbacks is not None and callbacks.checkpoint_unit == unit else default
    return n % max(1, every) == 0


class CallbackList(ReportCallback):
    def __init__(self, callbacks: list[ReportCallback]) -> None:
        self.callbacks = callbacks
        # the least frequent request wins: a checkpoint costs a model write
        for cb in callbacks:
            if cb.checkpoint_every > self.checkpoint_every:
                self.checkpoint_every, self.checkpoint_unit = cb.checkpoint_every, cb.checkpoint_unit
            self.keep_best = self.keep_best or cb.keep_best

    def report(self, step: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.report(step, metrics)

    def close(self) -> None:
        for cb in self.callbacks:
            cb.close()


class HistoryCallback(ReportCallback):
    """Keeps every report in memory (``history``: list of ``(step, metrics)``)."""

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append((step, dict(metrics)))


class TensorBoardCallback(ReportCallback):
    """Writes each report as scalars to TensorBoard event files (``workdir/tensorboard``).

    tensorboardX's synchronous ``EventsWriter`` (only needs protobuf), not its ``SummaryWriter``:
    that one starts a writer thread and a multiprocessing queue per run, ~4 ms per scikit-learn
    fit of a few ms. Reports are rare (per epoch), so writing them in the caller costs nothing.
    Falls back to torch's writer (needs the ``tensorboard`` package) without tensorboardX.
    """

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        try:
            from tensorboardX.event_file_writer import EventsWriter
        except ImportError:  # pragma: no cover - depends on the environment
            from torch.utils.tensorboard import SummaryWriter

            self.writer: Any = SummaryWriter(str(logdir))
            self.events = None
        else:
            self.writer = None
            self.events = EventsWriter(str(logdir / "events"))  # events.out.tfevents.<time>.<host>

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if self.events is None:
            for k, v in metrics.items():
                self.writer.add_scalar(k.replace("_", "/", 1), float(v), step)
            self.writer.flush()
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        now = time.time()
        for k, v in metrics.items():
            self.events.write_event(Event(wall_time=now, step=step, summary=scalar(k.replace("_", "/", 1), float(v))))
        self.events.flush()  # readable by a running TensorBoard after every epoch

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        else:
            self.writer.close()


class Hyperparameters(BaseModel):
    """Base of every algorithm's hyperparameter model: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = 0


class Evaluation(dict):
    """``dict[str, float]`` of prefixed metrics, plus ``artifacts`` (confusion matrix, per-class lists)."""

    def __init__(self, metrics: dict[str, float], artifacts: dict[str, Any] | None = None) -> None:
        super().__init__(metrics)
        self.artifacts: dict[str, Any] = artifacts or {}


@dataclass
class TrainedModel:
    """A fitted model: ``native`` is the framework object (estimator, nn.Module)."""

    algorithm: str
    native: Any
    hyperparameters: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)  # classes, columns, input_size ...
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class TrainData:
    """A loaded dataset plus its split assignment, as algorithms consume it.

    Image items carry their split already (``Item.split``); tabular rows get theirs from
    ``row_splits`` (row number -> split, the manifest of ``kiln.data.splits``). Unsplit data is
    split 80/10/10 (stratified, seeded) on construction.
    """

    def __init__(self, content: DatasetContent, row_splits: dict[int, str] | None = None, *,
                 ratios: dict[str, float] | None = None, seed: int = 0) -> None:
        # kiln.data.splits imports the dataset models (0.3-0.4 s of pydantic on a 2-core machine):
        # the steps that import this module for its callbacks and types do not pay for it
        from kiln.data.splits import assign_splits

        self.content = content
        self.row_splits = row_splits
        self._tables: dict[tuple[str | None, bool], tuple[Any, Any]] = {}
        if content.task == "tabular":
            if row_splits is None:
                _, manifest = assign_splits(content, ratios, seed)
                self.row_splits = {int(k): v for k, v in manifest["items"].items()}
        elif any(it.split is None for it in content.items):
            self.content, _ = assign_splits(content, ratios, seed)

    @property
    def task(self) -> str:
        return self.content.task

    # -- images ----------------------------------------------------------------------------------
    def items(self, split: str) -> list[Item]:
        return [it for it in self.content.items if it.split == split]

    def labelled_items(self, split: str) -> list[Item]:
        """A classification split's items that carry a label: images beside the class folders and
        captured inputs not labelled yet are items of the dataset, but nothing to train or score on."""
        return [it for it in self.items(split) if it.label is not None]

    @property
    def classes(self) -> list[str]:
        """Classification labels, sorted (the index of a label is its class id)."""
        return sorted({it.label for it in self.content.items if it.label is not None})

    # -- tables ----------------------------------------------------------------------------------
    def table(self, split: str | None, *, labelled: bool = True) -> tuple[Any, Any]:
        """``(X, y)`` DataFrame/Series for ``split`` (None: all rows); ``y`` is None if unlabelled.
        Identifier columns (``kiln.data.schema``) are no features; rows without a label are left
        out unless ``labelled=False`` (batch inference predicts them)."""
        key = (split, labelled)
        if key in self._tables:
            return self._tables[key]
        t = self.content.table
        if t is None or t.frame is None:
            raise AlgorithmError(f"dataset task {self.content.task!r} has no table; this algorithm needs tabular data")
        df = t.frame
        if split is not None:
            assert self.row_splits is not None
            rows = [i for i in range(len(df)) if self.row_splits.get(i) == split]
            df = df.iloc[rows]
        if t.label and labelled:
            df = df[df[t.label].notna()]
        ids = [c for c, typ in t.columns.items() if typ == "identifier" and c != t.label]
        x = df.drop(columns=[*ids, *([t.label] if t.label else [])])
        out = (x, df[t.label] if t.label else None)
        self._tables[key] = out
        return out

    def has_split(self, split: str) -> bool:
        if self.content.task == "tabular":
            return bool(self.row_splits) and split in self.row_splits.values()
        return any(it.split == split for it in self.content.items)


class Algorithm:
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str]
    task: ClassVar[str]
    data_type: ClassVar[str]
    framework: ClassVar[str]
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters

    # -- hyperparameters -------------------------------------------------------------------------
    @classmethod
    def hyperparameters(cls, values: dict[str, Any] | Hyperparameters | None = None) -> Hyperparameters:
        """Validate ``values`` against ``Hyperparameters``; errors name the algorithm and field."""
        if isinstance(values, cls.Hyperparameters):
            return values
        try:
            return cls.Hyperparameters.model_validate(dict(values or {}))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
            valid = ", ".join(cls.Hyperparameters.model_fields)
            raise AlgorithmError(f"algorithm {cls.name}: invalid hyperparameters: {problems}",
                                 hint=f"valid hyperparameters: {valid}") from None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        hps = {}
        for fname, f in cls.Hyperparameters.model_fields.items():
            entry: dict[str, Any] = {"type": getattr(f.annotation, "__name__", str(f.annotation)),
                                     "default": f.default}
            for m in f.metadata:
                for attr in ("ge", "gt", "le", "lt"):
                    if getattr(m, attr, None) is not None:
                        entry[attr] = getattr(m, attr)
            if f.description:
                entry["description"] = f.description
            hps[fname] = entry
        return {"name": cls.name, "task": cls.task, "data_type": cls.data_type, "framework": cls.framework,
                "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                "hyperparameters": hps}

    # -- the contract ----------------------------------------------------------------------------
    def train(self, data: TrainData, hp: Hyperparameters | dict[str, Any] | None = None, *,
              callbacks: ReportCallback | None = None, workdir: Path | None = None,
              resume_from: Path | None = None) -> TrainedModel:
        raise NotImplementedError

    def evaluate(self, model: TrainedModel, data: TrainData, split: str = "test") -> Evaluation:
        raise NotImplementedError

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        raise NotImplementedError

    def save(self, model: TrainedModel, path: Path) -> Path:
        raise NotImplementedError

    def load(self, path: Path) -> TrainedModel:
        raise NotImplementedError

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        return None

    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any] | None:
        return None

    # -- helpers for subclasses ------------------------------------------------------------------
    def _reporter(self, callbacks: ReportCallback | None, workdir: Path | None) -> tuple[CallbackList, HistoryCallback]:
        history = HistoryCallback()
        cbs: list[ReportCallback] = [history]
        if workdir is not None:
            cbs.append(TensorBoardCallback(Path(workdir) / "tensorboard"))
        if callbacks is not None:
            cbs.append(callbacks)
        return CallbackList(cbs), history

    def _check_task(self, data: TrainData, allowed: tuple[str, ...]) -> None:
        if data.task not in allowed:
            raise AlgorithmError(f"algorithm {self.name} ({self.task}) cannot train on a {data.task} dataset",
                                 hint=f"use a dataset with task {' or '.join(allowed)}")
        table = data.content.table
        target = table.target if table is not None else None
        # the Dataset says what its label is: a regression target is never fitted as classes
        # (nor class names as numbers)
        if target in ("clustering", "dimension-reduction") and self.task in ("classification", "regression"):
            raise AlgorithmError(f"algorithm {self.name} is for {self.task}, but the dataset is a {target} "
                                 "dataset (its task): its rows have no label to learn",
                                 hint=f"choose a {target} algorithm, or set the Dataset's task: {self.task} "
                                      "(and its label column)")
        if target is not None and self.task in ("classification", "regression") and target != self.task:
            raise AlgorithmError(f"algorithm {self.name} is for {self.task}, but the dataset's label "
                                 f"{table.label!r} is a {target} target (its task)",
                                 hint=f"choose a {target} algorithm, or set the Dataset's task: {self.task}")


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / "meta.json", meta, indent=2, sort_keys=True, default=str)


def read_meta(folder: Path, expected: str | None = None) -> dict[str, Any]:
    p = Path(folder) / "meta.json"
    if not p.is_file():
        raise AlgorithmError(f"{folder}: not a saved kiln model (no meta.json)",
                             hint="pass the folder an Algorithm.save() wrote")
    meta = json.loads(p.read_text())
    if expected is not None and meta.get("algorithm") != expected:
        raise AlgorithmError(f"{folder}: model was saved by algorithm {meta.get('algorithm')!r}, not {expected!r}",
                             hint=f"load it with get_algorithm({meta.get('algorithm')!r})")
    return meta


def atomic_save(path: Path, writer: Any) -> None:
    """``writer(tmp_path)`` writes the file; it is moved into place only when complete. For a
    library's own save call (``torch.save``, ``joblib.dump``), which wants a path: bytes and JSON
    go through ``kiln._util.fs``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def latest_checkpoint_file(path: Path, pattern: re.Pattern[str], hint: str) -> Path:
    """``path`` itself if a file, else the checkpoint in that folder whose name matches
    ``pattern`` with the highest number (the pattern's first group). The lookup of every training
    loop's ``resume_from``; ``hint`` says what the loop's checkpoints are called."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := pattern.match(p.name)))
        if found:
            return found[-1][1]
    raise AlgorithmError(f"{path}: no checkpoint to resume from", hint=hint)


def check_checkpoint_classes(checkpoint: Path, saved: Any, classes: Any) -> None:
    """A checkpoint resumes only on a dataset with the classes it was trained on."""
    if saved != classes:
        raise AlgorithmError(f"{checkpoint}: checkpoint classes {saved} differ from the dataset's {classes}",
                             hint="resume on the same dataset")
