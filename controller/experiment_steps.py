"""The Experiment workflow's steps: prepare-data -> train | (prepare-data, create-study) ->
hpo-worker x N | train-candidate x N -> select -> export-onnx -> register.

Each task of an Experiment's workflow (``kiln.controller.render._experiment``) runs one of these
in its own process (a pod on Argo). They share one folder per experiment and one run folder per
spec hash. A run is of a spec *and* a dataset version: when prepare-data resolves another version
than the run folder was made for (``version: latest`` moved, the retraining trigger), the old run
is moved aside to ``runs/<spec hash>-<old version id[:8]>`` and the new one starts empty, so its
trials, selection and registration are never the old data's::

    .kiln/workspaces/<ws>/experiments/<name>/
        data/<version id>/          prepare-data: the dataset version's files (read-only copies)
        runs/<spec hash>/
            data.json               which dataset version this run trains on
            study.db                Optuna RDB storage (SQLite) shared by the parallel hpo-workers
            study.lock              serialises "may another trial start?" + ask() across workers
            trials/<id>/            one per trial: t0003 (HPO), run (run mode), p1 (parameter
                                    set 1), c-<candidate>[-t002] (AutoML)
                trial.json          {"id", "number", "candidate", "algorithm" | "command",
                                     "params", "state": RUNNING|COMPLETE|PRUNED|FAIL, "metrics",
                                     "objective", "steps", "error", "framework", "started", "finished"}
                metrics.jsonl       one line per report: {"step", "time", <metric>: value, ...}
                tensorboard/        event files (``tensorboard --logdir .../trials``)
                checkpoints/        epoch-NNNN.pt (built-ins) or the script's own; a killed trial
                                    resumes from the newest one
                model/              the trained model (Algorithm.save, or the script's output)
                trial.lock          held while the trial trains (an orphan of a killed run and its
                                    retry never train into the same folder at once)
            selected.json           select: best trial + leaderboard
            eval.json               select: the selected model's validation labels and class
                                    scores (built-in classifiers only; ``kiln report``'s curves):
                                    {"split", "classes", "y_true": [class index, ...],
                                     "scores": [[per-class score, ...], ...], "kind": "probability"
                                     | "decision", "items", "truncated"} (the first items only
                                    when items x classes > EVAL_MAX_VALUES)
            onnx.json               export-onnx: parity report
            registered.json         register: model name, version, aliases, deleted versions
            summary.json            what the handler mirrors into the record's ``extra``

The results of the latest run are also written, git-tracked, into the user's repository (select
writes it, register adds the model version) so that a pull request carries them and ``kiln
report --base REF`` can compare with ``git show REF:metrics/<ws>/<name>.json``, like DVC's
metrics files (``.kiln/`` is not in git)::

    metrics/<ws>/<name>.json
        {"experiment": "<ws>/<name>", "specHash": "...", "mode": "run" | "hpo" | "automl",
         "dataset": {"name": "<ws>/<dataset>", "number": "v2", "version": "<md5>"},
         "objective": {"metric": "validation_accuracy", "direction": "maximize", "value": 0.97},
         "best": {"trial": "t0003", "algorithm": "svm", "candidate": null, "params": {...}},
         "metrics": {<objective, additionalMetrics, validation_* and test_* of the best trial>},
         "trials": {"COMPLETE": 5, "PRUNED": 1}, "registered": {"model": "m", "version": 3} | null}

Errors a user can fix (unknown metric, bad hyperparameters, a dataset not versioned yet, every
trial failing) are ``KilnError``s: ``kiln step`` exits 4 for them and the workflow does not retry.
Progress lines go to stderr, which is the task's log (``kiln logs Experiment/NAME``); stdout is
the step's one-line JSON output.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.proc import pid_alive as _pid_alive
from kiln.api.experiment import experiment_label
from kiln.controller.steps import StepContext, workspace_dir
from kiln.errors import ConfigError, KilnError

if TYPE_CHECKING:
    from kiln.api.experiment import Algorithm as AlgoSpec
    from kiln.api.experiment import ExperimentSpec
    from kiln.config import KilnConfig

STUDY = "hpo"
TERMINAL = ("COMPLETE", "PRUNED", "FAIL")


class TrialFailed(KilnError):
    """One trial failed (its training raised or its command exited non-zero)."""


# -- paths and small helpers ---------------------------------------------------------------------

def experiment_home(config: KilnConfig, workspace: str, name: str) -> Path:
    return workspace_dir(config, workspace) / "experiments" / name


def run_dir(config: KilnConfig, workspace: str, name: str, spec_hash: str) -> Path:
    return experiment_home(config, workspace, name) / "runs" / spec_hash


def _ws_name(ctx: StepContext) -> tuple[str, str]:
    _, ws, name = ctx.ref.split("/")
    return ws, name


def _spec(ctx: StepContext) -> ExperimentSpec:
    from kiln.api import Experiment

    return Experiment.model_validate(ctx.spec).spec


def _run(ctx: StepContext) -> Path:
    ws, name = _ws_name(ctx)
    d = run_dir(ctx.config, ws, name, ctx.spec_hash)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json(path: Path, data: Any, *, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when the process dies, also on kill -9
        yield
    finally:
        os.close(fd)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_metrics(metrics: dict[str, Any], first: list[str]) -> str:
    keys = [k for k in first if k in metrics] + sorted(k for k in metrics if k not in first and not k.endswith("_seconds")
                                                       and k != "learning_rate")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys[:6] if isinstance(metrics[k], (int, float)))


# -- data ----------------------------------------------------------------------------------------

def prepare_data(ctx: StepContext) -> dict[str, Any]:
    """Resolve the dataset version (latest | vN | hash) and materialise it read-only."""
    from kiln.controller.dataset_steps import data_rel
    from kiln.data.versioning import DatasetRepo
    from kiln.errors import NotFound

    spec = _spec(ctx)
    ws, name = _ws_name(ctx)
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
            dr.materialize(rel, v.id, dest)
            for root, _, files in os.walk(dest):  # read-only: trials must not change the data
                for f in files:
                    os.chmod(os.path.join(root, f), 0o444)
    ds = _dataset_meta(ctx, dws, ref.name, dest)
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
    write_json(_run(ctx) / "data.json", info)
    log(f"dataset {dws}/{ref.name} {number} ({v.id[:12]}, {v.files} files) -> {info['path']}")
    return {"dataset": info["dataset"], "version": v.id, "number": number, "task": info["task"]}


def _dataset_meta(ctx: StepContext, ws: str, name: str, root: Path) -> dict[str, Any]:
    """Type, task, format and label column of the dataset, from its applied spec when recorded,
    else detected from the files."""
    doc: dict[str, Any] = {}
    try:
        store = ctx.store()
        try:
            rec = store.get(f"Dataset/{ws}/{name}")
        finally:
            store.close()
        if rec is not None:
            doc = (rec.spec or {}).get("spec") or {}
    except Exception:  # noqa: BLE001 - the record is a convenience; the files decide below
        doc = {}
    from kiln.data.formats import detect_format

    fmt = doc.get("format") or "auto"
    if fmt in ("auto", "masks"):
        fmt = detect_format(root)
    tabular = doc.get("type") == "tabular" or fmt == "csv"
    return {"format": fmt, "type": "tabular" if tabular else "image",
            "task": "tabular" if tabular else (doc.get("task") or "classification"),
            "label": doc.get("label"), "problem": doc.get("task")}


def load_train_data(repo: Path, data: dict[str, Any], split: dict[str, float] | None = None) -> Any:
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    root = repo / data["path"]
    options = {"label": data["label"]} if data.get("type") == "tabular" and data.get("label") else {}
    content = load(root, data["format"], data["task"], verify=False, **options)
    manifest = read_json(root / ".kiln" / "splits.json")
    row_splits = None
    if split is None and content.task == "tabular" and manifest and manifest.get("items"):
        row_splits = {int(k): v for k, v in manifest["items"].items()}
    ratios = None
    if split is not None:
        ratios = split
        if content.task != "tabular":  # re-split images: forget the folder layout's splits
            content = content.model_copy(update={"items": [it.model_copy(update={"split": None})
                                                           for it in content.items]})
    return TrainData(content, row_splits, ratios=ratios, seed=int((manifest or {}).get("seed", 0)))


# -- trials --------------------------------------------------------------------------------------

class Trial:
    """One training run's folder and record (``trial.json``)."""

    def __init__(self, run: Path, tid: str, number: int, *, candidate: str | None = None) -> None:
        self.dir = run / "trials" / tid
        self.id, self.number, self.candidate = tid, number, candidate
        self.record: dict[str, Any] = read_json(self.dir / "trial.json") or {}

    @property
    def done(self) -> bool:
        return self.record.get("state") == "COMPLETE" and (self.dir / "model").is_dir()

    def save(self, **fields: Any) -> None:
        self.record.update(fields)
        self.record.setdefault("id", self.id)
        self.record.setdefault("number", self.number)
        self.record.setdefault("candidate", self.candidate)
        write_json(self.dir / "trial.json", self.record)


