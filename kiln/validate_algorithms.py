"""Spec checks that need to know the algorithms: names, hyperparameters, search spaces, metrics,
dataset fit, ONNX export and serving runtimes.

Why here and not in the handlers: each of these mistakes used to pass ``kiln validate`` and fail
during ``apply``, after the merge, some after minutes of training. Everything is read from the
catalogue (``kiln.algorithms.catalogue``, plain data), so validation still imports no ML library;
a value's type and range are judged by pydantic against the same annotation the algorithm's own
model declares, so what passes here is what ``Algorithm.hyperparameters`` accepts at apply.

One entry point, ``check_algorithms(checker, spec)``, called by ``kiln.validate`` for every
Experiment and Deployment; each problem becomes one ``SpecIssue`` at the offending YAML line.
"""

from __future__ import annotations

import json
import weakref
from functools import lru_cache
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import Field, TypeAdapter, ValidationError

from kiln._util.suggest import did_you_mean
from kiln.algorithms.catalogue import (
    AUTOML_DEFAULTS,
    CATALOGUE,
    MAXIMIZE,
    METRIC_BOUNDS,
    AlgorithmInfo,
    Param,
    metric_base,
)
from kiln.loader import LoadedSpec

Path_ = list[Any]


class Checker(Protocol):
    """What ``kiln.validate._Checker`` offers these checks: the specs by kind and a way to report."""

    by_kind: dict[str, dict[tuple[str, str], LoadedSpec]]

    def add(self, s: LoadedSpec, path: list, message: str, hint: str | None = None) -> None: ...


def check_algorithms(checker: Checker, s: LoadedSpec) -> None:
    """Report every algorithm-dependent problem of Experiment or Deployment ``s``."""
    if s.kind == "Experiment":
        _Experiment(checker, s).run()
    elif s.kind == "Deployment":
        _deployment_runtime(checker, s)


# -- values against a Param ------------------------------------------------------------------------

_PY = {"int": int, "float": float, "bool": bool, "str": str}


@lru_cache(maxsize=512)
def _adapter(p: Param) -> TypeAdapter[Any]:
    """The pydantic type of ``p``, built as the algorithm's model declares it (bounds included)."""
    bounds = {k: getattr(p, k) for k in ("ge", "gt", "le", "lt") if getattr(p, k) is not None}
    members: list[Any] = []
    if p.type != "choice":
        members.append(Annotated[_PY[p.type], Field(**bounds)] if bounds else _PY[p.type])
    if p.choices:
        members.append(Literal[p.choices])
    tp: Any = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007 - built at runtime
    return TypeAdapter(Union[tp, None] if p.nullable else tp)  # noqa: UP007


def accepts(p: Param, value: Any) -> bool:
    try:
        _adapter(p).validate_python(value)
    except ValidationError:
        return False
    return True


def expected(p: Param) -> str:
    """``an int in [1, 10000]``, ``one of rbf | linear``, ``a float, sqrt or log2, or null``."""
    if p.type == "choice":
        text = f"one of {' | '.join(map(str, p.choices))}"
    else:
        article = "an" if p.type == "int" else "a"
        text = f"{article} {p.type}"
        rng = p.range_text() if not p.choices else ""
        if rng:
            text += f" in {rng}" if rng[0] in "[(" else f" {rng}"
        if p.choices:
            text += f" or one of {' | '.join(map(str, p.choices))}"
    return text + (", or null" if p.nullable else "")


