"""The register step: the selected model as a new version in the model registry (once per run
and data version, also across retries), its aliases, and pruning of old unused versions; and the
in-place update of a registered version when only how it is registered changed (#25)."""

from __future__ import annotations

import shutil
from typing import Any

from kiln._util.fs import read_json, share_identical
from kiln.api import Experiment
from kiln.api.experiment import experiment_label
from kiln.bento.registry import Registry, default_home
from kiln.controller.experiment.export import package_model, selected_trial
from kiln.controller.experiment.home import file_lock, log, run_folder, write_json
from kiln.controller.experiment.results import write_results, write_summary
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def _deployment_versions(ctx: StepContext, model: str) -> set[int]:
    """Versions of ``model`` that Deployment specs (in the repository, and applied) pin."""
    # imported here: the project loader pulls in apply and planning (a third of the register
    # step's start-up), and only keepVersions needs it
    from kiln.controller.project import load_valid, read_records

    used: set[int] = set()
    docs: list[dict[str, Any]] = []
    try:
        docs += [s.doc for s in load_valid(ctx.config).specs if s.kind == "Deployment"]
    except Exception:  # noqa: BLE001 - unreadable specs: fall back to what was applied
        pass
    try:
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


def _promote(ctx: StepContext, reg: Registry, model: str, version: int, spec: Any,
             data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ``register.aliases`` rule decided for ``version`` and applied (``promotion``); the
    task log says where each alias points and why."""
    from kiln.controller.experiment.promotion import promote
    from kiln.controller.project import applied_from

    decisions = promote(reg, model, version, spec, data, ctx.config.repo, commit=applied_from(ctx.config).commit,
                        experiment=f"{ctx.workspace}/{ctx.name}")
    for d in decisions:
        where = f"-> v{d['to']}" if d["moved"] else f"stays at v{d['to']}"
        log(f"alias {model}@{d['alias']} {where} ({d['rule']}): {d['reason']}")
    return [{**d, "version": version} for d in decisions]


def register(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    reg_spec = spec.registration
    if reg_spec is None:
        raise KilnError("spec.register is not set; nothing to register")
    ws, name = ctx.workspace, ctx.name
    run = run_folder(ctx)
    sel = selected_trial(run)
    data = read_json(run / "data.json") or {}
    reg = Registry(default_home(ctx.config.repo))
    model = reg_spec.model
    # the data version too: a retrain of the same spec on new data is another model version
    run_label = f"{ctx.spec_hash[:16]}.{str(data.get('version', ''))[:8]}.{sel['trial']}"
    with file_lock(run / "register.lock"):
        done = read_json(run / "registered.json")
        if done and done.get("run") == run_label and done.get("model") == model:
            return done
        # a retried register after a crash between registering and recording: reuse that version
        version = next((mv.version for mv in (reg.list(model) if model in reg.names() else [])
                        if mv["labels"].get("kiln_run") == run_label), None)
        if version is None:
            want_onnx = "onnx" in reg_spec.export
            pkg, framework, serving = package_model(ctx, run, sel, want_onnx)
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
        # one copy of the model on disk: the trial's files that the registry now holds become
        # hard links to the registry's (BentoML writes its store through a temporary folder, so
        # links cannot be made on the way in); the run keeps its full lineage, and deleting
        # either the run (kiln gc) or the version (keepVersions) leaves the other whole
        tdir = run / "trials" / sel["trial"]
        freed = share_identical(sorted(tdir.rglob("*")), reg.path(model, version))
        if freed:
            log(f"trial {sel['trial']}: {freed} bytes now shared with {model} v{version} (one copy on disk)")
        decisions = _promote(ctx, reg, model, version, spec, data)
        deleted: list[int] = []
        if reg_spec.keepVersions:
            deleted = reg.keep_versions(model, reg_spec.keepVersions, in_use=_deployment_versions(ctx, model))
            if deleted:
                log(f"deleted old versions of {model} (keepVersions {reg_spec.keepVersions}): "
                    + ", ".join(f"v{v}" for v in deleted))
        # "aliases": those that point at this version now; "promotion": each rule's decision
        out = {"model": model, "version": version, "aliases": [d["alias"] for d in decisions if d["to"] == version],
               "promotion": decisions, "deleted": deleted, "run": run_label, "trial": sel["trial"]}
        write_json(run / "registered.json", out)
    write_summary(ctx, spec, run)
    write_results(ctx, spec, run)
    return out


def update_registration(ctx: StepContext) -> dict[str, Any]:
    """Make the run's registered version match ``spec.register`` without training or registering
    anew (update class ``re-register``, ``kiln.api.kinds``): its tags and description, the
    aliases (an alias the spec no longer lists is removed if it still points here), retention,
    and an ONNX export of the same model, parity-checked, added to the version as ``model.onnx``.
    The version keeps serving as it was registered. ``ctx.spec_hash`` names the run folder."""
    from kiln.controller.experiment.export import export_onnx

    spec = ctx.model(Experiment).spec
    reg_spec = spec.registration
    run = run_folder(ctx)
    done = read_json(run / "registered.json")
    if reg_spec is None or not done:
        return {"changed": False}
    reg = Registry(default_home(ctx.config.repo))
    model, version = done["model"], int(done["version"])
    actions: list[str] = []
    with file_lock(run / "register.lock"):
        changed = reg.annotate(model, version, tags=[f"{k}={v}" for k, v in sorted(reg_spec.tags.items())],
                               description=reg_spec.description or "")
        actions += [f"{k} updated" for k in sorted(changed)]
        decisions = _promote(ctx, reg, model, version, spec, read_json(run / "data.json") or {})
        actions += [f"alias {d['alias']} -> v{d['to']} ({d['reason']})" for d in decisions if d["moved"]]
        for alias in sorted(set(done.get("aliases") or []) - set(reg_spec.alias_names)):
            if reg.aliases(model).get(alias) == version:
                reg.delete_alias(model, alias)
                actions.append(f"alias {alias} removed")
        if "onnx" in reg_spec.export:
            have = (read_json(run / "onnx.json") or {})
            info = reg.describe(model, version)
            if "model.onnx" not in info["files"] or have.get("tolerance") != reg_spec.onnxTolerance:
                rep = export_onnx(ctx)  # the selected trial's model: the one this version holds
                reg.add_file(model, version, run / "trials" / done.get("trial", selected_trial(run)["trial"]) / "model.onnx",
                             "model.onnx")
                reg.annotate(model, version, metadata={"onnx": _no_none(rep)})
                actions.append(f"ONNX export added ({rep.get('summary', 'parity checked')})")
        deleted: list[int] = []
        if reg_spec.keepVersions:
            deleted = reg.keep_versions(model, reg_spec.keepVersions, in_use=_deployment_versions(ctx, model))
            actions += [f"deleted v{v} (keepVersions {reg_spec.keepVersions})" for v in deleted]
        out = {**done, "aliases": [d["alias"] for d in decisions if d["to"] == version], "promotion": decisions,
               "deleted": sorted({*done.get("deleted", []), *deleted}),
               "updated": actions}
        write_json(run / "registered.json", out)
    for a in actions:
        log(f"{model} v{version}: {a}")
    write_summary(ctx, spec, run)
    write_results(ctx, spec, run)
    return {"model": model, "version": version, "updated": actions, "changed": bool(actions)}
