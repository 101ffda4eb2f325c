"""``kiln report``: a markdown report of the experiments and datasets of this checkout, compared
with a base git ref, for posting as a pull-request comment.

Two sources, on purpose:

- **git-tracked records** decide what is compared: each experiment's results file
  ``metrics/<ws>/<name>.json`` (written by its select/register steps, see
  ``kiln.controller.experiment``) and each dataset's ``data/<ws>/<name>.versions.json``.
  The base side is read with ``git show REF:path``, the current side from the working tree (so
  a CI job can report right after ``kiln apply``, before committing), like ``dvc metrics diff``.
- **the run folders** under ``.kiln/`` (not in git) give the plots of the current side: training
  curves (``trials/*/metrics.jsonl``), confusion matrix / PR / ROC (``eval.json``), leaderboard
  (``selected.json``), AutoML's candidates (``trials/*/trial.json``) and HPO history and
  parameter importance (``study.db``). On a machine without them the plots are left out with a
  one-line reason.

Output (``--out``, default ``kiln-report/``)::

    report.md                 summary table (objective per experiment: base, now, delta), then one
                              section per experiment and a dataset section
    <ws>-<name>-<plot>.png    800x500 px each (``kiln.controller.plots``), linked relatively

Nothing missing is an error (no base ref, no HPO, no run folder): that part is left out or says
why in one line. A ``--base`` that is not a commit is a ``KilnError`` naming the ref.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.fs import read_json
from kiln.controller.dataset_steps import DATA_ROOT, data_rel
from kiln.controller.experiment.home import RESULTS_ROOT, run_dir
from kiln.controller.plots import render
from kiln.data.versioning import DatasetRepo
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.config import KilnConfig

REPORT_FILE = "report.md"
DEFAULT_OUT = "kiln-report"
VERSIONS_SUFFIX = ".versions.json"


# -- the recorded side of a ref ------------------------------------------------------------------

@dataclass
class Records:
    """What one side (a git ref, or the working tree) records: results by ``ws/name``, dataset
    version logs by ``ws/name``."""

    label: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def _key(rel: str, root: str, suffix: str) -> str | None:
    """``metrics/ws/name.json`` -> ``ws/name`` (None for files not in that layout)."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != root or not parts[2].endswith(suffix):
        return None
    return f"{parts[1]}/{parts[2][:-len(suffix)]}"


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit sha of ``ref``; a ``KilnError`` naming it when git does not know it."""
    if not (repo / ".git").exists() and _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise KilnError(f"--base {ref}: {repo} is not a git repository",
                        hint="run kiln report inside the repository's checkout, or leave out --base")
    p = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if p.returncode != 0 or not p.stdout.strip():
        raise KilnError(f"--base {ref!r} is not a commit in this repository",
                        hint="give a branch, tag or sha that exists here (in CI fetch it first, e.g. "
                             "`git fetch origin main` and --base origin/main; `git log --oneline` lists commits)")
    return p.stdout.strip()


def read_ref(repo: Path, ref: str) -> Records:
    sha = resolve_ref(repo, ref)
    rec = Records(label=ref)
    ls = _git(repo, "ls-tree", "-r", "--name-only", sha, "--", RESULTS_ROOT, DATA_ROOT)
    for rel in ls.stdout.splitlines():
        if (k := _key(rel, RESULTS_ROOT, ".json")) is not None:
            target = rec.results
        elif (k := _key(rel, DATA_ROOT, VERSIONS_SUFFIX)) is not None:
            target = rec.datasets
        else:
            continue
        shown = _git(repo, "show", f"{sha}:{rel}")
        try:
            doc = json.loads(shown.stdout) if shown.returncode == 0 else None
        except ValueError:
            doc = None  # a broken file at the base: compared as absent
        if isinstance(doc, dict):
            target[k] = doc
    return rec


def read_worktree(repo: Path) -> Records:
    rec = Records(label="now")
    for root, suffix, target in ((RESULTS_ROOT, ".json", rec.results), (DATA_ROOT, VERSIONS_SUFFIX, rec.datasets)):
        for p in sorted((repo / root).glob(f"*/*{suffix}")):
            k = _key(p.relative_to(repo).as_posix(), root, suffix)
            doc = read_json(p)
            if k is not None and isinstance(doc, dict):
                target[k] = doc
    return rec


# -- formatting ----------------------------------------------------------------------------------

def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _delta(base: Any, now: Any) -> str:
    if isinstance(base, bool) or isinstance(now, bool) or not isinstance(base, (int, float)) \
            or not isinstance(now, (int, float)):
        return "—"
    d = now - base
    return "0" if d == 0 else f"{d:+.4g}"


def _verdict(base: Any, now: Any, direction: str) -> str:
    if not isinstance(base, (int, float)) or not isinstance(now, (int, float)) or base == now:
        return ""
    better = now > base if direction == "maximize" else now < base
    return "better" if better else "worse"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)]


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-")


# -- the report ----------------------------------------------------------------------------------

@dataclass
class Report:
    """The markdown lines and the plots to render (file name -> (kind, data))."""

    lines: list[str] = field(default_factory=list)
    plots: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def plot(self, name: str, kind: str, data: dict[str, Any], title: str) -> None:
        self.plots[name] = (kind, data)
        self.lines += [f"![{title}]({name})", ""]


def _summary(base: Records | None, now: Records) -> list[str]:
    keys = sorted(set(now.results) | set(base.results if base else {}))
    if not keys:
        return ["No experiment has recorded results yet (`metrics/<ws>/<name>.json` is written when an "
                "Experiment's select step runs: `kiln apply`).", ""]
    rows = []
    for k in keys:
        n = now.results.get(k)
        b = base.results.get(k) if base else None
        obj = (n or b or {}).get("objective") or {}
        metric, direction = obj.get("metric", "?"), obj.get("direction", "maximize")
        bv = (b or {}).get("objective", {}).get("value") if b else None
        nv = (n or {}).get("objective", {}).get("value") if n else None
        row = [k, metric, _num(bv) if b else ("new" if base else "—"), _num(nv) if n else "removed", _delta(bv, nv)]
        if base is not None:
            row.append(_verdict(bv, nv, direction))
        rows.append(row)
    head = ["experiment", "objective", f"base ({base.label})" if base else "base", "now", "delta"]
    if base is not None:
        head.append("")
    return [*_table(head, rows), ""]


def _metrics_table(b: dict[str, Any] | None, n: dict[str, Any]) -> list[str]:
    bm = (b or {}).get("metrics") or {}
    nm = n.get("metrics") or {}
    names = sorted(set(bm) | set(nm), key=lambda m: (not m.startswith("validation_"), m))
    return _table(["metric", "base", "now", "delta"],
                  [[m, _num(bm.get(m)) if b else "—", _num(nm.get(m)), _delta(bm.get(m), nm.get(m))] for m in names])


def _per_category(rep: Report, key: str, b: dict[str, Any] | None, n: dict[str, Any]) -> None:
    """A segmenter's IoU and accuracy per category (EasyMaker's metrics, recorded with the run by
    ``training.per_category``), from the results file, so on any machine; the base's IoU beside
    it when the base recorded them on the same split. A category absent from both prediction and
    label has no value (—)."""
    cats = n.get("perCategory")
    if not cats or not cats.get("labels"):
        return
    labels = [str(x) for x in cats["labels"]]
    iou, acc = list(cats.get("iou") or []), list(cats.get("accuracy") or [])
    iou += [None] * (len(labels) - len(iou))
    acc += [None] * (len(labels) - len(acc))
    old = (b or {}).get("perCategory") or {}
    base_iou = dict(zip(old.get("labels") or [], old.get("iou") or [])) if old.get("split") == cats.get("split") else {}
    split = cats.get("split", "test")
    rep.lines += [f"### Per category ({split} split)", ""]
    if base_iou:
        rows = [[lab, _num(base_iou.get(lab)), _num(i), _delta(base_iou.get(lab), i), _num(a)]
                for lab, i, a in zip(labels, iou, acc)]
        rep.lines += _table(["category", "IoU base", "IoU now", "delta", "accuracy"], rows)
    else:
        rep.lines += _table(["category", "IoU", "accuracy"], [[lab, _num(i), _num(a)] for lab, i, a in zip(labels, iou, acc)])
    rep.lines.append("")
    rep.plot(_slug(key, "per-category.png"), "per-category",
             {"labels": labels, "iou": iou, "accuracy": acc, "split": split}, "IoU and accuracy per category")


def _curves(run: Path, objective: str) -> dict[str, Any] | None:
    """Per trial: objective and (if reported) one loss metric per step; None when no trial
    reported more than once (a single fit is a point, not a curve)."""
    from kiln.controller.experiment.results import metric_series

    series = metric_series(run)
    # one loss metric besides the objective: the first one reported
    loss = next((k for per in series.values() for k in per if "loss" in k), None)
    if not any(len(p.get(objective, [])) > 1 for p in series.values()):
        return None
    return {"metrics": [objective] + ([loss] if loss else []), "series": series}


def _eval_plots(rep: Report, key: str, run: Path) -> None:
    ev = read_json(run / "eval.json")
    if not ev or not ev.get("y_true"):
        rep.lines += ["_Confusion matrix, PR and ROC curves: no saved validation scores (only built-in "
                      "classifiers save them)._", ""]
        return
    import numpy as np

    y = np.asarray(ev["y_true"], dtype=int)
    pred = np.asarray(ev["scores"], dtype=float).argmax(1)
    k = len(ev["classes"])
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    split = ev.get("split", "validation")
    note = f" (first {ev['items']} items)" if ev.get("truncated") else ""
    rep.lines += [f"**Best model on the {split} split**{note}", ""]
    rep.plot(_slug(key, "confusion-matrix.png"), "confusion-matrix",
             {"classes": ev["classes"], "matrix": cm.tolist(), "split": split}, "confusion matrix")
    curve = {"classes": ev["classes"], "y_true": ev["y_true"], "scores": ev["scores"], "split": split}
    rep.plot(_slug(key, "pr-curve.png"), "pr-curve", curve, "precision-recall curve")
    rep.plot(_slug(key, "roc-curve.png"), "roc-curve", curve, "ROC curve")


def _hpo(rep: Report, key: str, run: Path, doc: dict[str, Any]) -> None:
    db = run / "study.db"
    if doc.get("mode") != "hpo" or not db.is_file():
        return
    import optuna

    from kiln.controller.experiment.home import STUDY

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    obj = doc.get("objective") or {}
    rep.lines += ["### Hyperparameter search", ""]
    try:
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except Exception as exc:  # noqa: BLE001 - a report never fails on one unreadable part
        rep.lines += [f"_Study not readable ({type(exc).__name__}: {exc})._", ""]
        return
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not done:
        rep.lines += ["_No completed trial in the study._", ""]
        return
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    rep.lines += [", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) + f" trial(s); best "
                  f"{obj.get('metric')}={_num(study.best_value)} (trial {study.best_trial.number})", ""]
    rep.plot(_slug(key, "hpo-history.png"), "hpo-history",
             {"metric": obj.get("metric", "objective"), "direction": obj.get("direction", "maximize"),
              "trials": [[t.number, t.value] for t in done]}, "HPO history")
    try:
        imp = optuna.importance.get_param_importances(study)
    except Exception as exc:  # noqa: BLE001 - e.g. too few trials or a constant parameter
        rep.lines += [f"_Parameter importance not computable: {type(exc).__name__}: {exc}_", ""]
        return
    if not imp:
        rep.lines += ["_Parameter importance not computable: no parameter varied across completed trials._", ""]
        return
    rep.plot(_slug(key, "param-importance.png"), "param-importance",
             {"metric": obj.get("metric"), "importances": {k: float(v) for k, v in imp.items()}},
             "parameter importance")


def _leaderboard(rep: Report, key: str, run: Path, doc: dict[str, Any]) -> None:
    sel = read_json(run / "selected.json") or {}
    board = sel.get("leaderboard") or []
    failed = sel.get("failed") or []  # AutoML candidates without a model: listed with why, unranked
    if len(board) + len(failed) < 2:
        return
    title = "AutoML leaderboard" if doc.get("mode") == "automl" else "Leaderboard"
    metric = (doc.get("objective") or {}).get("metric", "objective")
    extra = sorted({m for r in board for m in (r.get("metrics") or {}) if m != metric})
    rows = [[str(r.get("rank")), r.get("trial", ""), r.get("candidate") or r.get("algorithm") or "",
             json.dumps(r.get("params") or {}, sort_keys=True), _num(r.get("objective")),
             *(_num((r.get("metrics") or {}).get(m)) for m in extra)] for r in board[:10]]
    rows += [["-", f.get("trial", ""), f.get("candidate") or f.get("algorithm") or "", "",
              f"{str(f.get('state', '')).lower()}: {f.get('error', '')}", *("" for _ in extra)] for f in failed[:10]]
    rep.lines += [f"### {title}", "",
                  *_table(["#", "trial", "model", "params", metric, *extra], rows)]
    if len(board) > 10:
        rep.lines.append(f"_…and {len(board) - 10} more_")
    rep.lines.append("")
    if doc.get("mode") == "automl":
        _candidates_plot(rep, key, run, doc, board)


def _candidates_plot(rep: Report, key: str, run: Path, doc: dict[str, Any], board: list[dict[str, Any]]) -> None:
    from kiln.controller.experiment.results import trials

    values: dict[str, list[float]] = {}
    for r in trials(run):
        v = r.get("objective")
        # a diverged trial's NaN/inf objective has no place on an axis
        if r.get("state") == "COMPLETE" and isinstance(v, (int, float)) and math.isfinite(v) and r.get("candidate"):
            values.setdefault(str(r["candidate"]), []).append(float(v))
    if len(values) < 2:
        return
    obj = doc.get("objective") or {}
    chosen = (doc.get("best") or {}).get("candidate") or board[0].get("candidate")
    rep.plot(_slug(key, "automl-candidates.png"), "candidates",
             {"metric": obj.get("metric", "objective"), "direction": obj.get("direction", "maximize"),
              "chosen": chosen, "candidates": values}, "AutoML candidates")


def _experiment(rep: Report, config: KilnConfig, key: str, base: Records | None, n: dict[str, Any] | None) -> None:
    b = base.results.get(key) if base else None
    rep.lines += [f"## Experiment {key}", ""]
    if n is None:
        rep.lines += [f"Removed: recorded at {base.label if base else 'base'}, not in this checkout.", ""]
        return
    ds, best, reg = n.get("dataset") or {}, n.get("best") or {}, n.get("registered")
    facts = [f"mode **{n.get('mode', '?')}**"]
    if ds.get("name"):
        bds = (b or {}).get("dataset") or {}
        was = f"{bds.get('number')} → " if b and bds.get("version") != ds.get("version") else ""
        facts.append(f"dataset {ds['name']} {was}{ds.get('number')}")
    if best.get("trial"):
        facts.append(f"best trial {best['trial']} ({best.get('candidate') or best.get('algorithm') or 'command'})")
    if reg:
        facts.append(f"registered {reg['model']} v{reg['version']}")
    rep.lines += ["; ".join(facts) + ".", ""]
    # where each alias went and why (#21): a worse model registered is not a worse model served
    for d in (reg or {}).get("promotion") or []:
        where = f"moved v{d['from']} → v{d['to']}" if d.get("moved") and d.get("from") else \
            f"moved to v{d['to']}" if d.get("moved") else f"**kept at v{d['to']}**"
        rep.lines.append(f"- alias `{d['alias']}` ({d.get('rule', '')}): {where}: {d.get('reason', '')}")
    if (reg or {}).get("promotion"):
        rep.lines.append("")
    if best.get("params"):
        bp = ((b or {}).get("best") or {}).get("params") or {}
        changed = {k for k in set(bp) | set(best["params"]) if bp.get(k) != best["params"].get(k)} if b else set()
        rep.lines += ["Best parameters: " + ", ".join(
            f"`{k}={best['params'][k]!r}`" + (f" (was {bp.get(k)!r})" if k in changed and k in bp else "")
            for k in sorted(best["params"])), ""]
    if b is None and base is not None:
        rep.lines += [f"_New: no results recorded at {base.label}._", ""]
    rep.lines += [*_metrics_table(b, n), ""]
    _per_category(rep, key, b, n)

    ws, _, name = key.partition("/")
    run = run_dir(config, ws, name, str(n.get("specHash", "")))
    if not run.is_dir():
        rep.lines += [f"_No plots: the run folder {run.relative_to(config.repo)} is not on this machine "
                      "(plots need the checkout where `kiln apply` ran)._", ""]
        return
    curves = _curves(run, (n.get("objective") or {}).get("metric", ""))
    if curves is not None:
        rep.lines += ["### Training curves", ""]
        rep.plot(_slug(key, "training-curves.png"), "training-curves", curves, "training curves")
    _leaderboard(rep, key, run, n)
    _hpo(rep, key, run, n)
    _eval_plots(rep, key, run)


def _version_entry(log: dict[str, Any], vid: str | None) -> tuple[int | None, dict[str, Any] | None]:
    for i, v in enumerate(log.get("versions") or []):
        if v.get("id") == vid:
            return i + 1, v
    return None, None


def _datasets(rep: Report, config: KilnConfig, base: Records | None, now: Records) -> None:
    if base is None:
        return
    keys = sorted(set(now.datasets) | set(base.datasets))
    if not keys:
        return
    rep.lines += ["## Datasets", ""]
    unchanged = []
    for key in keys:
        b, n = base.datasets.get(key), now.datasets.get(key)
        if n is None:
            rep.lines += [f"- **{key}**: removed since {base.label}.", ""]
            continue
        cur = n.get("current")
        ncount, nv = _version_entry(n, cur)
        if b is not None and b.get("current") == cur:
            unchanged.append(f"{key} (v{ncount})")
            continue
        bcur = (b or {}).get("current")
        bcount, bv = _version_entry(b or {}, bcur)
        head = f"### {key}: " + (f"v{bcount} → v{ncount}" if b else f"new (v{ncount})")
        rep.lines += [head, ""]
        nv = nv or {}
        rep.lines += [f"Files: {_num((bv or {}).get('files')) if b else '—'} → {_num(nv.get('files'))}"
                      f" (version {str(bcur)[:12] if b else '—'} → {str(cur)[:12]})", ""]
        if b is not None and bcur and cur:
            rep.lines += [_item_diff(config, key, str(bcur), str(cur)), ""]
        bc, nc = (bv or {}).get("per_class_counts") or {}, nv.get("per_class_counts") or {}
        classes = sorted(set(bc) | set(nc))
        if classes:
            rows = [[c, _num(bc.get(c, 0)) if b else "—", _num(nc.get(c, 0)), _delta(bc.get(c, 0), nc.get(c, 0))]
                    for c in classes]
            rep.lines += [*_table(["class", "base", "now", "delta"], rows), ""]
            rep.plot(_slug("dataset", key, "class-counts.png"), "class-counts",
                     {"classes": classes, "base": [bc.get(c, 0) for c in classes],
                      "now": [nc.get(c, 0) for c in classes]}, "items per class")
    if unchanged:
        rep.lines += [f"Unchanged since {base.label}: " + ", ".join(unchanged) + ".", ""]


def _item_diff(config: KilnConfig, key: str, v1: str, v2: str) -> str:
    """Added/removed/changed files between two versions (DVC listings); one line why not when the
    base version's listing is not available here."""
    ws, _, name = key.partition("/")
    try:
        d = DatasetRepo(config.repo, remote_url=config.dvc.remote).diff(data_rel(ws, name), v1, v2)
    except Exception as exc:  # noqa: BLE001 - e.g. a version made on another branch, not in this cache
        return f"_Item diff not available here: {str(exc).splitlines()[0][:200]}_"

    def some(xs: list[str]) -> str:
        return ", ".join(f"`{x}`" for x in xs[:5]) + (f" … (+{len(xs) - 5})" if len(xs) > 5 else "")

    parts = [f"{len(d.added)} added", f"{len(d.removed)} removed", f"{len(d.changed)} changed"]
    detail = [f"{label}: {some(xs)}" for label, xs in (("added", d.added), ("removed", d.removed),
                                                         ("changed", d.changed)) if xs]
    return "Items: " + ", ".join(parts) + (" — " + "; ".join(detail) if detail else "")