def _shown(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else repr(v)


def _value_hint(p: Param, value: Any) -> str:
    if isinstance(value, list):
        return (f"one value here; to try several, use mode: hpo and searchSpace: "
                f"{{{p.name}: {{type: choice, values: {json.dumps(value)}}}}}")
    if isinstance(value, bool) and p.type in ("choice", "str"):
        word = next((c for c in p.choices if isinstance(c, str) and c in ("on", "off", "yes", "no")), None)
        if word:
            return f"YAML reads a bare on/off/yes/no as true/false: quote it, e.g. {p.name}: '{word}'"
    return f"default {_shown(p.default)}"


# -- Experiment ------------------------------------------------------------------------------------

class _Experiment:
    def __init__(self, checker: Checker, s: LoadedSpec) -> None:
        self.c, self.s, self.spec = checker, s, s.obj.spec
        ds = checker.by_kind["Dataset"].get((self.spec.dataset.workspace or s.workspace, self.spec.dataset.name))
        self.dataset = ds.obj.spec if ds is not None else None
        self.ds_name = ds.name if ds is not None else None
        # the task the experiment trains for: its own, else its dataset's (None: not known here)
        self.task = self.spec.task or (self.dataset.task if self.dataset is not None else None)

    def add(self, path: Path_, message: str, hint: str | None = None) -> None:
        self.c.add(self.s, path, message, hint)

    def run(self) -> None:
        spec = self.spec
        if spec.command is not None:
            return  # your own script: its parameters and metrics are its own
        used: list[tuple[AlgorithmInfo, Path_]] = []
        if spec.algorithm is not None:
            info = self._algorithm(spec.algorithm, ["spec", "algorithm"])
            if info is not None:
                used.append((info, ["spec", "algorithm"]))
                # each set is merged over algorithm.hyperparameters for one job (Flightbase)
                for i, values in enumerate(spec.parameterSets):
                    for name, value in values.items():
                        self._hyperparameter(info, name, value, ["spec", "parameterSets", i, name])
        elif spec.automl is not None:
            used = self._automl()
        if not used:
            return
        self._objective(used)
        self._export(used)

    def _algorithm(self, algo: Any, path: Path_) -> AlgorithmInfo | None:
        info = CATALOGUE.get(algo.name)
        if info is None:
            self.add(path + ["name"], f"unknown algorithm {algo.name!r}",
                     did_you_mean(algo.name, CATALOGUE) or "`kiln algorithms list` shows them all")
            return None
        fits = self._fits_dataset(info, path + ["name"])
        for name, value in algo.hyperparameters.items():
            self._hyperparameter(info, name, value, path + ["hyperparameters", name])
        for name, sp in algo.searchSpace.items():
            self._search(info, name, sp, path + ["searchSpace", name])
        # one that cannot train on the dataset: its metrics would only add noise to that error
        return info if fits else None

    def _unknown_param(self, info: AlgorithmInfo, name: str, path: Path_, what: str) -> None:
        self.add(path, f"{info.name} has no {what} {name!r}",
                 did_you_mean(name, info.param_names) or
                 f"its hyperparameters: {', '.join(info.param_names)} (`kiln algorithms describe {info.name}`)")

    def _hyperparameter(self, info: AlgorithmInfo, name: str, value: Any, path: Path_) -> None:
        p = info.param(name)
        if p is None:
            self._unknown_param(info, name, path, "hyperparameter")
        elif not accepts(p, value):
            self.add(path, f"{info.name} hyperparameter {name}: expected {expected(p)}, got {_shown(value)}",
                     _value_hint(p, value))

    def _search(self, info: AlgorithmInfo, name: str, sp: Any, path: Path_) -> None:
        p = info.param(name)
        if p is None:
            self._unknown_param(info, name, path, "hyperparameter to search")
            return
        if sp.type == "choice":
            for i, v in enumerate(sp.values):
                if not accepts(p, v):
                    self.add(path + ["values", i], f"{info.name} searchSpace {name}: value {_shown(v)} is not "
                             f"{expected(p)}", _value_hint(p, v))
            return
        if p.type not in ("int", "float") or (p.type == "int" and sp.type == "float"):
            self.add(path + ["type"], f"{info.name} searchSpace {name}: a {sp.type} range for {expected(p)}",
                     f"use type: choice with values: {json.dumps(list(p.choices) or [p.default])}"
                     if p.type not in ("int", "float") else "use type: int (low, high and step integers)")
            return
        for end in ("low", "high"):
            v = getattr(sp, end)
            if not accepts(p, v):
                self.add(path + [end], f"{info.name} searchSpace {name}: {end} {_shown(v)} is out of range "
                         f"({name} is {expected(p)})", f"keep the range inside {p.range_text()}")

    def _fits_dataset(self, info: AlgorithmInfo, path: Path_) -> bool:
        ds = self.dataset
        if ds is None:
            return True  # unknown dataset: reported by the reference check
        if info.data_type != ds.type:
            self.add(path, f"algorithm {info.name} trains on {info.data_type} data; dataset {self.ds_name!r} "
                     f"is {ds.type}", _choose(ds.type, ds.task))
            return False
        if not info.accepts(ds.type, ds.task):
            self.add(path, f"algorithm {info.name} is for {info.task}; dataset {self.ds_name!r} is a {ds.task} "
                     "dataset", _choose(ds.type, ds.task))
            return False
        return True

    def _automl(self) -> list[tuple[AlgorithmInfo, Path_]]:
        automl = self.spec.automl
        used = []
        for i, cand in enumerate(automl.candidates):
            path = ["spec", "automl", "candidates", i]
            info = self._algorithm(cand, path)
            if info is not None:
                used.append((info, path))
        if not automl.candidates:
            defaults = [n for n, _ in AUTOML_DEFAULTS.get(self.task or "", [])]
            if self.task is not None and not defaults:
                self.add(["spec", "automl"], f"automl has no default candidates for a {self.task} task "
                         "(only tabular classification and regression)",
                         f"list automl.candidates, e.g. {_examples(self.dataset.type if self.dataset else None, self.task)}")
            used = [(CATALOGUE[n], ["spec", "automl"]) for n in defaults if n in CATALOGUE]
        return used

    def _objective(self, used: list[tuple[AlgorithmInfo, Path_]]) -> None:
        obj = self.spec.objective
        written = "objective" in (self.s.doc.get("spec") or {})
        opath = ["spec", "objective", "metric"] if written else ["spec"]
        missing = [(info, path) for info, path in used if obj.metric not in info.metrics]
        if missing and len(missing) == len(used):
            info = missing[0][0]
            suggestion = did_you_mean(obj.metric, info.metrics) if written else None
            best = next((m for m in info.metrics if m.startswith("validation_")), info.metrics[0])
            what = "objective.metric" if written else "the default objective.metric"
            self.add(opath, f"{what} {obj.metric!r} is not reported by {info.name}"
                     + (" (nor by the other candidates)" if len(used) > 1 else ""),
                     suggestion or f"it reports {', '.join(info.metrics)}; e.g. objective: {{metric: {best}, "
                     f"direction: {'maximize' if metric_base(best) in MAXIMIZE else 'minimize'}}}")
            return
        for info, path in missing:  # automl: a candidate that cannot be ranked
            self.add(path + ["name"], f"candidate {info.name} does not report objective metric {obj.metric!r}",
                     "drop it or choose a metric every candidate reports")
        base = metric_base(obj.metric)
        if written and "direction" in (self.s.doc["spec"].get("objective") or {}):
            want = "maximize" if base in MAXIMIZE else "minimize" if base in METRIC_BOUNDS else None
            if want is not None and obj.direction != want:
                self.add(["spec", "objective", "direction"],
                         f"direction {obj.direction} for {obj.metric} would select the worst trial",
                         f"direction: {want}")
        low, high = METRIC_BOUNDS.get(base, (None, None))
        if obj.goal is not None and ((low is not None and obj.goal < low) or (high is not None and obj.goal > high)):
            rng = f"[{low:g}, {high:g}]" if low is not None and high is not None else \
                (f">= {low:g}" if low is not None else f"<= {high:g}")
            self.add(["spec", "objective", "goal"], f"goal {obj.goal:g} can never be reached: {obj.metric} is "
                     f"{rng}", "a fraction, not a percentage (0.97 for 97%)" if high == 1.0 and obj.goal > 1
                     else None)

    def _export(self, used: list[tuple[AlgorithmInfo, Path_]]) -> None:
        reg = self.spec.registration
        if reg is None:
            return
        onnx = "onnx" in reg.export
        for info, path in used:
            where = path + ["name"] if path[-1] != "automl" else path
            if onnx and not info.onnx:
                self.add(["spec", "register", "export"] if len(used) == 1 else where,
                         f"algorithm {info.name} cannot export ONNX",
                         f"drop export: [onnx] (it serves with runtime: {', '.join(info.runtimes)})"
                         if len(used) == 1 else "drop this candidate or export: [onnx]")
            elif not onnx and "native" not in info.runtimes:
                self.add(["spec", "register"] if len(used) == 1 else where,
                         f"algorithm {info.name} is served only through ONNX; registering it needs export: [onnx]",
                         "add export: [onnx] to register")


def _examples(data_type: str | None, task: str | None, n: int = 3) -> str:
    names = [a.name for a in CATALOGUE.values()
             if data_type is None and (task is None or task in a.data_tasks) or
             data_type is not None and a.accepts(data_type, task)]
    return ", ".join(names[:n]) if names else "none"


def _choose(data_type: str, task: str | None) -> str:
    """The hint for an algorithm that does not fit the dataset: ones that do, never a wrong kind."""
    what = f"{data_type} {task}" if task else data_type
    names = _examples(data_type, task)
    if names == "none":
        return f"no built-in algorithm trains on {what} data; use command: to run your own"
    return f"choose one that trains on {what} data: {names} ... (`kiln algorithms list" + (
        f" --task {task}`)" if task else "`)")


# -- Deployment ------------------------------------------------------------------------------------

# checker -> {(workspace, model): experiments registering it}, built once per validation run: a
# scan of every experiment per deployment was quadratic (0.28 s of 1,000 specs in bench/plan_1000)
_REGISTERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[LoadedSpec]]] = weakref.WeakKeyDictionary()


