"""`kiln report`: plots rendered for real (matplotlib -> PNG, read back with PIL), the CLI's
errors, and an end-to-end pull-request flow: a temp git repository whose Dataset and Experiments
(run, HPO, a command with per-step metrics) are applied and committed, then changed, applied and
committed again; `kiln report --base HEAD~1` must show the deltas, plots and the dataset diff."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import kiln, write

pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL.Image")


def png_size(path: Path) -> tuple[int, int]:
    with PIL.open(path) as im:
        assert im.format == "PNG"
        im.load()
        # something was drawn: a blank figure is a single colour
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or [0, 0]) > 2, path
        return im.size


# -- plots ---------------------------------------------------------------------------------------

def plot_data() -> dict[str, dict]:
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, va = idx[:100], idx[100:]
    m = LogisticRegression(C=0.05, max_iter=200).fit(x[tr], y[tr])
    scores = m.predict_proba(x[va])
    k = 3
    cm = np.bincount(y[va] * k + scores.argmax(1), minlength=k * k).reshape(k, k)
    classes = ["setosa", "versicolor", "virginica"]
    curve = {"classes": classes, "y_true": y[va].tolist(), "scores": scores.tolist()}
    loss = {f"t{i}": {"validation_accuracy": [[s, 0.5 + 0.1 * s - 0.02 * i] for s in range(1, 5)],
                      "train_loss": [[s, 1.0 / s + 0.05 * i] for s in range(1, 5)]} for i in range(3)}
    values = rng.uniform(0.6, 0.95, 12)
    return {
        "training-curves": {"metrics": ["validation_accuracy", "train_loss"], "series": loss},
        "confusion-matrix": {"classes": classes, "matrix": cm.tolist(), "split": "validation"},
        "pr-curve": curve,
        "roc-curve": curve,
        "hpo-history": {"metric": "validation_accuracy", "direction": "maximize",
                        "trials": [[i, float(v)] for i, v in enumerate(values)]},
        "param-importance": {"metric": "validation_accuracy", "importances": {"max_depth": 0.7, "C": 0.2, "tol": 0.1}},
        "class-counts": {"classes": classes, "base": [50, 50, 50], "now": [40, 50, 55]},
        "candidates": {"metric": "validation_accuracy", "direction": "maximize", "chosen": "svm",
                       "candidates": {"svm": [0.97], "naive_bayes": [0.93],
                                      "random_forest": [float(v) for v in values[:4]]}},
        "per-category": {"labels": ["unlabeled", *classes], "iou": [0.91, 0.42, None, 0.3],
                         "accuracy": [0.95, 0.6, None, 0.5], "split": "test"},
    }


def test_every_plot_kind_renders_a_png_of_the_fixed_size(tmp_path: Path) -> None:
    from kiln.controller.plots import DPI, PLOTS, SIZE, render

    data = plot_data()
    assert set(data) == set(PLOTS)  # the test covers every registered kind
    want = (int(SIZE[0] * DPI), int(SIZE[1] * DPI))
    assert want == (800, 500)
    for kind, d in data.items():
        out = render(kind, d, tmp_path / f"{kind}.png")
        assert out.stat().st_size > 5000, kind
        assert png_size(out) == want, kind
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_unknown_plot_kind_lists_the_valid_ones(tmp_path: Path) -> None:
    from kiln.controller.plots import render
    from kiln.errors import KilnError

    with pytest.raises(KilnError) as err:
        render("violin", {}, tmp_path / "x.png")
    assert "unknown plot kind 'violin'" in str(err.value) and "hpo-history" in str(err.value)
    assert not (tmp_path / "x.png").exists()


# -- CLI without runs ----------------------------------------------------------------------------

def git_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_bad_base_ref_is_a_clear_error_and_no_base_still_reports(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    write(repo, {"README.md": "x\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    bad = kiln("report", "--base", "origin/nope", "--out", "rep", cwd=repo)
    assert bad.returncode == 1
    assert "--base 'origin/nope' is not a commit in this repository" in bad.stderr
    assert "git fetch" in bad.stderr and "Traceback" not in bad.stdout + bad.stderr
    assert not (repo / "rep" / "report.md").exists()

    ok = kiln("report", "--out", "rep", cwd=repo, check=True)
    assert "report -> rep/report.md (0 plot(s))" in ok.stdout
    md = (repo / "rep/report.md").read_text()
    assert "No base ref given" in md and "No experiment has recorded results yet" in md
    # a base with nothing recorded either: still a report, no crash
    again = kiln("report", "--base", "HEAD", "--out", "rep", cwd=repo, check=True)
    assert "0 plot(s)" in again.stdout and "compared with `HEAD`" in (repo / "rep/report.md").read_text()


# -- end to end ----------------------------------------------------------------------------------

DATASET = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: iris}
spec:
  type: tabular
  task: classification
  format: csv
  source: {path: SOURCE}
  label: target
  splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 7}
"""

