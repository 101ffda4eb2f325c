"""What follows from a planned change in the same apply (#21): `kiln plan`'s cascade.

A change to an Experiment that trains (or registers anew) leads to a model version, which may
move aliases (each under its ``register.aliases`` rule), which roll out the Deployments that
serve the model by that alias (or its latest version, or the experiment), and change what the
LabelingJobs that pre-annotate with it (or through such a deployment) show annotators. A change
to a Dataset makes a new version, which the objects following it (``version: latest``) take up:
derived Datasets version again, LabelingJobs import the new items, Experiments with ``trigger:
onNewDatasetVersion: retrain`` retrain (and their own cascade follows), ``plan-only`` only says so.

Pure and cheap like the plan: it reads specs and two small JSON files of the model store
(``kiln-registry.json`` for the current aliases and version numbers, no BentoML import); nothing
is evaluated here, so an alias under the ``better`` rule "may move": the register step decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.controller.experiment.promotion import rule_text
from kiln.controller.handlers import HANDLERS

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.controller.plan import Change
    from kiln.loader import LoadedSpec

# update classes after which an Experiment has a new model version to register
_NEW_VERSION = ("re-run", "re-select")


@dataclass(frozen=True)
class Effect:
    step: str  # registers | alias | rollout | pre-annotation | retrains | noted | imports | versions | planned
    ref: str  # the object or model it is about: Deployment/wine-api, model wine-clf@production
    text: str  # the line plan prints
    depth: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ref": self.ref, "text": self.text, "depth": self.depth}


class _Store:
    """The model store's aliases and version numbers, as the registry keeps them (read-only)."""

    def __init__(self, config: KilnConfig | None) -> None:
        self.home = config.repo / ".kiln" / "bentoml" if config is not None else None
        state: dict[str, Any] = {}
        if self.home is not None and (self.home / "kiln-registry.json").is_file():
            try:
                state = json.loads((self.home / "kiln-registry.json").read_text())
            except (OSError, ValueError):
                state = {}  # the registry itself reports a damaged file; a plan only loses detail
        self.state = state
        self.warnings: list[str] = []  # what the register step will refuse, said by the plan already

    def alias(self, model: str, alias: str) -> int | None:
        return (self.state.get("aliases") or {}).get(model, {}).get(alias)

    def versions(self, model: str) -> list[int]:
        if self.home is None:
            return []
        found = self.home / "models" / model
        return sorted(int(p.parent.name[1:]) for p in found.glob("v*/model.yaml") if p.parent.name[1:].isdigit())

    def next_version(self, model: str) -> int:
        dirs = (
            [int(p.name[1:]) for p in (self.home / "models" / model).glob("v*") if p.name[1:].isdigit()]
            if self.home is not None
            else []
        )
        return max([(self.state.get("last_version") or {}).get(model, 0), *dirs]) + 1


def _serves(ref: Any, ws: str, exp: LoadedSpec, model: str) -> str | None:
    """How a ModelRef (of an object in workspace ``ws``) follows what ``exp`` registers: "latest",
    "experiment", "alias:<name>"; None when it does not (another model, a pinned version)."""
    if ref is None:
        return None
    if ref.experiment:
        return "experiment" if ref.experiment == exp.name and ws == exp.workspace else None
    if ref.name != model or ref.version is not None:
        return None
    return f"alias:{ref.alias}" if ref.alias else "latest"


def _model_effects(exp: LoadedSpec, specs: list[LoadedSpec], store: _Store, depth: int, new_version: bool) -> list[Effect]:
    """The registration of ``exp`` and what follows from it (module doc)."""
    reg = exp.obj.spec.registration
    if reg is None:
        return []
    model = reg.model
    v = store.next_version(model)
    out: list[Effect] = []
    if new_version:
        out.append(Effect("registers", f"model {model}", f"registers model {model} v{v}", depth))
    # alias -> "moves" | "may move" (the version it would point at)
    moving: dict[str, tuple[str, int]] = {}
    for p in reg.aliases:
        now = store.alias(model, p.name)
        was = f"now v{now}" if now is not None else "new alias"
        if p.version is not None:
            have = store.versions(model)
            if have and p.version not in have and p.version != v:
                store.warnings.append(
                    f"{exp.ref} ({exp.location()}): register.aliases: {p.name} is pinned to v{p.version}, but model "
                    f"{model} has no version {p.version} (versions: {', '.join(f'v{x}' for x in have)}); the register "
                    "step will refuse it: pin an existing version"
                )
                continue
            if now != p.version:
                moving[p.name] = ("moves", p.version)
                out.append(
                    Effect(
                        "alias", f"model {model}@{p.name}", f"alias {p.name}: moves to v{p.version} (pinned; {was})", depth + 1
                    )
                )
            continue
        if not new_version:
            continue  # re-registering the same version: a rule has nothing new to weigh
        certain = p.when == "always" or now is None
        moving[p.name] = ("moves" if certain else "may move", v)
        rule = rule_text(exp.obj.spec, p)
        out.append(
            Effect("alias", f"model {model}@{p.name}", f"alias {p.name}: {moving[p.name][0]} to v{v} ({rule}; {was})", depth + 1)
        )
    deployments = {}
    for s in specs:
        if s.kind != "Deployment" or not s.obj.spec.enabled:
            continue
        how = _serves(s.obj.spec.model, s.workspace, exp, model)
        if how is None:
            continue
        if how.startswith("alias:"):
            alias = how.split(":", 1)[1]
            if alias not in moving:
                continue
            word, to = moving[alias]
            cond = "" if word == "moves" else f" if {alias} moves"
            deployments[s.key] = (s, f"rolls out {model} v{to}{cond} (serves {model}@{alias})")
        elif new_version:
            deployments[s.key] = (
                s,
                f"rolls out {model} v{v} (serves the {'latest version' if how == 'latest' else 'experiment'})",
            )
    for s, text in deployments.values():
        r = s.obj.spec.rollout
        if r is not None:  # how it rolls out: what a reviewer weighs (kiln.controller.deployment_rollout)
            text += (f", as a canary ({' -> '.join(f'{w}%' for w in r.steps)}, {r.interval:g}s each, rolled back "
                     f"above {r.maxErrorRate:.1%} errors)" if r.strategy == "canary"
                     else ", in shadow (the served version keeps answering; both outputs recorded)")
        out.append(Effect("rollout", s.ref, f"{s.ref} {text}", depth + 2))
    for s in specs:
        if s.kind != "LabelingJob" or s.obj.spec.preAnnotation is None:
            continue
        pa = s.obj.spec.preAnnotation
        how = _serves(pa.model, s.workspace, exp, model) if pa.model is not None else None
        through = next(
            (d for d in deployments.values() if pa.deployment and d[0].name == pa.deployment and d[0].workspace == s.workspace),
            None,
        )
        if through is not None:
            out.append(
                Effect(
                    "pre-annotation",
                    s.ref,
                    f"{s.ref} pre-annotates through {through[0].ref}: its new model's predictions",
                    depth + 3,
                )
            )
        elif how is not None:
            named = how.split(":", 1)[1] if how.startswith("alias:") else None
            if named is not None and named in moving:
                word, to = moving[named]
                cond = f" if {named} moves" if word == "may move" else ""
            elif named is None and new_version:
                to, cond = v, ""
            else:
                continue
            out.append(Effect("pre-annotation", s.ref, f"{s.ref} pre-annotates with {model} v{to}{cond}", depth + 2))
    return out