def build(config: KilnConfig, base: str | None = None) -> Report:
    """Gather records and run folders into a ``Report`` (no files written)."""
    repo = config.repo
    base_rec = read_ref(repo, base) if base else None
    now = read_worktree(repo)
    rep = Report()
    title = "# kiln report" + (f" — compared with `{base}`" if base else "")
    rep.lines += [title, ""]
    if base is None:
        rep.lines += ["_No base ref given (`--base REF`): values of this checkout only, no deltas._", ""]
    rep.lines += _summary(base_rec, now)
    for key in sorted(set(now.results) | set(base_rec.results if base_rec else {})):
        _experiment(rep, config, key, base_rec, now.results.get(key))
    _datasets(rep, config, base_rec, now)
    return rep


def write(config: KilnConfig, out: Path, base: str | None = None) -> tuple[Path, list[Path]]:
    """Build the report and write ``out/report.md`` plus its PNGs. Each file is written
    atomically and ``report.md`` last, so a crash never leaves a report pointing at missing
    plots; plots of a previous report in ``out`` that this one no longer uses are removed."""
    rep = build(config, base)
    out.mkdir(parents=True, exist_ok=True)
    md = out / REPORT_FILE
    old = set(re.findall(r"\]\(([^)/]+\.png)\)", md.read_text())) if md.is_file() else set()
    pngs = [render(kind, data, out / name) for name, (kind, data) in rep.plots.items()]
    tmp = md.with_name(f".{md.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(rep.lines).rstrip() + "\n")
    os.replace(tmp, md)
    for stale in old - set(rep.plots):
        (out / stale).unlink(missing_ok=True)
    return md, pngs