EXPERIMENTS = """
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: iris-lr}
spec:
  dataset: {name: iris}
  algorithm: {name: logistic_regression, hyperparameters: {C: REG}}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: iris-hpo}
spec:
  mode: hpo
  dataset: {name: iris}
  algorithm:
    name: decision_tree
    searchSpace:
      max_depth: {type: int, low: 1, high: 5}
      min_samples_leaf: {type: int, low: 1, high: 20}
  hpo: {maxTrials: 4, parallelTrials: 1, sampler: {type: random, seed: 1}, pruner: {type: none}}
  objective: {metric: validation_accuracy}
  register: {model: iris-tree}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: iris-script}
spec:
  dataset: {name: iris}
  command: {run: python curve.py}
  parameterSets: [{rate: 0.5}, {rate: 0.9}]
"""

CURVE_SCRIPT = """
import argparse
import kiln

p = argparse.ArgumentParser()
p.add_argument("--rate", type=float, required=True)
a = p.parse_args()
for step in (1, 2, 3, 4):
    kiln.report(step=step, validation_accuracy=1 - a.rate ** step, train_loss=a.rate ** step)
"""


def write_iris(path: Path, drop_setosa_every: int = 0) -> None:
    from sklearn.datasets import load_iris

    df = load_iris(as_frame=True).frame
    df["target"] = df["target"].map(dict(enumerate(["setosa", "versicolor", "virginica"])))
    if drop_setosa_every:
        df = df[~((df.target == "setosa") & (df.index % drop_setosa_every == 0))]
    path.mkdir(parents=True, exist_ok=True)
    df.to_csv(path / "data.csv", index=False)


