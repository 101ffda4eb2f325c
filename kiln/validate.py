"""Checks across specs: names, references, cycles, workspace roles and quotas.

Per-document checks (types, ranges, unknown fields) happen while loading; this module looks at
the whole set. Every problem becomes a ``SpecIssue`` located at the offending field.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln._util.suggest import did_you_mean
from kiln.api import Dataset, Deployment, Experiment, LabelingJob, Workspace
from kiln.api.common import DatasetRef, ModelRef, ResourceRequest
from kiln.api.kinds import ALL as API_KINDS
from kiln.api.kinds import KindInfo
from kiln.api.source_policy import spec_problems
from kiln.api.workspace import WorkspaceSpec
from kiln.config import DatasetsConfig, repo_root
from kiln.errors import SpecIssue
from kiln.loader import LoadedSpec, SpecSet
from kiln.validate_algorithms import check_algorithms

IMPLICIT_WORKSPACE = "default"


def validate(specs: SpecSet, datasets: DatasetsConfig | None = None, repo: Path | None = None) -> list[SpecIssue]:
    """Append cross-spec problems to ``specs.issues`` and return all issues, sorted by place.
    ``datasets``: the repository's settings of what dataset sources may reach (default: strict);
    ``repo``: the repository that sources and command folders are relative to (default: the one
    holding each spec file)."""
    specs.issues.extend(_Checker(specs, datasets or DatasetsConfig(), repo).run())
    specs.issues.sort(key=SpecIssue.sort_key)
    return specs.issues


class _Checker:
    def __init__(self, specs: SpecSet, datasets: DatasetsConfig, repo: Path | None = None) -> None:
        self.specs = specs
        self.datasets = datasets
        self._repo = repo
        self.issues: list[SpecIssue] = []
        self.by_kind: dict[str, dict[tuple[str, str], LoadedSpec]] = defaultdict(dict)

    def run(self) -> list[SpecIssue]:
        # documents that failed their own validation are checked from what did validate
        # (``kiln.loader._partial``): every problem of a run at once, not schema errors first
        self.all = self.specs.specs + self.specs.partial
        self._names()
        self.workspaces = {n: s.obj.spec for (_, n), s in self.by_kind["Workspace"].items()}
        for s in self.all:
            self._workspace_exists(s)
            SPEC_KINDS[s.kind].check(self, s)
        self._counts()
        self._cycles()
        return self.issues

    # -- helpers ---------------------------------------------------------------------------
    def add(self, s: LoadedSpec, path: list, message: str, hint: str | None = None) -> None:
        if s.pruned and any(path[:len(p)] == p for p in s.pruned):
            return  # a default standing in for a value whose own error is reported
        self.issues.append(s.issue(path, f"{s.ref}: {message}", hint))

    def ws(self, s: LoadedSpec) -> WorkspaceSpec | None:
        return self.workspaces.get(s.workspace)

    def _names(self) -> None:
        for s in self.all:
            ident = (s.workspace, s.name)
            first = self.by_kind[s.kind].get(ident)
            if first is not None:
                self.add(s, ["metadata", "name"], f"{s.kind} {s.name!r} is defined twice",
                         f"first defined at {first.location()}; rename one")
                continue
            self.by_kind[s.kind][ident] = s

    def _workspace_exists(self, s: LoadedSpec) -> None:
        if s.kind == "Workspace":
            if s.workspace != IMPLICIT_WORKSPACE:
                self.add(s, ["metadata", "workspace"], "a Workspace does not belong to a workspace",
                         "remove metadata.workspace")
            return
        if s.workspace not in self.workspaces and s.workspace != IMPLICIT_WORKSPACE:
            self.add(s, ["metadata", "workspace"], f"unknown workspace {s.workspace!r}",
                     self._known("Workspace", s.workspace, "define it with a Workspace spec"))
            return
        # a workspace's period of use is the plan's to carry out (kiln.controller.plan.period_out):
        # its deployments stop and new runs are refused, but the specs stay valid, so that
        # extending the period restarts them

    def _invalid(self, kind: str, ws: str, name: str) -> bool:
        """Whether ``kind`` ``ws/name`` is defined by a spec that failed its own validation: its
        error is reported there, and a reference to it is not dangling."""
        return any(k == kind and w == ws and n == name for k, w, n, _ in self.specs.invalid)

    def _invalid_registers(self, ws: str, model: str) -> bool:
        """Whether an Experiment of ``ws`` that failed validation registers ``model`` (as written)."""
        for k, w, _, doc in self.specs.invalid:
            spec = doc.get("spec") if k == "Experiment" and w == ws else None
            reg = spec.get("register") if isinstance(spec, dict) else None
            if isinstance(reg, dict) and reg.get("model") == model:
                return True
        return False

    def _known(self, kind: str, name: str, fallback: str) -> str:
        names = sorted({n for (_, n) in self.by_kind[kind]})
        return did_you_mean(name, names) or (f"known: {', '.join(names)}" if names else fallback)

    def repo(self, s: LoadedSpec) -> Path | None:
        return self._repo or repo_root(s.source.path)

    def _dataset(self, s: LoadedSpec, ref: DatasetRef, path: list) -> LoadedSpec | None:
        ws = ref.workspace or s.workspace
        target = self.by_kind["Dataset"].get((ws, ref.name))
        if target is None and self._invalid("Dataset", ws, ref.name):
            return None
        if target is None:
            self.add(s, path + ["name"], f"unknown dataset {ref.name!r}" + (f" in workspace {ws!r}" if ref.workspace else ""),
                     self._known("Dataset", ref.name, "define it with a Dataset spec"))
            return None
        if ws != s.workspace:
            sharing = target.obj.spec.sharing
            if sharing.visibility != "shared" or (sharing.workspaces and s.workspace not in sharing.workspaces):
                self.add(s, path + ["workspace"],
                         f"dataset {ref.name!r} of workspace {ws!r} is not shared with workspace {s.workspace!r}",
                         f"set spec.sharing.visibility: shared (and list {s.workspace!r} in sharing.workspaces) at {target.location()}")
        return target

    def _owner(self, s: LoadedSpec, owner: str | None) -> None:
        ws = self.ws(s)
        if owner is None or ws is None or not ws.members:
            return
        role = ws.role_of(owner)
        if role is None:
            self.add(s, ["spec", "owner"], f"owner {owner!r} is not a member of workspace {s.workspace!r}",
                     "add them to the Workspace's members")
        elif not ws.may(owner, f"own:{s.kind}"):
            self.add(s, ["spec", "owner"], f"owner {owner!r} is an {role} of workspace {s.workspace!r} "
                     f"and may not own a {s.kind}", "make a developer or admin the owner")

    def _resources(self, s: LoadedSpec, req: ResourceRequest, path: list, count: int,
                   what: str, deployment: bool = False) -> None:
        ws = self.ws(s)
        if req.preset and (ws is None or ws.preset(req.preset) is None):
            known = [p.name for p in ws.presets] if ws else []
            self.add(s, path + ["preset"], f"unknown resource preset {req.preset!r}",
                     f"presets of workspace {s.workspace!r}: {', '.join(known)}" if known
                     else f"define presets in the Workspace {s.workspace!r}")
            return
        if ws is None:
            return
        for problem in ws.quota_problems(ws.resolve(req), count, deployment=deployment):
            self.add(s, path, f"{what} {problem} in workspace {s.workspace!r}",
                     "lower the request or raise the Workspace quota")

    # -- per kind ---------------------------------------------------------------------------
    def check_workspace(self, s: LoadedSpec) -> None:
        pass  # everything about a workspace alone is checked by its model

    def check_dataset(self, s: LoadedSpec) -> None:
        spec = s.obj.spec
        self._owner(s, spec.owner)
        for field, value, problem, hint in spec_problems(spec.source, self.datasets):
            self.add(s, ["spec", "source", field], f"source.{field} {value!r} {problem}", hint)
        if spec.source.dataset is not None:
            self._dataset(s, spec.source.dataset, ["spec", "source", "dataset"])
        if spec.source.capture is not None:
            dep = self.by_kind["Deployment"].get((s.workspace, spec.source.capture))
            if dep is None:
                if not self._invalid("Deployment", s.workspace, spec.source.capture):
                    self.add(s, ["spec", "source", "capture"], f"unknown deployment {spec.source.capture!r}",
                             self._known("Deployment", spec.source.capture, "define it with a Deployment spec"))
            elif dep.obj.spec.capture is None or dep.obj.spec.capture.dataset != s.name:
                self.add(s, ["spec", "source", "capture"],
                         f"deployment {spec.source.capture!r} does not capture into dataset {s.name!r}",
                         f"set spec.capture.dataset: {s.name} at {dep.location()}")
        for i, other in enumerate(spec.sharing.workspaces):
            if other not in self.workspaces:
                self.add(s, ["spec", "sharing", "workspaces", i], f"unknown workspace {other!r}",
                         self._known("Workspace", other, "define it with a Workspace spec"))
        # the header is read only when a column is named: plan runs this on every spec, every time
        named = spec.label is not None or any(op.columns or {"columns", "column", "by"} & set(op.params)
                                              for op in spec.preprocessing)
        header = self._source_files(s, named)
        self._preprocessing(s, header)

    def _source_files(self, s: LoadedSpec, read_header: bool) -> list[str] | None:
        """What apply's first step would refuse about files in the repository: a source path or
        archive that is not there, a label column the CSV does not have. Returns the CSV's
        header (read, never the rows) when the source is one table, for the ops' columns."""
        spec, repo = s.obj.spec, self.repo(s)
        src = spec.source
        if repo is None:
            return None
        for field in ("path", "archive"):
            given = getattr(src, field)
            if given is None or os.path.isabs(given) or ".." in Path(given).parts:
                continue  # outside the repository: refused above (spec_problems), or allowed by settings
            p = repo / given
            if field == "archive" and p.is_file() or field == "path" and p.exists():
                continue
            siblings = [c.name for c in p.parent.iterdir()] if p.parent.is_dir() else []
            self.add(s, ["spec", "source", field], f"source.{field} {given!r} does not exist in the repository",
                     did_you_mean(p.name, siblings) or f"give a {'file' if field == 'archive' else 'folder or file'} "
                     f"relative to the repository root ({repo})")
            return None
        if src.path is None or spec.type != "tabular" or not read_header:
            return None
        from kiln.data.formats.csv import csv_file  # no pandas: the header is read with csv

        found = csv_file(repo / src.path)
        if found is None:
            return None
        try:
            with found.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return None  # unreadable: apply's reader says why, with the file
        if spec.label is not None and spec.label not in header:
            self.add(s, ["spec", "label"], f"label column {spec.label!r} is not in {found.name}'s header",
                     did_you_mean(spec.label, header) or f"columns: {', '.join(header)}")
        return header

    def _preprocessing(self, s: LoadedSpec, header: list[str] | None) -> None:
        """Each op's parameters as the op would take them (``kiln.data.preprocess.op_problems``:
        pydantic models, nothing run), and the columns it names against the CSV's header."""
        if not s.obj.spec.preprocessing:
            return
        from kiln.data.preprocess import op_problems

        columns = list(header) if header is not None else None
        for i, op in enumerate(s.obj.spec.preprocessing):
            params = dict(op.params, **({"columns": op.columns} if op.columns else {}))
            at = ["spec", "preprocessing", i]
            for sub, message, hint in op_problems(op.op, params):
                where = at + (["columns"] if sub[:1] == ["columns"] and op.columns else ["params", *sub])
                self.add(s, where, message, hint)
            if columns is None:
                continue
            named = [("columns", c) for c in (params.get("columns") or []) if isinstance(c, str)]
            named += [("column", params["column"])] if isinstance(params.get("column"), str) else []
            named += [("by", c) for c in (params.get("by") or []) if isinstance(c, str)]
            for key, col in named:
                if col not in columns and op.op != "drop_columns":  # dropping an absent column is a no-op
                    where = at + ([key] if key == "columns" and op.columns else ["params", key])
                    self.add(s, where, f"{op.op}: column {col!r} is not in the table",
                             did_you_mean(col, columns) or f"columns: {', '.join(columns)}")
            if op.op == "drop_columns":
                columns = [c for c in columns if c not in set(params.get("columns") or [])]

    def check_labelingjob(self, s: LoadedSpec) -> None:
        spec = s.obj.spec
        self._owner(s, spec.owner)
        ds = self._dataset(s, spec.dataset, ["spec", "dataset"])
        if ds is not None:
            dspec = ds.obj.spec
            if dspec.type == "tabular":  # apply's export step refuses tables (kiln.controller.labeling_steps)
                self.add(s, ["spec", "dataset", "name"],
                         f"dataset {ds.name!r} is a table; tabular labelling is not available in this kiln version",
                         "label image datasets for now")
            if dspec.type == "image" and spec.task.startswith("tabular-"):
                self.add(s, ["spec", "task"], f"dataset {ds.name!r} holds images; {spec.task} is for tables",
                         f"use task {spec.task.removeprefix('tabular-')}")
        if (spec.output.dataset and (s.workspace, spec.output.dataset) not in self.by_kind["Dataset"]
                and not self._invalid("Dataset", s.workspace, spec.output.dataset)):
            self.add(s, ["spec", "output", "dataset"], f"unknown dataset {spec.output.dataset!r}",
                     self._known("Dataset", spec.output.dataset, "define it with a Dataset spec"))
        if spec.preAnnotation is not None:
            pa = spec.preAnnotation
            if pa.model is not None:
                self._model(s, pa.model, ["spec", "preAnnotation", "model"])
            if (pa.deployment and (s.workspace, pa.deployment) not in self.by_kind["Deployment"]
                    and not self._invalid("Deployment", s.workspace, pa.deployment)):
                self.add(s, ["spec", "preAnnotation", "deployment"], f"unknown deployment {pa.deployment!r}",
                         self._known("Deployment", pa.deployment, "define it with a Deployment spec"))
        ws = self.ws(s)
        if ws is not None and ws.members:
            for i, a in enumerate(spec.annotators):
                if not ws.may(a.user, "annotate"):
                    self.add(s, ["spec", "annotators", i], f"annotator {a.user!r} is not a member of workspace {s.workspace!r}",
                             "add them to the Workspace's members (role annotator)")
            for i, r in enumerate(spec.reviewers):
                role = ws.role_of(r)
                if not ws.may(r, "review"):
                    self.add(s, ["spec", "reviewers", i],
                             f"reviewer {r!r} " + (f"is an {role} and may not review" if role else
                                                   f"is not a member of workspace {s.workspace!r}"),
                             "reviewers must be developers or admins of the workspace")

    def check_experiment(self, s: LoadedSpec) -> None:
        spec = s.obj.spec
        self._owner(s, spec.owner)
        ds = self._dataset(s, spec.dataset, ["spec", "dataset"])
        if ds is not None and spec.task and ds.obj.spec.task and spec.task != ds.obj.spec.task:
            self.add(s, ["spec", "task"], f"task {spec.task!r} does not match dataset {ds.name!r} ({ds.obj.spec.task})",
                     "remove spec.task: it defaults to the dataset's")
        if ds is not None and ds.obj.spec.task is None and spec.mode != "run" and spec.command is None:
            pass  # unlabelled data: only clustering / dimension reduction algorithms apply (issue: algorithms)
        check_algorithms(self, s)
        self._experiment_apply_rules(s, ds)
        parallel = spec.hpo.parallelTrials if spec.hpo else 1
        self._resources(s, spec.resources, ["spec", "resources"], parallel,
                        f"{parallel} parallel trial(s)" if parallel > 1 else "the training job")
        self._users(s, spec.users)

    def _users(self, s: LoadedSpec, users: list[str]) -> None:
        """A private Experiment's or Deployment's ``users`` are members of its workspace."""
        ws = self.ws(s)
        if ws is not None and ws.members:
            for i, u in enumerate(users):
                if ws.role_of(u) is None:
                    self.add(s, ["spec", "users", i], f"user {u!r} is not a member of workspace {s.workspace!r}",
                             "add them to the Workspace's members")

    def _experiment_apply_rules(self, s: LoadedSpec, ds: LoadedSpec | None) -> None:
        """What the experiment's steps refuse for a reason in the spec (``kiln.controller.experiment``),
        apart from the algorithms' own rules (``kiln.validate_algorithms``)."""
        spec = s.obj.spec
        if spec.hpo is not None and spec.hpo.sampler.type == "grid":  # hpo.grid_space
            where: list = ["spec", "command"] if spec.command else ["spec", "algorithm"]
            space = spec.command.searchSpace if spec.command else spec.algorithm.searchSpace if spec.algorithm else {}
            for k, p in space.items():
                if p.type == "float" and not p.step:
                    self.add(s, where + ["searchSpace", k], f"sampler grid cannot search the continuous float range {k!r}",
                             "give it a step, make it a choice, or use sampler tpe/random")
        repo = self.repo(s)
        if spec.command is not None and repo is not None and not (repo / spec.command.workdir).is_dir():
            self.add(s, ["spec", "command", "workdir"], f"command.workdir {spec.command.workdir!r} is not a folder "
                     "of the repository", f"give a folder relative to the repository root ({repo})")
        if ds is not None and ds.obj.spec.type == "tabular":  # prepare._refuse_resplit_of_fitted_table
            from kiln.data.preprocess import learns

            fitted = [op.op for op in ds.obj.spec.preprocessing if learns(op.op)]
            splits: list[tuple[list, dict | None]] = [(["spec", "split"], spec.split)]
            splits += [(["spec", "algorithm", "split"], spec.algorithm.split)] if spec.algorithm else []
            splits += [(["spec", "automl", "candidates", i, "split"], c.split)
                       for i, c in enumerate(spec.automl.candidates if spec.automl else [])]
            for where, split in splits:
                if split is not None and fitted:
                    self.add(s, where, f"re-splits dataset {ds.name!r}, whose preprocessing ({', '.join(fitted)}) is "
                             "fitted on its own train split: validation and test rows would have been seen by the fit",
                             f"remove it and set the split in the Dataset's spec.splits ({ds.location()})")

    def check_deployment(self, s: LoadedSpec) -> None:
        spec = s.obj.spec
        self._owner(s, spec.owner)
        self._users(s, spec.users)
        self._model(s, spec.model, ["spec", "model"])
        check_algorithms(self, s)
        replicas = spec.autoscaling.maxReplicas if spec.autoscaling else spec.replicas
        self._resources(s, spec.resources, ["spec", "resources"], max(replicas, 1),
                        f"{replicas} replica(s)", deployment=True)
        if spec.capture is not None:
            ds = self.by_kind["Dataset"].get((s.workspace, spec.capture.dataset))
            if ds is None and self._invalid("Dataset", s.workspace, spec.capture.dataset):
                pass
            elif ds is None:
                self.add(s, ["spec", "capture", "dataset"], f"unknown dataset {spec.capture.dataset!r}",
                         f"define a Dataset with `source: {{capture: {s.name}}}`")
            elif ds.obj.spec.source.capture != s.name:
                self.add(s, ["spec", "capture", "dataset"],
                         f"dataset {ds.name!r} does not take its data from this deployment's capture",
                         f"set `source: {{capture: {s.name}}}` at {ds.location()}")

    def _experiments_of(self, ws: str) -> list[LoadedSpec]:
        # once per workspace, not per reference: plan validates thousands of specs on every run
        if not hasattr(self, "_by_ws"):
            self._by_ws: dict[str, list[LoadedSpec]] = defaultdict(list)
            for (w, _), e in self.by_kind["Experiment"].items():
                self._by_ws[w].append(e)
        return self._by_ws[ws]

    def _model(self, s: LoadedSpec, ref: ModelRef, path: list) -> None:
        experiments = self._experiments_of(s.workspace)
        if ref.experiment:
            exp = self.by_kind["Experiment"].get((s.workspace, ref.experiment))
            if exp is None and not self._invalid("Experiment", s.workspace, ref.experiment):
                self.add(s, path + ["experiment"], f"dangling model reference: unknown experiment {ref.experiment!r}",
                         self._known("Experiment", ref.experiment, "define it with an Experiment spec"))
            return
        registering = [e for e in experiments if e.obj.spec.registration and e.obj.spec.registration.model == ref.name]
        if not registering and (_in_registry(s, ref.name) or self._invalid_registers(s.workspace, ref.name or "")):
            # registered outside specs (kiln.bento.registry: the deployment step checks version/alias),
            # or by an experiment whose own error is reported
            return
        if not registering:
            names = sorted({e.obj.spec.registration.model for e in experiments if e.obj.spec.registration})
            self.add(s, path + ["name"], f"dangling model reference: no experiment registers model {ref.name!r}",
                     f"registered models: {', '.join(names)}" if names else
                     "add `register: {model: NAME}` to an Experiment")
            return
        if ref.alias:
            aliases = {a for e in registering for a in e.obj.spec.registration.alias_names}
            if ref.alias not in aliases:
                self.add(s, path + ["alias"], f"model {ref.name!r} has no alias {ref.alias!r}",
                         f"aliases set by experiments: {', '.join(sorted(aliases))}" if aliases else
                         f"add `aliases: [{ref.alias}]` to the registering experiment's register section")

    # -- whole set ---------------------------------------------------------------------------
    def _counts(self) -> None:
        limits = {"Experiment": "maxExperiments", "Deployment": "maxDeployments", "Dataset": "maxDatasets"}
        for kind, field in limits.items():
            per_ws: dict[str, list[LoadedSpec]] = defaultdict(list)
            for (ws, _), s in self.by_kind[kind].items():
                per_ws[ws].append(s)
            for ws, items in per_ws.items():
                spec = self.workspaces.get(ws)
                limit = getattr(spec.quotas, field) if spec else None
                if limit is not None and len(items) > limit:
                    for s in items[limit:]:
                        self.add(s, ["metadata", "name"],
                                 f"workspace {ws!r} allows {limit} {kind.lower()}s ({field}); this is number {items.index(s) + 1}",
                                 "remove one or raise the quota")

    def _cycles(self) -> None:
        """Hard dependencies must form a DAG. A capture loop (deployment -> capture dataset ->
        labelling -> retrain -> deployment) is not a cycle: versions separate its turns."""
        graph = {s.key: list(dependencies(s)) for s in self.all}
        state: dict[str, int] = {}
        stack: list[str] = []
        by_key = {s.key: s for s in self.all}

        def visit(k: str) -> None:
            state[k] = 1
            stack.append(k)
            for d in graph.get(k, []):
                if d not in graph:
                    continue
                if state.get(d) == 1:
                    cycle = stack[stack.index(d):] + [d]
                    s = by_key[k]
                    self.add(s, ["spec"], "reference cycle: " + " -> ".join(by_key[c].ref for c in cycle),
                             "break the cycle: a dataset cannot derive from itself")
                elif state.get(d) is None:
                    visit(d)
            stack.pop()
            state[k] = 2

        for k in graph:
            if state.get(k) is None:
                visit(k)


