"""Training by the user's own command (``spec.command``): run it with the trial's parameters,
follow its metrics file into the trial's reporter, and tell which framework its model is."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln._util.redact import is_secret_key
from kiln.algorithms.base import Pruned
from kiln.algorithms.registry import get_algorithm_class
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.home import TrialFailed, log, run_folder
from kiln.controller.experiment.trial import Reporter, Trial, tensorboardx_without_torch
from kiln.controller.steps import StepContext
from kiln.errors import ConfigError

# What a user's command inherits from the step's environment: what programs and ML libraries need
# to run (paths, locale, threads, GPUs, caches), never kiln's own settings and secrets (the state
# URL, the Label Studio admin token, webhook URLs) nor anything secret-named. It also gets its
# dataset, run folders and parameters (KILN_DATA_DIR ...) and what the spec's command.env declares.
_PASS_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                         "TEMP", "TMP", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "SYSTEMROOT",
                         "KILN_RANDOM_SEED"})
_PASS_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "NCCL_", "HF_", "TRANSFORMERS_",
                  "TORCH_", "TF_", "XDG_")


def user_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The part of ``base`` that a user's command may see (see ``_PASS_NAMES``)."""
    return {k: v for k, v in base.items()
            if (k in _PASS_NAMES or k.startswith(_PASS_PREFIXES)) and not is_secret_key(k)}


def _runner_last(base: Mapping[str, str]) -> dict[str, str]:
    """In a user's image (``command.image``) kiln's packages come first on the step's own path;
    the user's command gets them last, so its own packages win and ``import kiln`` still works."""
    runner = base.get("KILN_RUNNER_PATH")
    if not runner:
        return {}
    rest = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p != runner]
    return {"PYTHONPATH": os.pathsep.join([*rest, runner])}


def _cli_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def train_command(ctx: StepContext, spec: ExperimentSpec, trial: Trial, params: dict[str, Any],
                  optuna_trial: Any) -> str:
    """Run the user's command with ``--name value`` per hyperparameter; follow its metrics file."""
    cmd = spec.command
    assert cmd is not None
    argv, cwd, env = _invocation(ctx, spec, trial, params)
    follow = Path(env["KILN_METRICS_FILE"])
    follow.unlink(missing_ok=True)  # a re-run reports afresh (its own checkpoints are the script's)
    tensorboardx_without_torch()
    # a parameter named epochs is taken for the number of epochs the script reports (time left)
    epochs = params.get("epochs")
    rep = Reporter(trial, spec.objective, total=epochs if isinstance(epochs, int) and epochs > 0 else None,
                   optuna_trial=optuna_trial, keep_checkpoints=spec.checkpoint.keep, tensorboard=True)
    log(f"[{trial.id}] $ {shlex.join(argv)}  (in {cwd})")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise ConfigError(f"command {cmd.run!r}: cannot start {argv[0]!r}: {exc.strerror}",
                          hint="give a program on PATH or a path relative to command.workdir") from None
    rc, tail = _follow(proc, follow, rep, trial.id)
    if rc != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise TrialFailed(f"command {cmd.run!r} exited with code {rc}" + (f": {last[-300:]}" if last else ""))
    return detect_framework(Path(env["KILN_OUTPUT_DIR"]))


def _invocation(ctx: StepContext, spec: ExperimentSpec, trial: Trial,
                params: dict[str, Any]) -> tuple[list[str], Path, dict[str, str]]:
    """The command line, working folder and environment of the trial's command (which makes
    the trial's model and checkpoints folders it writes into)."""
    cmd = spec.command
    assert cmd is not None
    data = read_json(run_folder(ctx) / "data.json")
    repo = ctx.config.repo
    cwd = (repo / cmd.workdir).resolve()
    if not cwd.is_dir():
        raise ConfigError(f"command.workdir {cmd.workdir!r} does not exist in {repo}")
    out = trial.dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = trial.dir / "metrics.jsonl"
    if cmd.metricsFile:
        # relative to the trial's output folder (the spec refuses absolute paths and ".."); a
        # symlink there must not lead kiln to delete or follow a file elsewhere either
        metrics_file = (out / cmd.metricsFile).resolve()
        if not metrics_file.is_relative_to(out.resolve()):
            raise ConfigError(f"command.metricsFile {cmd.metricsFile!r} leads outside the trial's output folder",
                              hint="name a file inside $KILN_OUTPUT_DIR")
    (trial.dir / "checkpoints").mkdir(exist_ok=True)
    argv = shlex.split(cmd.run)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the environment kiln runs in (its venv / image)
    for k, v in params.items():
        argv += [f"--{k}", _cli_value(v)]
    env = {**user_environment(os.environ), **_runner_last(os.environ), **cmd.env,
           "KILN_DATA_DIR": str(repo / data["path"]), "KILN_OUTPUT_DIR": str(out),
           "KILN_METRICS_FILE": str(metrics_file if cmd.metricsFile else trial.dir / "reported.jsonl"),
           "KILN_CHECKPOINT_DIR": str(trial.dir / "checkpoints"), "KILN_TRIAL": trial.id,
           "KILN_PARAMS": json.dumps(params, sort_keys=True), "PYTHONUNBUFFERED": "1"}
    return argv, cwd, env


def _follow(proc: subprocess.Popen[bytes], follow: Path, rep: Reporter, tid: str) -> tuple[int, list[str]]:
    """Wait for the command, its output into the task log and its metrics file into ``rep``
    (which closes). Returns the exit code and the output's last lines. A pruned trial's command
    is stopped (SIGTERM, it may save) and ``Pruned`` propagates; on any other error it is killed."""
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip()
            tail.append(text)
            del tail[:-20]
            log(f"[{tid}] | {text}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    pos = 0
    pruned = None
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
    assert rc is not None  # the loop ends only once the command has exited
    return rc, tail


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


def detect_framework(out: Path) -> str:
    serving = read_json(out / "kiln-serving.json") or {}
    if serving.get("framework"):
        return str(serving["framework"])
    meta = read_json(out / "meta.json") or {}
    if meta.get("algorithm"):
        return get_algorithm_class(meta["algorithm"]).framework
    for f, fw in (("model.onnx", "onnx"), ("model.joblib", "sklearn"), ("model.pt", "torch")):
        if (out / f).is_file():
            return fw
    return "unknown"