def images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.mark.slow  # ~40 s: versions a dataset twice and trains three experiments twice for real
def test_report_against_the_base_commit_shows_deltas_plots_and_dataset_diff(tmp_path: Path) -> None:
    pytest.importorskip("dvc")
    pytest.importorskip("optuna")
    pytest.importorskip("bentoml")
    repo = git_repo(tmp_path / "repo")
    write_iris(repo / "raw/iris")
    write(repo, {".gitignore": ".kiln/\nout/\n", "curve.py": CURVE_SCRIPT,
                 "specs/iris.yaml": DATASET.replace("SOURCE", "raw/iris"),
                 "specs/exp.yaml": EXPERIMENTS.replace("REG", "0.01")})
    first = kiln("apply", cwd=repo, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "iris experiments")
    base_lr = json.loads(git(repo, "show", "HEAD:metrics/default/iris-lr.json"))

    # the pull request: a hyperparameter changes, the dataset loses 10 setosa rows
    write_iris(repo / "raw/iris2", drop_setosa_every=5)
    write(repo, {"specs/iris.yaml": DATASET.replace("SOURCE", "raw/iris2"),
                 "specs/exp.yaml": EXPERIMENTS.replace("REG", "1.0")})
    second = kiln("apply", cwd=repo, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "stronger fit, fewer setosa")

    # the recorded results file: git-tracked, what the run folder selected and registered
    now_lr = json.loads((repo / "metrics/default/iris-lr.json").read_text())
    run = repo / ".kiln/workspaces/default/experiments/iris-lr/runs" / now_lr["specHash"]
    selected = json.loads((run / "selected.json").read_text())["selected"]
    assert now_lr["objective"] == {"metric": "validation_accuracy", "direction": "maximize", "value": selected["value"]}
    assert now_lr["metrics"]["validation_accuracy"] == selected["value"]
    assert base_lr["dataset"]["number"] == "v1" and now_lr["dataset"]["number"] == "v2"
    assert base_lr["specHash"] != now_lr["specHash"]
    b, n = base_lr["objective"]["value"], now_lr["objective"]["value"]
    assert b != n  # C 0.01 -> 1.0 fits iris differently
    hpo = json.loads((repo / "metrics/default/iris-hpo.json").read_text())
    assert hpo["registered"] == {"model": "iris-tree", "version": 1} and hpo["trials"] == {"COMPLETE": 4}
    # select saved the validation labels and class scores of the chosen model
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "validation" and ev["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(ev["y_true"]) == len(ev["scores"]) == ev["items"] > 0 and len(ev["scores"][0]) == 3
    assert all(abs(sum(row) - 1) < 1e-4 for row in ev["scores"])  # probabilities
    # the trial wrote those scores while its model was loaded (select only copied them, and
    # removed the other trials' files): they are what select would compute from the saved model
    assert not list((run / "trials").glob("*/eval.json"))
    from kiln.api import Experiment
    from kiln.controller.experiment.evaluation import evaluate_selected

    exp_doc = next(d for d in yaml.safe_load_all((repo / "specs/exp.yaml").read_text()) if d["metadata"]["name"] == "iris-lr")
    meta = json.loads((run / "trials" / selected["trial"] / "model/meta.json").read_text())
    assert evaluate_selected(repo, Experiment.model_validate(exp_doc).spec, run, selected, meta) == ev

    res = kiln("report", "--base", "HEAD~1", "--out", "out/pr", cwd=repo, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = repo / "out/pr"
    md = (out / "report.md").read_text()
    # summary first: base, now, signed delta of each experiment's objective
    first_section = md.index("## ")
    summary = md[:first_section]
    delta = f"{n - b:+.4g}"
    assert f"| default/iris-lr | validation_accuracy | {b:.4g} | {n:.4g} | {delta} | {'better' if n > b else 'worse'} |" \
        in summary, summary
    assert "| default/iris-hpo | validation_accuracy |" in summary and "| default/iris-script |" in summary
    # per experiment: all recorded metrics with deltas, the changed parameter, the dataset change
    lr = md[md.index("## Experiment default/iris-lr"):md.index("## Experiment default/iris-script")]
    tb, tn = base_lr["metrics"]["test_accuracy"], now_lr["metrics"]["test_accuracy"]
    assert f"| test_accuracy | {tb:.4g} | {tn:.4g} | {f'{tn - tb:+.4g}' if tn != tb else '0'} |" in lr
    assert "dataset default/iris v1 → v2" in lr
    assert "confusion-matrix.png" in lr and "roc-curve.png" in lr and "pr-curve.png" in lr
    hpo_md = md[md.index("## Experiment default/iris-hpo"):md.index("## Experiment default/iris-lr")]
    assert "### Hyperparameter search" in hpo_md and "4 complete trial(s)" in hpo_md
    assert "hpo-history.png" in hpo_md and "param-importance.png" in hpo_md and "### Leaderboard" in hpo_md
    script = md[md.index("## Experiment default/iris-script"):md.index("## Datasets")]
    assert "### Training curves" in script and "training-curves.png" in script
    assert "no saved validation scores" in script  # a command's own model: said in one line
    # dataset diff: per-class counts and the changed files
    ds = md[md.index("## Datasets"):]
    assert "### default/iris: v1 → v2" in ds
    assert "| setosa | 50 | 40 | -10 |" in ds and "| versicolor | 50 | 50 | 0 |" in ds
    assert re.search(r"Items: 0 added, 0 removed, \d+ changed — changed: .*`data.csv`", ds), ds
    # every referenced plot exists (relative path), is a PNG of 800x500 px with something drawn
    pngs = images(md)
    kinds = {p.rsplit("-", 2)[-2] + "-" + p.rsplit("-", 2)[-1][:-4] for p in pngs}
    assert {"hpo-history", "param-importance", "confusion-matrix", "pr-curve", "roc-curve", "training-curves",
            "class-counts"} <= kinds, pngs
    for p in pngs:
        assert "/" not in p and png_size(out / p) == (800, 500)
    assert f"({len(pngs)} plot(s))" in res.stdout

    # on a checkout without the run folders (a fresh CI clone): records only, plots say why;
    # the plots of the previous report in the same folder are removed
    (repo / ".kiln/workspaces").rename(repo / ".kiln/elsewhere")
    again = kiln("report", "--base", "HEAD~1", "--out", "out/pr", cwd=repo, check=True, timeout=120)
    md2 = (out / "report.md").read_text()
    assert md2.count("_No plots: the run folder") == 3 and f"| {delta} |" in md2
    assert [p.name for p in out.glob("*.png")] == ["dataset-default-iris-class-counts.png"]
    assert "(1 plot(s))" in again.stdout

    # deleting an experiment removes its results file; the report lists it as removed
    write(repo, {"specs/exp.yaml": EXPERIMENTS.replace("REG", "1.0").split("---")[0]
                 + "---" + EXPERIMENTS.split("---")[1]})
    pruned = kiln("apply", "--prune", cwd=repo, timeout=300)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "remove metrics/default/iris-script.json" in pruned.stdout
    assert not (repo / "metrics/default/iris-script.json").exists()
    kiln("report", "--base", "HEAD", "--out", "out/pr", cwd=repo, check=True, timeout=120)
    md3 = (out / "report.md").read_text()
    assert re.search(r"\| default/iris-script \| validation_accuracy \| [0-9.]+ \| removed \| — \|", md3), md3
    assert "Removed: recorded at HEAD, not in this checkout." in md3


IMAGES = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: shapes}
spec:
  type: image
  task: classification
  source: {path: raw/shapes}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: shapes-run}