def _dataset_effects(
    ds: LoadedSpec, specs: list[LoadedSpec], store: _Store, depth: int, seen: set[str], planned: dict[str, Change]
) -> list[Effect]:
    """Who takes up a new version of Dataset ``ds`` (module doc), recursively; an object that is
    planned itself is only named (its own entry says what it does)."""
    out: list[Effect] = []
    for s in specs:
        if s.key in seen or s.kind not in HANDLERS:
            continue
        if (ds.workspace, ds.name) not in HANDLERS[s.kind].followed(s):
            continue
        if s.key in planned:
            out.append(
                Effect("planned", s.ref, f"{s.ref} takes the new version (its own {planned[s.key].action} is planned)", depth)
            )
            continue
        if s.kind == "Dataset":
            seen.add(s.key)
            out.append(Effect("versions", s.ref, f"{s.ref} derives a new version from it", depth))
            out += _dataset_effects(s, specs, store, depth + 1, seen, planned)
        elif s.kind == "LabelingJob":
            out.append(Effect("imports", s.ref, f"{s.ref} imports the new items", depth))
        elif s.kind == "Experiment":
            trigger = s.obj.spec.trigger.onNewDatasetVersion
            if trigger == "retrain":
                seen.add(s.key)
                out.append(Effect("retrains", s.ref, f"{s.ref} retrains (trigger.onNewDatasetVersion: retrain)", depth))
                out += _model_effects(s, specs, store, depth + 1, True)
            elif trigger == "plan-only":
                out.append(
                    Effect(
                        "noted",
                        s.ref,
                        f"{s.ref} is not retrained (trigger.onNewDatasetVersion: plan-only): the next plan notes the new version",
                        depth,
                    )
                )
    return out


def cascade(change: Change, specs: list[LoadedSpec], store: _Store, planned: dict[str, Change]) -> list[Effect]:
    """What follows from ``change`` in this apply; [] for what has no consequence elsewhere."""
    s = change.spec
    if s is None or change.action not in ("create", "update") or not change.handled:
        return []
    if s.kind == "Experiment":
        if change.action == "create" or change.update in _NEW_VERSION:
            return _model_effects(s, specs, store, 1, True)
        if change.update == "re-register":
            return _model_effects(s, specs, store, 1, False)
        return []
    if s.kind == "Dataset" and (change.action == "create" or change.update == "re-run"):
        return _dataset_effects(s, specs, store, 1, {s.key}, planned)
    return []


def attach(changes: list[Change], specs: list[LoadedSpec], config: KilnConfig | None) -> list[str]:
    """Set each pending change's ``cascade``; returns warnings for the plan (a pinned version that
    does not exist)."""
    store = _Store(config)
    planned = {c.key: c for c in changes if c.pending}
    for c in changes:
        c.cascade = cascade(c, specs, store, planned)
    return store.warnings


# -- rendering, for Plan's text and markdown -------------------------------------------------------


def text_lines(effects: list[Effect], indent: str = "      ") -> list[str]:
    return [f"{indent}{'  ' * (e.depth - 1)}-> {e.text}" for e in effects]


def markdown_lines(changes: list[Change]) -> list[str]:
    """A nested list per change that has a cascade, under the plan's table."""
    with_effects = [c for c in changes if c.cascade]
    if not with_effects:
        return []
    out = ["", "#### What follows in this apply", ""]
    for c in with_effects:
        out.append(f"- `{c.ref}` ({c.action})")
        out += [f"{'  ' * e.depth}- {e.text}" for e in c.cascade]
    return out