def _registering(checker: Checker, s: LoadedSpec) -> list[LoadedSpec]:
    """Experiments of the repository that register the model ``s`` (a Deployment) serves."""
    ref = s.obj.spec.model
    exps = checker.by_kind["Experiment"]
    if ref.experiment:
        exp = exps.get((s.workspace, ref.experiment))
        return [exp] if exp is not None and exp.obj.spec.registration is not None else []
    index = _REGISTERS.get(checker)
    if index is None:
        index = _REGISTERS[checker] = {}
        for (ws, _), e in exps.items():
            if e.obj.spec.registration is not None:
                index.setdefault((ws, e.obj.spec.registration.model), []).append(e)
    return index.get((s.workspace, ref.name or ""), [])


def _deployment_runtime(checker: Checker, s: LoadedSpec) -> None:
    if s.obj.spec.runtime != "onnx" or s.obj.spec.model.version is not None:
        return  # a pinned version may be one registered with ONNX before the spec changed
    exps = _registering(checker, s)
    # only when every experiment of the repo that registers it leaves ONNX out (a version
    # registered by hand may still be there, but apply takes the latest the specs make)
    if exps and all("onnx" not in e.obj.spec.registration.export for e in exps):
        e = exps[0]
        checker.add(s, ["spec", "runtime"], f"runtime onnx, but Experiment {e.name!r} registers model "
                    f"{e.obj.spec.registration.model!r} without ONNX",
                    f"add export: [onnx] to its register at {e.location()}, or use runtime: native")
