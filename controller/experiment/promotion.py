"""Which aliases a registered version takes (#21): ``register.aliases`` rules, decided in the
register step and recorded with every alias move.

An alias is a name (the rule ``better``), ``{name, when: better | always, metric, minDelta,
split}`` or ``{name, version: N}`` (pinned). ``better`` moves the alias only when the new version
(the challenger) beats the version the alias points at (the champion) on the metric, by more than
``minDelta``, both evaluated here on the same rows: the ``split`` of the dataset version this run
trained on. Recorded metrics are never compared across data: the champion was maybe trained and
scored on an older dataset version, so it is evaluated again, on this one. Both models are loaded
from the repository's model store (``kiln.bento.registry``, under ``.kiln/``, written by kiln's
own register step), never from a file a commit carries.

Each decision is a dict (``registered.json`` ``promotion``, the record's ``extra.registered``,
``describe``, ``status``, the report)::

    {"alias": "production", "rule": "better on test accuracy", "moved": false, "from": 1, "to": 1,
     "metric": "test_accuracy", "champion": 1.0, "challenger": 0.96,
     "reason": "v2 test_accuracy 0.96 is not better than v1's 1 (same rows: wine v1 test split)"}

A limit: tabular rows are compared as the current dataset version holds them, transformed by its
fitted preprocessing ``ops``, while a version serves raw rows through the ops fitted for its own
dataset version (``preprocess/`` in the version). A champion of an older version whose ops were
refitted is so scored on slightly other features than it serves with; when the ops themselves
changed, promote by a pinned version rather than by the rule.

A version that cannot be compared (a model trained by your own command without the metric, a
metric the task does not report) does not take a ``better`` alias: the reason says so and how
to promote it anyway (``when: always``, or pin the version).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.fs import read_json
from kiln.api.experiment import AliasPolicy, ExperimentSpec
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.bento.registry import Registry

_PREFIXES = ("validation_", "test_", "train_")
_LOWER_IS_BETTER = ("loss", "error", "rmse", "mse", "mae", "mape")


def base_metric(metric: str) -> str:
    for p in _PREFIXES:
        if metric.startswith(p):
            return metric[len(p) :]
    return metric


def compared_metric(spec: ExperimentSpec, policy: AliasPolicy) -> tuple[str, str]:
    """(the metric as evaluated on the policy's split, its direction): ``validation_accuracy`` on
    the test split is ``test_accuracy``. The objective's direction when it is the objective's
    metric; a loss or error is minimised, anything else maximised."""
    base = base_metric(policy.metric or spec.objective.metric)
    if base == base_metric(spec.objective.metric):
        direction = spec.objective.direction
    else:
        direction = "minimize" if any(w in base for w in _LOWER_IS_BETTER) else "maximize"
    return f"{policy.split}_{base}", direction


def rule_text(spec: ExperimentSpec, policy: AliasPolicy) -> str:
    """The rule in words, for plan, describe and the history: ``better on test_accuracy``."""
    if policy.version is not None:
        return f"pinned to v{policy.version}"
    if policy.when == "always":
        return "always"
    metric, direction = compared_metric(spec, policy)
    return (
        f"better on {metric}"
        + (" (lower)" if direction == "minimize" else "")
        + (f" by > {policy.minDelta:g}" if policy.minDelta else "")
    )


class Evaluator:
    """Scores registered versions on the run's data, each version once."""

    def __init__(self, repo: Path, reg: Registry, model: str, spec: ExperimentSpec, data: dict[str, Any]) -> None:
        self.repo, self.reg, self.model, self.spec, self.data = repo, reg, model, spec, data
        self._td: Any = None
        self._scores: dict[tuple[int, str], dict[str, float]] = {}

    def metrics(self, version: int, split: str) -> dict[str, float]:
        """The version's metrics on ``split`` of this run's dataset version; a KilnError says why
        it cannot be evaluated."""
        key = (version, split)
        if key not in self._scores:
            self._scores[key] = self._evaluate(version, split)
        return self._scores[key]

    def _evaluate(self, version: int, split: str) -> dict[str, float]:
        from kiln.algorithms.registry import ALGORITHMS, get_algorithm
        from kiln.controller.experiment.data import load_train_data

        folder = self.reg.path(self.model, version) / "kiln-model"
        meta = read_json(folder / "meta.json") or {}
        name = meta.get("algorithm")
        if not name:
            raise KilnError(f"v{version} was trained by a command: kiln cannot evaluate it")
        if name not in ALGORITHMS:
            raise KilnError(f"v{version}'s algorithm {name!r} is not in this kiln version")
        if self._td is None:
            try:
                self._td = load_train_data(self.repo, self.data, self.spec.split)
            except Exception as exc:  # noqa: BLE001 - no data to compare on is "cannot compare", never a failed run
                raise KilnError(f"the run's dataset version could not be loaded: {type(exc).__name__}: {exc}") from None
        if not self._td.has_split(split):
            raise KilnError(f"dataset {self.data.get('dataset')} {self.data.get('number')} has no {split} split")
        algo = get_algorithm(name)
        try:
            found = dict(algo.evaluate(algo.load(folder), self._td, split))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot compare", said in the reason
            raise KilnError(f"v{version} could not be evaluated on the {split} split: {type(exc).__name__}: {exc}") from None
        return {k: float(v) for k, v in found.items() if isinstance(v, (int, float))}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def decide(
    policy: AliasPolicy, *, version: int, current: int | None, versions: list[int], spec: ExperimentSpec, ev: Evaluator
) -> dict[str, Any]:
    """Where ``policy``'s alias points after ``version`` was registered (module doc)."""
    out: dict[str, Any] = {"alias": policy.name, "rule": rule_text(spec, policy), "from": current}
    if policy.version is not None:
        if policy.version not in versions:
            raise KilnError(
                f"register.aliases: {policy.name} is pinned to version {policy.version}, but model "
                f"{ev.model} has no version {policy.version}",
                hint=f"versions: {', '.join(f'v{v}' for v in versions)}; pin one of them",
            )
        return {
            **out,
            "to": policy.version,
            "moved": current != policy.version,
            "short": "pinned",
            "reason": f"pinned to v{policy.version} in the spec",
        }
    if policy.when == "always" or current is None or current not in versions or current == version:
        why = (
            "when: always"
            if policy.when == "always"
            else "the alias is new"
            if current is None
            else f"its version v{current} no longer exists"
            if current not in versions
            else "already here"
        )
        return {**out, "to": version, "moved": current != version, "reason": why}
    metric, direction = compared_metric(spec, policy)
    out["metric"] = metric
    rows = f"{ev.data.get('dataset')} {ev.data.get('number') or ''} {policy.split} split".replace("  ", " ")
    keep = {**out, "to": current, "moved": False}
    try:
        new, old = ev.metrics(version, policy.split), ev.metrics(current, policy.split)
    except KilnError as exc:
        return {
            **keep,
            "short": "cannot compare",
            "reason": f"cannot compare ({exc.message}); promote with when: always or pin a version",
        }
    if metric not in new or metric not in old:
        have = ", ".join(sorted(new)) or "none"
        return {
            **keep,
            "short": "cannot compare",
            "reason": f"cannot compare: no {metric} on the {policy.split} split (metrics: {have}); "
            "set register.aliases[].metric, or promote with when: always or a pinned version",
        }
    gain = new[metric] - old[metric] if direction == "maximize" else old[metric] - new[metric]
    out.update(challenger=round(new[metric], 6), champion=round(old[metric], 6))
    if gain > policy.minDelta:
        return {
            **out,
            "to": version,
            "moved": True,
            "reason": f"v{version} {metric} {_fmt(new[metric])} beats v{current}'s {_fmt(old[metric])} (same rows: {rows})",
        }
    need = f" by more than {policy.minDelta:g}" if policy.minDelta else ""
    return {
        **out,
        "to": current,
        "moved": False,
        "short": "not better",
        "reason": f"v{version} {metric} {_fmt(new[metric])} is not better than v{current}'s "
        f"{_fmt(old[metric])}{need} (same rows: {rows})",
    }


def promote(
    reg: Registry,
    model: str,
    version: int,
    spec: ExperimentSpec,
    data: dict[str, Any],
    repo: Path,
    *,
    commit: str = "",
    experiment: str = "",
) -> list[dict[str, Any]]:
    """Decide and move every alias of ``spec.register.aliases`` for the newly registered
    ``version``; each move is audited with its reason and the commit (``kiln models history``)."""
    assert spec.registration is not None
    ev = Evaluator(repo, reg, model, spec, data)
    versions = reg.versions(model)
    out = []
    for policy in spec.registration.aliases:
        current = reg.aliases(model).get(policy.name)
        d = decide(policy, version=version, current=current, versions=versions, spec=spec, ev=ev)
        if d["moved"]:
            reg.set_alias(model, policy.name, d["to"], reason=d["reason"], commit=commit, experiment=experiment, previous=current)
        out.append(d)
    return out


def summary(decisions: list[dict[str, Any]]) -> str:
    """One line for status: ``production -> v2; staging kept at v1 (not better)``."""
    return "; ".join(
        f"{d['alias']} -> v{d['to']}"
        if d["moved"]
        else f"{d['alias']} at v{d['to']}"
        if d["to"] == d.get("version")
        else f"{d['alias']} kept at v{d['to']} ({d.get('short', d['reason'])})"
        for d in decisions
    )