class Reporter:
    """The ``ReportCallback`` of every trial: metrics to ``metrics.jsonl``, a progress line to the
    task log, the objective to Optuna (which may prune), and checkpoint retention."""

    def __init__(self, trial: Trial, objective: Any, *, total: int | None = None, optuna_trial: Any = None,
                 keep_checkpoints: int = 2, tensorboard: bool = False) -> None:
        from kiln.algorithms.base import TensorBoardCallback

        self.trial, self.objective, self.total, self.ot = trial, objective, total, optuna_trial
        self.keep = keep_checkpoints
        self.last: dict[str, float] = {}
        self.steps = 0
        self.tb = TensorBoardCallback(trial.dir / "tensorboard") if tensorboard else None

    def report(self, step: int, metrics: dict[str, float]) -> None:
        from kiln.algorithms.base import Pruned

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.last.update(clean)
        self.steps += 1
        line = json.dumps({"step": step, "time": round(time.time(), 3), **clean})
        with open(self.trial.dir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        if self.tb is not None:
            self.tb.report(step or 0, clean)
        where = f"epoch {step}/{self.total}" if self.total and step else (f"step {step}" if step else "fit")
        obj = self.objective.metric
        log(f"[{self.trial.id}] {where}: {_fmt_metrics(clean, [obj, *self.objective.additionalMetrics])}")
        self.trial.save(metrics=dict(self.last), steps=self.steps,
                        objective=self.last.get(obj))
        self._prune_checkpoints()
        if self.ot is not None and obj in clean:
            self.ot.report(clean[obj], step or 0)
            if self.ot.should_prune():
                log(f"[{self.trial.id}] pruned at {where}: {obj}={clean[obj]:.4g} is behind the other trials")
                raise Pruned(step or 0)

    def _prune_checkpoints(self) -> None:
        for p in _checkpoints(self.trial.dir / "checkpoints")[:-self.keep]:
            p.unlink(missing_ok=True)
            if p.suffix == ".keras":
                p.with_suffix(".json").unlink(missing_ok=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _as_callback(rep: Reporter, checkpoint: Any = None) -> Any:
    """The algorithm's callback: reports go to ``rep``; ``checkpoint`` (the spec's) says how often
    the training loop saves a resumable checkpoint."""
    from kiln.algorithms.base import ReportCallback

    class _CB(ReportCallback):
        def report(self, step: int, metrics: dict[str, float]) -> None:
            rep.report(step, metrics)

    cb = _CB()
    if checkpoint is not None:
        cb.checkpoint_every, cb.checkpoint_unit = checkpoint.every, checkpoint.unit
    return cb


# what the built-in training loops write into checkpoints/ (torch epochs, Keras epochs, steps)
CHECKPOINT_GLOBS = ("epoch-*.pt", "epoch-*.keras", "step-*.pt")


def _checkpoints(folder: Path) -> list[Path]:
    """The resumable checkpoints in ``folder``, oldest first (names sort by their number)."""
    return sorted(p for g in CHECKPOINT_GLOBS for p in folder.glob(g)) if folder.is_dir() else []


def run_trial(ctx: StepContext, spec: ExperimentSpec, trial: Trial, *, algo: AlgoSpec | None,
              params: dict[str, Any], optuna_trial: Any = None) -> dict[str, Any]:
    """Train one trial (resuming from its checkpoints), leaving ``trial.json`` COMPLETE, PRUNED
    or FAIL. Returns the record. Raises ``TrialFailed`` when it failed."""
    from kiln.algorithms.base import Pruned

    with file_lock(trial.dir.parent / f".{trial.id}.lock"):
        trial.record = read_json(trial.dir / "trial.json") or {}
        if trial.done:
            log(f"[{trial.id}] already trained: {spec.objective.metric}={trial.record.get('objective')}")
            return trial.record
        trial.dir.mkdir(parents=True, exist_ok=True)
        resume = bool(trial.record) and trial.record.get("state") == "RUNNING"
        trial.save(params=params, state="RUNNING", started=trial.record.get("started") or _now(), error=None,
                   pid=os.getpid(), algorithm=algo.name if algo else None,
                   command=spec.command.run if spec.command else None)
        log(f"[{trial.id}] {'resuming' if resume else 'starting'}"
            f"{' ' + algo.name if algo else ''} with {json.dumps(params, sort_keys=True)}")
        try:
            if algo is not None:
                framework = _train_builtin(ctx, spec, trial, algo, params, optuna_trial)
            else:
                framework = _train_command(ctx, spec, trial, params, optuna_trial)
        except Pruned as exc:
            trial.save(state="PRUNED", finished=_now(), error=None, pruned_at=exc.step)
            return trial.record
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a trial's failure is data for the study
            msg = str(exc) if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
            trial.save(state="FAIL", finished=_now(), error=msg[:2000])
            log(f"[{trial.id}] failed: {msg}")
            raise TrialFailed(f"trial {trial.id} failed: {msg}") from None
        obj = trial.record.get("metrics", {}).get(spec.objective.metric)
        trial.save(state="COMPLETE", finished=_now(), framework=framework, objective=obj)
        log(f"[{trial.id}] done: {spec.objective.metric}={obj}")
        return trial.record


def _train_builtin(ctx: StepContext, spec: ExperimentSpec, trial: Trial, algo_spec: AlgoSpec,
                   params: dict[str, Any], optuna_trial: Any) -> str:
    from kiln.algorithms.registry import get_algorithm

    data = read_json(_run(ctx) / "data.json")
    algo = get_algorithm(algo_spec.name)
    if algo.framework != "pytorch":
        _tensorboardx_without_torch()
    else:
        import torch

        # parallel trials share the machine: one torch thread pool each, not one per core each
        parallel = spec.hpo.parallelTrials if spec.mode == "hpo" and spec.hpo else 1
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))
    hp = {**algo_spec.hyperparameters, **params}
    hp_model = algo.hyperparameters(hp)  # bad names/values: a clear error before any data is read
    td = load_train_data(ctx.config.repo, data, algo_spec.split or spec.split)
    rep = Reporter(trial, spec.objective, total=getattr(hp_model, "epochs", None), optuna_trial=optuna_trial,
                   keep_checkpoints=spec.checkpoint.keep)
    kwargs: dict[str, Any] = {}
    if algo_spec.pretrained:
        p = Path(algo_spec.pretrained)
        kwargs["pretrained"] = p if p.is_absolute() else ctx.config.repo / p
    ck = trial.dir / "checkpoints"
    saved = _checkpoints(ck)
    resume_from = ck if saved else None
    if saved:
        log(f"[{trial.id}] resuming from checkpoint {saved[-1].name}")
    try:
        model = algo.train(td, hp_model, callbacks=_as_callback(rep, spec.checkpoint), workdir=trial.dir,
                           resume_from=resume_from, **kwargs)
    finally:
        rep.close()
    final = dict(model.history[-1][1]) if model.history else dict(rep.last)
    if td.has_split("test"):
        final.update(algo.evaluate(model, td, "test"))
    clean = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
    out = trial.dir / "model"
    tmp = trial.dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save(model, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _trial_eval(trial, algo, model, td)
    trial.save(metrics={**trial.record.get("metrics", {}), **clean})
    return algo.framework


def _trial_eval(trial: Trial, algo: Any, model: Any, td: Any) -> None:
    """A tabular classifier's validation scores, written now while scikit-learn and the model
    are loaded: the select step then copies the chosen trial's file instead of importing
    scikit-learn and unpickling the model (about 1.8 s of every run's serial tail). Best effort;
    select computes it itself when the file is missing (image models: another validation pass)."""
    if algo.task != "classification" or algo.data_type != "tabular":
        return
    try:
        classes = (model.meta or {}).get("classes")
        # small files only: every trial keeps one until select (larger splits: select computes it)
        doc = eval_doc(algo, model, td, classes, max_values=50_000) if classes else None
        if doc is not None:
            write_json(trial.dir / "eval.json", doc, indent=None)
    except Exception as exc:  # noqa: BLE001 - report curves are a convenience
        log(f"[{trial.id}] no validation scores saved for the report: {type(exc).__name__}: {exc}")


def _tensorboardx_without_torch() -> None:
    """Import tensorboardX without its optional torch import (4-5 s on this class of machine,
    more than a whole scikit-learn fit): scalars do not need torch. No-op if torch is loaded."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        pass
    finally:
        del sys.modules["torch"]


def _cli_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _train_command(ctx: StepContext, spec: ExperimentSpec, trial: Trial, params: dict[str, Any],
                   optuna_trial: Any) -> str:
    """Run the user's command with ``--name value`` per hyperparameter; follow its metrics file."""
    cmd = spec.command
    assert cmd is not None
    data = read_json(_run(ctx) / "data.json")
    repo = ctx.config.repo
    cwd = (repo / cmd.workdir).resolve()
    if not cwd.is_dir():
        raise ConfigError(f"command.workdir {cmd.workdir!r} does not exist in {repo}")
    out = trial.dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = trial.dir / "metrics.jsonl"
    if cmd.metricsFile:
        mf = Path(cmd.metricsFile)
        metrics_file = mf if mf.is_absolute() else out / mf
    (trial.dir / "checkpoints").mkdir(exist_ok=True)
    argv = shlex.split(cmd.run)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the environment kiln runs in (its venv / image)
    for k, v in params.items():
        argv += [f"--{k}", _cli_value(v)]
    env = {**os.environ, **cmd.env,
           "KILN_DATA_DIR": str(repo / data["path"]), "KILN_OUTPUT_DIR": str(out),
           "KILN_METRICS_FILE": str(metrics_file if cmd.metricsFile else trial.dir / "reported.jsonl"),
           "KILN_CHECKPOINT_DIR": str(trial.dir / "checkpoints"), "KILN_TRIAL": trial.id,
           "KILN_PARAMS": json.dumps(params, sort_keys=True), "PYTHONUNBUFFERED": "1"}
    follow = Path(env["KILN_METRICS_FILE"])
    follow.unlink(missing_ok=True)  # a re-run reports afresh (its own checkpoints are the script's)
    _tensorboardx_without_torch()
    rep = Reporter(trial, spec.objective, optuna_trial=optuna_trial, keep_checkpoints=spec.checkpoint.keep,
                   tensorboard=True)
    log(f"[{trial.id}] $ {shlex.join(argv)}  (in {cwd})")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise ConfigError(f"command {cmd.run!r}: cannot start {argv[0]!r}: {exc.strerror}",
                          hint="give a program on PATH or a path relative to command.workdir") from None
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip()
            tail.append(text)
            del tail[:-20]
            log(f"[{trial.id}] | {text}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    pos = 0
    pruned = None
    from kiln.algorithms.base import Pruned

    try:
        while True:
            rc = proc.poll()
            pos = _read_metrics(follow, pos, rep)
            if rc is not None:
                break
            time.sleep(0.2)
    except Pruned as exc:
        pruned = exc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        reader.join(timeout=5)
        rep.close()
    if pruned is not None:
        raise pruned
    if rc != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise TrialFailed(f"command {cmd.run!r} exited with code {rc}" + (f": {last[-300:]}" if last else ""))
    return _detect_framework(out)


def _read_metrics(path: Path, pos: int, rep: Reporter) -> int:
    if not path.is_file():
        return pos
    with open(path, "rb") as f:
        f.seek(pos)
        chunk = f.read()
    end = chunk.rfind(b"\n")
    if end < 0:
        return pos
    for raw in chunk[:end].splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            step = rec.pop("step", None)
            rec.pop("time", None)
            rep.report(int(step) if isinstance(step, (int, float)) else 0, rec)
    return pos + end + 1


def _detect_framework(out: Path) -> str:
    serving = read_json(out / "kiln-serving.json") or {}
    if serving.get("framework"):
        return str(serving["framework"])
    meta = read_json(out / "meta.json") or {}
    if meta.get("algorithm"):
        from kiln.algorithms.registry import get_algorithm_class

        return get_algorithm_class(meta["algorithm"]).framework
    for f, fw in (("model.onnx", "onnx"), ("model.joblib", "sklearn"), ("model.pt", "torch")):
        if (out / f).is_file():
            return fw
    return "unknown"


# -- run mode ------------------------------------------------------------------------------------

def train(ctx: StepContext) -> dict[str, Any]:
    spec = _spec(ctx)
    run = _run(ctx)
    if "parameters" in ctx.args:
        try:
            params = json.loads(ctx.args["parameters"])
        except ValueError:
            raise KilnError(f"--arg parameters is not JSON: {ctx.args['parameters'][:80]}") from None
        canon = [json.dumps(p, sort_keys=True) for p in spec.parameterSets]
        key = json.dumps(params, sort_keys=True)
        if key not in canon:
            raise KilnError("--arg parameters is not one of spec.parameterSets")
        number = canon.index(key)
        trial = Trial(run, f"p{number}", number)
    else:
        params, number = {}, 0
        trial = Trial(run, "run", 0)
    rec = run_trial(ctx, spec, trial, algo=spec.algorithm, params=params)
    return {"trial": trial.id, "state": rec["state"], "objective": rec.get("objective")}


# -- HPO -----------------------------------------------------------------------------------------

def _storage(run: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _search_space(spec: ExperimentSpec, algo: AlgoSpec | None) -> dict[str, Any]:
    if algo is not None:
        return dict(algo.searchSpace)
    assert spec.command is not None
    return dict(spec.command.searchSpace)


def _grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for k, p in space.items():
        if p.type == "choice":
            grid[k] = list(p.values)
        elif p.type == "int":
            grid[k] = list(range(p.low, p.high + 1, p.step))
        elif p.step:
            n = int(round((p.high - p.low) / p.step))
            grid[k] = [p.low + i * p.step for i in range(n + 1)]
        else:
            raise KilnError(f"sampler grid: searchSpace.{k} is a continuous float range",
                            hint="give it a step, make it a choice, or use sampler tpe/random")
    return grid


def make_sampler(spec: ExperimentSpec, space: dict[str, Any], worker: str = "0") -> Any:
    import optuna

    hpo = spec.hpo
    assert hpo is not None
    s = hpo.sampler
    # parallel workers with one seed would propose the very same parameters: offset it per worker.
    # Not for the grid: its seed shuffles the grid, workers share out points by trial number, and
    # so must all see one order (other seeds: the same points twice, others never)
    seed = None if s.seed is None else s.seed + (0 if s.type == "grid" else 7919 * int(worker or 0))
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: _grid_sampler_class()(_grid(space), seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
    }
    return samplers[s.type]()


@functools.cache
def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, except that it never calls ``study.stop()`` after the last grid
        point: that raises RuntimeError outside ``study.optimize`` (optuna#5141), and kiln's
        workers ask and tell. They stop on their own once every point has a trial (_stop_reason)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _grid_size(spec: ExperimentSpec, space: dict[str, Any]) -> int | None:
    """How many points the grid sampler has (None for the other samplers)."""
    if spec.hpo is None or spec.hpo.sampler.type != "grid":
        return None
    return math.prod(len(v) for v in _grid(space).values())


def make_pruner(spec: ExperimentSpec) -> Any:
    import optuna

    assert spec.hpo is not None
    p = spec.hpo.pruner
    pruners = {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=p.warmupSteps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmupSteps or 1)),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmupSteps or 1)),
    }
    return pruners[p.type]()


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, p in space.items():
        if p.type == "float":
            out[k] = trial.suggest_float(k, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[k] = trial.suggest_int(k, p.low, p.high, log=p.log, step=p.step)
        else:
            out[k] = trial.suggest_categorical(k, list(p.values))
    return out


def _study_name(candidate: str | None) -> str:
    return STUDY if candidate is None else f"{STUDY}-{candidate}"


def _create_study(run: Path, spec: ExperimentSpec, algo: AlgoSpec | None, study_name: str,
                  max_trials: int) -> dict[str, Any]:
    import optuna

    _quiet_optuna()
    space = _search_space(spec, algo)
    direction = spec.objective.direction
    study = optuna.create_study(study_name=study_name, storage=_storage(run), direction=direction,
                                load_if_exists=True)
    enqueued = {}
    if not study.user_attrs.get("created"):
        # a parameter both fixed and searched starts from its fixed value (a template's value)
        fixed = dict(algo.hyperparameters) if algo is not None else {}
        enqueued = {k: v for k, v in fixed.items() if k in space}
        if enqueued:
            study.enqueue_trial(enqueued, skip_if_exists=True)
        study.set_user_attr("started", time.time())
        study.set_user_attr("maxTrials", max_trials)
        study.set_user_attr("created", True)
    return {"study": study_name, "direction": direction, "searchSpace": sorted(space), "enqueued": enqueued,
            "trials": len(study.trials)}


def create_study(ctx: StepContext) -> dict[str, Any]:
    spec = _spec(ctx)
    assert spec.hpo is not None
    run = _run(ctx)
    with file_lock(run / "study.lock"):
        out = _create_study(run, spec, spec.algorithm, STUDY, spec.hpo.maxTrials)
    log(f"study {out['study']}: {spec.hpo.maxTrials} trials, {spec.hpo.parallelTrials} in parallel, "
        f"{spec.hpo.sampler.type} sampler, {spec.hpo.pruner.type} pruner, {spec.objective.direction} "
        f"{spec.objective.metric}" + (f" (goal {spec.objective.goal})" if spec.objective.goal is not None else ""))
    return out


def _goal_reached(spec: ExperimentSpec, value: float | None) -> bool:
    goal = spec.objective.goal
    if goal is None or value is None:
        return False
    return value >= goal if spec.objective.direction == "maximize" else value <= goal


def _live(study: Any) -> list[Any]:
    """The study's trials, less those interrupted (each is queued again as a new trial)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]


def _counts(trials: list[Any]) -> dict[str, int]:
    out = {"RUNNING": 0, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "WAITING": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _stop_reason(study: Any, spec: ExperimentSpec, max_trials: int, max_failed: int, timeout: int | None,
                 grid_size: int | None = None) -> str | None:
    reason = study.user_attrs.get("stop")
    if reason:
        return str(reason)
    trials = _live(study)
    c = _counts(trials)
    if c["FAIL"] >= max_failed:
        return "failed"
    started = c["RUNNING"] + c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    if started >= max_trials:
        return "max-trials"
    # every grid point has a trial (running or finished)
    if grid_size is not None and not c["WAITING"] and \
            len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}) >= grid_size:
        return "grid-done"
    if timeout and time.time() - float(study.user_attrs.get("started", time.time())) > timeout:
        return "timeout"
    return None


def _recover_orphans(study: Any, run: Path, worker: str) -> None:
    """Trials left RUNNING by a killed worker (same worker slot, dead pid) are closed as
    interrupted and their parameters queued again; the new trial resumes from their checkpoints."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker or t.user_attrs.get("host") != os.uname().nodename:
            continue
        pid = int(t.user_attrs.get("pid", 0))
        if pid and pid != os.getpid() and _pid_alive(pid):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial({**t.params, }, user_attrs={"resume_from": t.number})
        log(f"trial t{t.number:04d} was interrupted (worker {worker} killed); queued again to resume")


def hpo_loop(ctx: StepContext, spec: ExperimentSpec, *, algo: AlgoSpec | None, study_name: str,
             max_trials: int, max_failed: int, worker: str, candidate: str | None = None,
             number_base: int = 0) -> dict[str, Any]:
    """Pull trials from the shared study until it is told to stop. Returns this worker's counts."""
    import optuna

    _quiet_optuna()
    run = _run(ctx)
    space = _search_space(spec, algo)
    grid_size = _grid_size(spec, space)
    timeout = spec.hpo.timeoutSeconds if spec.hpo else None
    lock = run / "study.lock"
    mine = 0
    study = None
    while True:
        with file_lock(lock):
            if study is None:
                study = optuna.load_study(study_name=study_name, storage=_storage(run),
                                          sampler=make_sampler(spec, space, worker), pruner=make_pruner(spec))
            if mine == 0:
                _recover_orphans(study, run, worker)
            reason = _stop_reason(study, spec, max_trials, max_failed, timeout, grid_size)
            if reason is not None:
                break
            ot = study.ask()
            ot.set_user_attr("worker", worker)
            ot.set_user_attr("pid", os.getpid())
            ot.set_user_attr("host", os.uname().nodename)
            params = suggest(ot, space)
        mine += 1
        tid = f"t{ot.number:04d}" if candidate is None else f"c-{candidate}-t{ot.number:03d}"
        trial = Trial(run, tid, number_base + ot.number, candidate=candidate)
        prev = ot.user_attrs.get("resume_from")
        if prev is not None:  # continue the interrupted trial's training from its checkpoints
            old = run / "trials" / (f"t{int(prev):04d}" if candidate is None else f"c-{candidate}-t{int(prev):03d}")
            if (old / "checkpoints").is_dir() and not trial.dir.exists():
                shutil.copytree(old / "checkpoints", trial.dir / "checkpoints")
        try:
            rec = run_trial(ctx, spec, trial, algo=algo, params=params, optuna_trial=ot)
        except TrialFailed:
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
            continue
        if rec["state"] == "PRUNED":
            study.tell(ot, state=optuna.trial.TrialState.PRUNED)
            continue
        value = rec.get("objective")
        if value is None:
            have = ", ".join(sorted(rec.get("metrics", {}))) or "none"
            msg = (f"objective metric {spec.objective.metric!r} was never reported by trial {tid}; "
                   f"reported: {have}")
            trial.save(state="FAIL", error=msg)
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
            study.set_user_attr("stop", "no-metric")
            study.set_user_attr("stop_detail", msg)
            continue
        study.tell(ot, float(value))
        if _goal_reached(spec, float(value)):
            log(f"[{tid}] goal reached: {spec.objective.metric}={value:.4g} (goal {spec.objective.goal}); "
                "no new trials start")
            study.set_user_attr("stop", "goal")
            study.set_user_attr("stop_detail", f"goal {spec.objective.goal} reached by trial {tid} ({value:.4g})")
    c = _counts(_live(study))
    done = c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    if reason == "failed":
        last = _last_error(run, candidate)
        raise KilnError(f"stopped after {c['FAIL']} failed trial(s) (maxFailedTrials {spec.hpo.maxFailedTrials if spec.hpo else max_failed})"
                        + (f"; last error: {last}" if last else ""),
                        hint="fix the training (see `kiln logs`), then apply again")
    if reason == "no-metric":
        raise KilnError(str(study.user_attrs.get("stop_detail")),
                        hint="set objective.metric to a reported metric, or report it from your script")
    log(f"worker {worker}: stopping ({reason}); study {done}/{max_trials} trials done: "
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed")
    return {"worker": worker, "ranTrials": mine, "stop": reason, **{k.lower(): v for k, v in c.items()}}


def _last_error(run: Path, candidate: str | None) -> str:
    recs = [read_json(p) or {} for p in (run / "trials").glob("*/trial.json")]
    recs = [r for r in recs if r.get("state") == "FAIL" and r.get("candidate") == candidate and r.get("error")]
    recs.sort(key=lambda r: r.get("finished") or "")
    return recs[-1]["error"][:500] if recs else ""


def hpo_worker(ctx: StepContext) -> dict[str, Any]:
    spec = _spec(ctx)
    assert spec.hpo is not None
    worker = ctx.args.get("worker", "0")
    hpo = spec.hpo
    return hpo_loop(ctx, spec, algo=spec.algorithm, study_name=STUDY, max_trials=hpo.maxTrials,
                    max_failed=max(1, hpo.maxFailedTrials), worker=worker)


# -- AutoML --------------------------------------------------------------------------------------

def train_candidate(ctx: StepContext) -> dict[str, Any]:
    spec = _spec(ctx)
    assert spec.automl is not None
    name = ctx.args.get("candidate", "")
    names = [c.name for c in spec.automl.candidates]
    if name not in names:
        raise KilnError(f"--arg candidate={name!r} is not in automl.candidates ({', '.join(names)})")
    idx = names.index(name)
    cand = spec.automl.candidates[idx]
    from kiln.algorithms.registry import get_algorithm_class

    get_algorithm_class(cand.name)  # unknown names: the registry's error lists the valid ones
    run = _run(ctx)
    n = spec.automl.trialsPerCandidate
    if n <= 1 or not cand.searchSpace:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        try:
            rec = run_trial(ctx, spec, trial, algo=cand, params={})
        except TrialFailed as exc:
            # one failing candidate does not sink the comparison; select reports it
            return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
        return {"candidate": name, "state": rec["state"], "objective": rec.get("objective")}
    from kiln.api.experiment import HPO

    if spec.hpo is None:
        spec = spec.model_copy(update={"hpo": HPO(maxTrials=n)})
    study = _study_name(name)
    with file_lock(run / "study.lock"):
        _create_study(run, spec, cand, study, n)
    try:
        out = hpo_loop(ctx, spec, algo=cand, study_name=study, max_trials=n, max_failed=n, worker="0",
                       candidate=name, number_base=idx * 1000)
    except KilnError as exc:
        return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
    return {"candidate": name, **out}


# -- select --------------------------------------------------------------------------------------

def trials(run: Path) -> list[dict[str, Any]]:
    recs = [r for p in sorted((run / "trials").glob("*/trial.json")) if (r := read_json(p))]
    return sorted(recs, key=lambda r: (r.get("number", 0), r.get("id", "")))


def leaderboard(spec: ExperimentSpec, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials, best first; for AutoML with several trials per candidate, each
    candidate's best trial only."""
    done = [r for r in recs if r.get("state") == "COMPLETE" and r.get("objective") is not None]
    sign = -1 if spec.objective.direction == "maximize" else 1
    done.sort(key=lambda r: (sign * float(r["objective"]), r.get("number", 0)))
    if spec.mode == "automl":
        seen: set[str] = set()
        done = [r for r in done if not (r.get("candidate") in seen or seen.add(r.get("candidate")))]  # type: ignore[func-returns-value]
    keys = [spec.objective.metric, *spec.objective.additionalMetrics]
    out = []
    for rank, r in enumerate(done, 1):
        m = r.get("metrics", {})
        out.append({"rank": rank, "trial": r["id"], "number": r.get("number"), "candidate": r.get("candidate"),
                    "algorithm": r.get("algorithm"), "params": r.get("params", {}),
                    "objective": r["objective"], "metrics": {k: m[k] for k in keys if k in m}})
    return out


def select(ctx: StepContext) -> dict[str, Any]:
    spec = _spec(ctx)
    run = _run(ctx)
    recs = trials(run)
    if not recs:
        raise KilnError("no trial ran", hint="see `kiln logs` for why the training tasks did not start")
    board = leaderboard(spec, recs)
    metric = spec.objective.metric
    if isinstance(spec.selectTrial, int):
        chosen = next((r for r in recs if r.get("number") == spec.selectTrial), None)
        if chosen is None:
            raise KilnError(f"selectTrial {spec.selectTrial}: no such trial",
                            hint=f"trials: {', '.join(str(r.get('number')) for r in recs)}")
        if chosen.get("state") != "COMPLETE":
            raise KilnError(f"selectTrial {spec.selectTrial} ({chosen['id']}) is {chosen.get('state')}, not COMPLETE",
                            hint="pick a completed trial from the leaderboard (`kiln describe`)")
        how = "pinned by selectTrial"
    else:
        if not board:
            complete = [r for r in recs if r.get("state") == "COMPLETE"]
            if complete:
                have = ", ".join(sorted(complete[0].get("metrics", {})))
                raise KilnError(f"objective metric {metric!r} was not reported by any trial; reported: {have}",
                                hint="set objective.metric to one of those")
            errors = sorted({r.get("error") or r.get("state", "?") for r in recs})
            raise KilnError(f"no trial completed ({len(recs)} ran): {errors[0][:300]}",
                            hint="see `kiln logs` for each trial's output")
        chosen = next(r for r in recs if r["id"] == board[0]["trial"])
        how = f"best {metric} ({spec.objective.direction})"
    sel = {"trial": chosen["id"], "number": chosen.get("number"), "candidate": chosen.get("candidate"),
           "algorithm": chosen.get("algorithm"), "params": chosen.get("params", {}),
           "metric": metric, "value": chosen.get("objective"), "metrics": chosen.get("metrics", {}),
           "framework": chosen.get("framework"), "how": how}
    write_json(run / "selected.json", {"selected": sel, "leaderboard": board})
    log(f"leaderboard ({metric}, {spec.objective.direction}):")
    for row in board[:10]:
        label = row["candidate"] or json.dumps(row["params"], sort_keys=True)
        log(f"  {row['rank']:>2}. {row['trial']:<22} {row['objective']:.4f}  {label}")
    log(f"selected {sel['trial']}: {metric}={sel['value']} ({how})")
    _save_eval(ctx, spec, run, sel)
    _write_summary(ctx, spec, run)
    write_results(ctx, spec, run)
    return {"trial": sel["trial"], "metric": metric, "value": sel["value"], "candidates": len(board)}


EVAL_MAX_VALUES = 500_000  # items x classes in eval.json: it stays a few MB (a PR report's curves need no more)


def _save_eval(ctx: StepContext, spec: ExperimentSpec, run: Path, sel: dict[str, Any]) -> None:
    """Write ``eval.json`` for a selected built-in classifier. Best effort: a report's curves
    are a convenience, so a failure here is logged and never fails the selection."""
    path = run / "eval.json"
    path.unlink(missing_ok=True)  # never leave the curves of a previously selected model
    ready = run / "trials" / sel["trial"] / "eval.json"
    if ready.is_file():  # written by the trial itself (tabular): no model to load here
        shutil.copyfile(ready, path)
    for done in (run / "trials").glob("*/eval.json"):  # the trials' own files served their purpose
        done.unlink(missing_ok=True)
    if path.is_file():
        return
    meta = read_json(run / "trials" / sel["trial"] / "model" / "meta.json") or {}
    if not meta.get("algorithm") or not meta.get("classes"):
        return
    try:
        doc = evaluate_selected(ctx.config.repo, spec, run, sel, meta)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log(f"no validation scores saved for the report: {type(exc).__name__}: {exc}")
        return
    if doc is not None:
        write_json(path, doc, indent=None)  # one line: thousands of score rows


def evaluate_selected(repo: Path, spec: ExperimentSpec, run: Path, sel: dict[str, Any],
                      meta: dict[str, Any]) -> dict[str, Any] | None:
    """The selected classifier's labels and per-class scores on the validation split (the test
    split when there is none), in the split the trial was trained with."""
    from kiln.algorithms.registry import get_algorithm

    algo = get_algorithm(meta["algorithm"])
    if algo.task != "classification":
        return None
    algo_spec = spec.algorithm
    if spec.mode == "automl" and spec.automl is not None:
        algo_spec = next((c for c in spec.automl.candidates if c.name == sel.get("candidate")), None)
    td = load_train_data(repo, read_json(run / "data.json"), (algo_spec.split if algo_spec else None) or spec.split)
    if not any(td.has_split(s) for s in ("validation", "test")):
        return None
    return eval_doc(algo, algo.load(run / "trials" / sel["trial"] / "model"), td, meta["classes"])


def eval_doc(algo: Any, model: Any, td: Any, classes_: list[Any], max_values: int | None = None) -> dict[str, Any] | None:
    """Labels and per-class scores of a trained classifier on the validation split (else test);
    None past ``max_values`` scores (items x classes)."""
    import numpy as np

    split = next((s for s in ("validation", "test") if td.has_split(s)), None)
    if split is None:
        return None
    classes = [str(c) for c in classes_]
    index = {c: i for i, c in enumerate(classes)}
    cap = max(100, EVAL_MAX_VALUES // len(classes))
    kind = "probability"
    if algo.data_type == "tabular":
        x, y = td.table(split)
        total = len(x)
        if max_values is not None and total * len(classes) > max_values:
            return None
        x, y = x.iloc[:cap], y.iloc[:cap]
        labels = [str(v) for v in y.tolist()]
        xx = algo._x(model.meta, x)
        est = model.native
        if hasattr(est[-1], "predict_proba"):
            scores = np.asarray(est.predict_proba(xx), dtype=float)
        else:  # e.g. SVC without probability=True: margins rank as well for PR/ROC
            kind = "decision"
            scores = np.asarray(est.decision_function(xx), dtype=float)
            if scores.ndim == 1:
                scores = np.stack([-scores, scores], axis=1)
    else:
        import torch

        items = td.items(split)
        total = len(items)
        items = items[:cap]
        labels = [str(it.label) for it in items]
        net = model.native.eval()
        parts = []
        with torch.inference_mode():
            for i in range(0, len(items), 64):
                paths = [td.content.abspath(it.path) for it in items[i:i + 64]]
                parts.append(torch.softmax(net(algo._batch(model, paths)), 1).numpy())
        scores = np.concatenate(parts) if parts else np.zeros((0, len(classes)))
    keep = [i for i, lab in enumerate(labels) if lab in index]
    return {"split": split, "classes": classes, "kind": kind, "items": len(keep), "truncated": total > len(labels),
            "y_true": [index[labels[i]] for i in keep],
            "scores": [[round(float(v), 6) for v in scores[i]] for i in keep]}


# -- the git-tracked results file (kiln report) --------------------------------------------------

RESULTS_ROOT = "metrics"


def results_rel(workspace: str, name: str) -> str:
    """Where an experiment's results file lives, relative to the repository root."""
    return f"{RESULTS_ROOT}/{workspace}/{name}.json"


def results_doc(ws: str, name: str, spec_hash: str, spec: ExperimentSpec, run: Path) -> dict[str, Any]:
    sel = (read_json(run / "selected.json") or {}).get("selected") or {}
    data = read_json(run / "data.json") or {}
    reg = read_json(run / "registered.json")
    metric = spec.objective.metric
    keep = (metric, *spec.objective.additionalMetrics)
    metrics = {k: v for k, v in (sel.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and (k in keep or k.startswith(("validation_", "test_")))}
    states: dict[str, int] = {}
    for r in trials(run):
        states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
    return {"experiment": f"{ws}/{name}", "specHash": spec_hash, "mode": spec.mode,
            "dataset": {"name": data.get("dataset"), "number": data.get("number"), "version": data.get("version")},
            "objective": {"metric": metric, "direction": spec.objective.direction, "value": sel.get("value")},
            "best": {"trial": sel.get("trial"), "algorithm": sel.get("algorithm"), "candidate": sel.get("candidate"),
                     "params": sel.get("params", {})},
            "metrics": metrics, "trials": states,
            "registered": {"model": reg["model"], "version": reg["version"]} if reg else None}


def write_results(ctx: StepContext, spec: ExperimentSpec, run: Path) -> None:
    """Write ``metrics/<ws>/<name>.json`` (atomically) for the run that was just selected or
    registered; the user commits it with the spec change."""
    ws, name = _ws_name(ctx)
    write_json(ctx.config.repo / results_rel(ws, name), results_doc(ws, name, ctx.spec_hash, spec, run))


# -- export and register -------------------------------------------------------------------------

def _selected(run: Path) -> dict[str, Any]:
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
    """Export the selected model to ONNX and check it against the native model (parity)."""
    from kiln.algorithms.onnx import export_and_check

    spec = _spec(ctx)
    run = _run(ctx)
    sel = _selected(run)
    tdir = run / "trials" / sel["trial"]
    mdir = tdir / "model"
    tol = spec.registration.onnxTolerance if spec.registration else 1e-4
    meta = read_json(mdir / "meta.json") or {}
    if not meta.get("algorithm"):
        if (mdir / "model.onnx").is_file():  # the user's script exported it itself
            rep = {"file": "model.onnx", "checked": False, "note": "exported by the training command"}
            write_json(run / "onnx.json", rep)
            return rep
        raise KilnError(f"register.export [onnx]: trial {sel['trial']} was trained by a command and saved no "
                        "model.onnx in $KILN_OUTPUT_DIR", hint="export ONNX in your script, or drop register.export")
    from kiln.algorithms.registry import get_algorithm

    algo = get_algorithm(meta["algorithm"])
    model = algo.load(mdir)
    sample = _sample(ctx, run, meta, 64 if algo.data_type == "tabular" else 8)
    report = export_and_check(algo, model, tdir / "model.onnx", sample, tol)
    if report is None:
        raise KilnError(f"register.export [onnx]: algorithm {meta['algorithm']} has no ONNX exporter for this model",
                        hint="drop register.export, or use another algorithm")
    log(f"ONNX parity passed: {report.summary()}")
    rep = {"file": "model.onnx", "checked": True, "samples": report.samples, "tolerance": report.tolerance,
           "maxAbsDiff": max(report.max_abs_diff) if report.max_abs_diff else 0.0, "summary": report.summary()}
    write_json(run / "onnx.json", rep)
    return rep


def _serving(algo: Any, meta: dict[str, Any], framework: str, file: str) -> dict[str, Any]:
    task = {"classification": "classification", "regression": "regression"}.get(algo.task, algo.task)
    if task in ("semantic-segmentation", "instance-segmentation"):
        task = "segmentation"
    cfg: dict[str, Any] = {"framework": framework, "file": file, "task": task}
    if algo.data_type == "tabular":
        cfg["input"] = "tabular"
        cfg["features"] = list(meta.get("columns", []))
        if meta.get("categorical"):
            cfg["feature_types"] = {c: "string" for c in meta["categorical"]}
    else:
        from kiln.algorithms.vision import IMAGENET_MEAN, IMAGENET_STD

        s = int(meta.get("input_size", 224))
        cfg["input"] = "image"
        cfg["image"] = {"size": [s, s], "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if meta.get("classes") is not None:
        cfg["labels"] = [str(c) for c in meta["classes"]]
    return cfg


def _package(ctx: StepContext, run: Path, sel: dict[str, Any], want_onnx: bool) -> tuple[Path, str, dict[str, Any] | None]:
    """A folder to register: the serving file at the top (model.onnx | model.joblib | TorchScript
    model.pt) plus ``kiln-model/`` (what ``Algorithm.load`` reads, for ``kiln infer``)."""
    tdir = run / "trials" / sel["trial"]
    mdir = tdir / "model"
    pkg = tdir / ".package"
    shutil.rmtree(pkg, ignore_errors=True)
    meta = read_json(mdir / "meta.json") or {}
    if not meta.get("algorithm"):  # the user's own model: registered as the script saved it
        shutil.copytree(mdir, pkg)
        serving = read_json(mdir / "kiln-serving.json")
        fw = _detect_framework(mdir)
        if want_onnx and (mdir / "model.onnx").is_file():
            fw = "onnx"
            serving = {**(serving or {}), "framework": "onnx", "file": "model.onnx"}
        if fw == "unknown":
            raise KilnError(f"trial {sel['trial']}: the training command saved no model into $KILN_OUTPUT_DIR",
                            hint="save model.joblib, model.pt (TorchScript) or model.onnx there")
        if serving is not None:
            (pkg / "kiln-serving.json").unlink(missing_ok=True)
        return pkg, fw, serving
    from kiln.algorithms.registry import get_algorithm

    algo = get_algorithm(meta["algorithm"])
    shutil.copytree(mdir, pkg / "kiln-model")
    if want_onnx:
        shutil.copy2(tdir / "model.onnx", pkg / "model.onnx")
        return pkg, "onnx", _serving(algo, meta, "onnx", "model.onnx")
    if algo.framework in ("sklearn", "xgboost"):
        shutil.copy2(mdir / "model.joblib", pkg / "model.joblib")
        return pkg, "sklearn", _serving(algo, meta, "sklearn", "model.joblib")
    import torch

    model = algo.load(mdir)
    own = algo.export_torchscript(model, pkg / "model.pt")
    if own is not None:  # detectors: post-processing folded in, their own image size and labels
        return pkg, "torch", {**_serving(algo, meta, "torch", "model.pt"), **own}
    s = int(meta.get("input_size", 224))
    traced = torch.jit.trace(model.native.eval().cpu(), torch.zeros(1, 3, s, s))
    traced.save(str(pkg / "model.pt"))
    return pkg, "torch", _serving(algo, meta, "torch", "model.pt")


def _deployment_versions(ctx: StepContext, model: str) -> set[int]:
    """Versions of ``model`` that Deployment specs (in the repository, and applied) pin."""
    used: set[int] = set()
    docs: list[dict[str, Any]] = []
    try:
        from kiln.controller.project import load_valid

        docs += [s.doc for s in load_valid(ctx.config).specs if s.kind == "Deployment"]
    except Exception:  # noqa: BLE001 - unreadable specs: fall back to what was applied
        pass
    try:
        from kiln.controller.project import read_records

        docs += [r.spec for r in read_records(ctx.config) if r.kind == "Deployment" and r.spec]
    except Exception:  # noqa: BLE001
        pass
    for d in docs:
        m = ((d or {}).get("spec") or {}).get("model") or {}
        if m.get("name") == model and m.get("version"):
            used.add(int(m["version"]))
    return used


def _no_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _no_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_no_none(x) for x in v if x is not None]
    return v


def register(ctx: StepContext) -> dict[str, Any]:
    from kiln.bento.registry import Registry, default_home

    spec = _spec(ctx)
    reg_spec = spec.registration
    if reg_spec is None:
        raise KilnError("spec.register is not set; nothing to register")
    ws, name = _ws_name(ctx)
    run = _run(ctx)
    sel = _selected(run)
    data = read_json(run / "data.json") or {}
    reg = Registry(default_home(ctx.config.repo))
    model = reg_spec.model
    # the data version too: a retrain of the same spec on new data is another model version
    run_label = f"{ctx.spec_hash[:16]}.{str(data.get('version', ''))[:8]}.{sel['trial']}"
    with file_lock(run / "register.lock"):
        done = read_json(run / "registered.json")
        if done and done.get("run") == run_label:
            return done
        # a retried register after a crash between registering and recording: reuse that version
        version = next((mv.version for mv in (reg.list(model) if model in reg.names() else [])
                        if mv["labels"].get("kiln_run") == run_label), None)
        if version is None:
            want_onnx = "onnx" in reg_spec.export
            pkg, framework, serving = _package(ctx, run, sel, want_onnx)
            ds_dir = ctx.config.repo / data.get("path", "")
            pre = ds_dir if data.get("type") == "tabular" and (ds_dir / ".kiln" / "preprocess.joblib").is_file() else None
            if pre is not None and serving is not None:
                serving.pop("feature_types", None)
            labels = {"experiment": experiment_label(ws, name), "dataset": data.get("dataset", "").replace("/", "."),
                      "dataset_version": data.get("version", ""), "trial": sel["trial"], "kiln_run": run_label,
                      "algorithm": sel.get("algorithm") or "command"}
            metadata = {"metrics": sel.get("metrics", {}), "params": sel.get("params", {}),
                        "objective": {"metric": sel["metric"], "value": sel["value"]},
                        "spec_hash": ctx.spec_hash, "dataset_number": data.get("number"),
                        "onnx": read_json(run / "onnx.json")}
            metadata = _no_none(metadata)  # BentoML metadata takes no None values
            version = reg.register(model, pkg, framework, labels=labels, metadata=metadata,
                                   tags=[f"{k}={v}" for k, v in sorted(reg_spec.tags.items())],
                                   description=reg_spec.description or "", serving=serving, preprocess_from=pre)
            shutil.rmtree(pkg, ignore_errors=True)
            log(f"registered {model} v{version} ({framework}) from trial {sel['trial']}")
        for alias in reg_spec.aliases:
            if reg.aliases(model).get(alias) != version:
                reg.set_alias(model, alias, version)
                log(f"alias {model}@{alias} -> v{version}")
        deleted: list[int] = []
        if reg_spec.keepVersions:
            deleted = reg.keep_versions(model, reg_spec.keepVersions, in_use=_deployment_versions(ctx, model))
            if deleted:
                log(f"deleted old versions of {model} (keepVersions {reg_spec.keepVersions}): "
                    + ", ".join(f"v{v}" for v in deleted))
        out = {"model": model, "version": version, "aliases": list(reg_spec.aliases), "deleted": deleted,
               "run": run_label, "trial": sel["trial"]}
        write_json(run / "registered.json", out)
    _write_summary(ctx, spec, run)
    write_results(ctx, spec, run)
    return out


# -- summary (what the handler shows) -------------------------------------------------------------

def summarize(spec: ExperimentSpec, run: Path) -> dict[str, Any]:
    """The record's ``extra`` for an experiment run folder (also used while it runs)."""
    recs = trials(run)
    metric = spec.objective.metric
    if spec.mode == "hpo":
        total = spec.hpo.maxTrials if spec.hpo else 0
    elif spec.mode == "automl":
        assert spec.automl is not None
        per = spec.automl.trialsPerCandidate
        total = sum(per if (per > 1 and c.searchSpace) else 1 for c in spec.automl.candidates)
    else:
        total = max(1, len(spec.parameterSets))
    finished = [r for r in recs if r.get("state") in TERMINAL]
    states: dict[str, int] = {}
    for r in recs:
        states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
    sel = read_json(run / "selected.json") or {}
    board = sel.get("leaderboard") or leaderboard(spec, recs)
    best = sel.get("selected") or (board[0] if board else None)
    registered = read_json(run / "registered.json")
    data = read_json(run / "data.json") or {}
    compact = [{"id": r["id"], "number": r.get("number"), "candidate": r.get("candidate"),
                "params": r.get("params", {}), "state": r.get("state"), "objective": r.get("objective"),
                "metrics": {k: v for k, v in (r.get("metrics") or {}).items()
                            if k in (metric, *spec.objective.additionalMetrics) or k.startswith(("validation_", "test_"))},
                **({"error": r["error"][:200]} if r.get("error") else {})} for r in recs]
    best_value = (best or {}).get("value", (best or {}).get("objective"))
    info = f"{spec.mode} {len(finished)}/{total} trials"
    if best:
        info += f", best {metric}={best_value:.4g} ({best['trial']})" if best_value is not None else ""
    if registered:
        info += f" -> {registered['model']} v{registered['version']}"
    return {"mode": spec.mode, "trialsDone": len(finished), "trialsTotal": total, "states": states,
            "dataset": {k: data.get(k) for k in ("dataset", "number", "version")} if data else None,
            "trials": compact[-50:], "leaderboard": board[:10],
            "best": {"trial": best["trial"], "metric": metric, "value": best_value,
                     "params": best.get("params", {})} if best else None,
            "registered": registered, "info": info, "run": str(run)}


def _write_summary(ctx: StepContext, spec: ExperimentSpec, run: Path) -> None:
    write_json(run / "summary.json", summarize(spec, run))


STEP_FUNCS = {
    "experiment.prepare-data": prepare_data,
    "experiment.train": train,
    "experiment.create-study": create_study,
    "experiment.hpo-worker": hpo_worker,
    "experiment.train-candidate": train_candidate,
    "experiment.select": select,
    "experiment.export-onnx": export_onnx,
    "experiment.register": register,
}