def dependencies(s: LoadedSpec) -> Iterator[str]:
    """Keys of the objects ``s`` needs to exist first (its hard dependencies)."""
    obj = s.obj
    if isinstance(obj, Workspace):
        return
    if s.workspace != IMPLICIT_WORKSPACE:
        yield f"Workspace/default/{s.workspace}"
    if isinstance(obj, Dataset) and obj.spec.source.dataset is not None:
        ref = obj.spec.source.dataset
        yield f"Dataset/{ref.workspace or s.workspace}/{ref.name}"
    elif isinstance(obj, LabelingJob):
        ref = obj.spec.dataset
        yield f"Dataset/{ref.workspace or s.workspace}/{ref.name}"
        pa = obj.spec.preAnnotation
        if pa is not None and pa.model is not None and pa.model.experiment:
            yield f"Experiment/{s.workspace}/{pa.model.experiment}"  # its model pre-annotates
        if pa is not None and pa.deployment:
            yield f"Deployment/{s.workspace}/{pa.deployment}"
    elif isinstance(obj, Experiment):
        ref = obj.spec.dataset
        yield f"Dataset/{ref.workspace or s.workspace}/{ref.name}"
    elif isinstance(obj, Deployment) and obj.spec.model.experiment:
        yield f"Experiment/{s.workspace}/{obj.spec.model.experiment}"