spec:
  dataset: {name: shapes}
  algorithm:
    name: resnet18
    hyperparameters: {epochs: 2, input_size: 32, batch_size: 8, learning_rate: 0.02}
"""


@pytest.mark.slow  # ~20 s: torch start-up and two epochs of resnet18 on 36 tiny images
def test_image_classifier_report_has_epoch_curves_and_softmax_based_curves(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("dvc")
    from tests.data.conftest import make_image_folder

    repo = git_repo(tmp_path / "repo")
    make_image_folder(repo / "raw/shapes", n=12, splits=("train", "validation"))
    write(repo, {"specs/shapes.yaml": IMAGES})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((repo / "metrics/default/shapes-run.json").read_text())
    run = repo / ".kiln/workspaces/default/experiments/shapes-run/runs" / doc["specHash"]
    ev = json.loads((run / "eval.json").read_text())
    n_val = sum(1 for p in (repo / "raw/shapes/validation").rglob("*.png"))
    assert ev["split"] == "validation" and ev["items"] == len(ev["y_true"]) == n_val
    assert all(abs(sum(row) - 1) < 1e-3 for row in ev["scores"])  # softmax of the logits
    assert kiln("report", "--out", "rep", cwd=repo, check=True).returncode == 0
    md = (repo / "rep/report.md").read_text()
    assert "### Training curves" in md and "No base ref given" in md
    for p in images(md):
        assert png_size(repo / "rep" / p) == (800, 500)
    assert {p.split("shapes-run-")[1] for p in images(md)} == {"training-curves.png", "confusion-matrix.png",
                                                              "pr-curve.png", "roc-curve.png"}


def test_per_category_metrics_get_a_table_with_the_base_and_a_plot(tmp_path: Path) -> None:
    """A segmenter's per-category IoU and accuracy, as its results file records them (the
    built-ins suite checks a real run writes them): a table per experiment, the base's IoU and
    the delta beside them, an undefined value as —, and the plot."""
    from kiln.controller.experiment.home import results_rel

    repo = git_repo(tmp_path / "repo")
    labels = ["unlabeled", "red", "green", "blue"]

    def doc(iou: list) -> str:
        return json.dumps({"experiment": "default/seg", "mode": "run", "objective": {
            "metric": "validation_mean_iou", "direction": "maximize", "value": 0.5},
            "metrics": {"validation_mean_iou": 0.5},
            "perCategory": {"split": "test", "labels": labels, "iou": iou, "accuracy": [0.9, 0.5, None, 0.25]}})

    write(repo, {results_rel("default", "seg"): doc([0.8, 0.4, None, 0.2])})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    write(repo, {results_rel("default", "seg"): doc([0.85, 0.3, None, 0.2])})
    out = kiln("report", "--base", "HEAD", "--out", "rep", cwd=repo, check=True)
    assert "1 plot(s)" in out.stdout, out.stdout
    md = (repo / "rep/report.md").read_text()
    sec = md[md.index("### Per category (test split)"):]
    assert "| category | IoU base | IoU now | delta | accuracy |" in sec
    assert "| red | 0.4 | 0.3 | -0.1 | 0.5 |" in sec and "| green | — | — | — | — |" in sec, sec
    assert "| unlabeled | 0.8 | 0.85 | +0.05 | 0.9 |" in sec, sec
    assert images(md) == ["default-seg-per-category.png"]
    assert png_size(repo / "rep/default-seg-per-category.png") == (800, 500)
