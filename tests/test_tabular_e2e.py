"""Issue #24 end to end: a table as people have it (strings with spaces and symbols, empty cells in
features and in the label, the label first, a yes/no label, an identifier column) goes from the CSV
through an `automl` Experiment with no candidate list to an ONNX model registered with its parity
check, which answers raw rows (strings, nulls, any column order, an unseen category) and
`kiln infer` on the dataset's raw rows. Classification and regression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import kiln, write
from tests.test_experiment_handler import exp, git_repo, record, registry


def _csv(path: Path, n: int, regression: bool) -> list[dict]:
    rng = np.random.default_rng(7)
    island = rng.choice(["Biscoe", "Dream Island", "Torgersen & Co"], n)
    bill = rng.normal(44, 5, n) + np.where(island == "Biscoe", 6.0, 0.0)
    rows = []
    for i in range(n):
        y = (f"{bill[i] + rng.normal(0, 0.5):.3f}" if regression
             else ("yes" if island[i] == "Biscoe" else "no"))
        rows.append({"target": "" if i % 29 == 5 else y,          # a few unlabelled rows
                     "penguin id": f"P-{1000 + i}",                  # unique per row: an identifier
                     "island": "" if i % 13 == 4 else island[i],     # empty cells in a string column
                     "bill length": "" if i % 9 == 0 else f"{bill[i]:.2f}",
                     "sex": rng.choice(["male", "female"])})
    header = list(rows[0])
    lines = [",".join(f'"{h}"' if " " in h else h for h in header)]
    lines += [",".join(f'"{r[h]}"' if ("&" in r[h] or " " in r[h]) else r[h] for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("task,metric", [("classification", "validation_accuracy"), ("regression", "validation_r2")])
def test_a_raw_table_reaches_a_served_onnx_model_through_default_automl(tmp_path: Path, task: str, metric: str) -> None:
    from kiln.bento.runtime import InstanceError, load_engine

    repo = git_repo(tmp_path / "repo")
    (repo / "raw").mkdir()
    rows = _csv(repo / "raw" / "penguins.csv", 180, task == "regression")
    write(repo, {"specs/ds.yaml": f"""
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {{name: penguins}}
spec: {{type: tabular, task: {task}, format: csv, source: {{path: raw/penguins.csv}}, label: target}}
""", "specs/e.yaml": exp("pen", f"mode: automl\ndataset: {{name: penguins}}\nobjective: {{metric: {metric}}}\n"
                               "register: {model: pen, export: [onnx]}")})
    assert kiln("validate", cwd=repo).returncode == 0
    res = kiln("apply", cwd=repo, timeout=600)
    assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr

    # the version's schema: the identifier is named, the unlabelled rows counted
    versions = json.loads(kiln("data", "versions", "penguins", "-o", "json", cwd=repo, check=True).stdout)
    schema = json.dumps(versions)
    assert "penguin id" in schema and "identifier" in schema, schema[:2000]

    ex = record(repo, "pen")["extra"]
    assert ex["leaderboard"], ex
    # a small table: candidates compared by cross-validation, the kept one refitted on train +
    # validation before its test score; describe says so
    assert ex["best"]["validation"] == {"method": "5-fold cross-validation on train + validation",
                                        "rows": ex["best"]["validation"]["rows"], "refit": "train + validation"}
    assert "5-fold cross-validation" in kiln("describe", "experiment/pen", cwd=repo, check=True).stdout
    engine = load_engine(registry(repo).path("pen", 1))
    assert engine.cfg.framework == "onnx"  # registered with its parity check passed
    raw = [{"island": "Dream Island", "bill length": None, "sex": "female", "penguin id": "P-1"},
           {"sex": None, "bill length": "51.5", "island": "Biscoe", "penguin id": "P-2"},
           {"island": "Atlantis", "bill length": 40.0, "sex": "male", "penguin id": "P-3"}]  # unseen category
    # rows as in the CSV: the identifier (and the label) are accepted and ignored, any other
    # unknown column is an error naming it
    raw[0]["target"] = None
    out = [engine.format(y, None) for y in engine.predict([engine.decode(r, i)[0] for i, r in enumerate(raw)])]
    with pytest.raises(InstanceError, match=r"instances\[0\]\.colour: not a column of the model"):
        engine.decode({**raw[0], "colour": "red"}, 0)
    assert len(out) == 3
    if task == "classification":
        assert out[1]["label"] == "yes" and out[0]["label"] == "no", out

    pred = tmp_path / "pred"
    kiln("infer", "pen", "penguins", "--out", str(pred), cwd=repo, check=True, timeout=300)
    preds = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(rows)