def _in_registry(s: LoadedSpec, model: str | None) -> bool:
    """``model`` has a version in the model store of the repository holding ``s``'s file
    (``.kiln/bentoml/models/<name>/v<N>/model.yaml``; no BentoML import)."""
    repo = repo_root(s.source.path)
    if repo is None or not model:
        return False
    return any((repo / ".kiln" / "bentoml" / "models" / model).glob("v*/model.yaml"))


@dataclass(frozen=True)
class SpecKind:
    """A kind as the spec layer knows it: ``kiln.api.kinds`` (model, order, short name) plus its
    cross-spec check. ``kiln.controller.handlers.KINDS`` extends it with what the controller does."""

    info: KindInfo
    check: Callable[[_Checker, LoadedSpec], None]

    @property
    def name(self) -> str:
        return self.info.name


_CHECKS: dict[str, Callable[[_Checker, LoadedSpec], None]] = {
    "Workspace": _Checker.check_workspace,
    "Dataset": _Checker.check_dataset,
    "LabelingJob": _Checker.check_labelingjob,
    "Experiment": _Checker.check_experiment,
    "Deployment": _Checker.check_deployment,
}
# kind -> SpecKind, in apply order
SPEC_KINDS: dict[str, SpecKind] = {k.name: SpecKind(k, _CHECKS[k.name]) for k in API_KINDS}
