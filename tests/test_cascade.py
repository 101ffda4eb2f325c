"""The plan's cascade (#21), without applying anything: the other objects are recorded as applied
with the specs they have, and a Dataset's change lists who takes its new version, down to the
deployments that roll out and the labelling job that pre-annotates through one of them."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.controller.plan import make_plan
from kiln.loader import load_specs
from kiln.state import ObjectRecord
from tests.helpers import write

HEAD = "apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"


def doc(kind: str, name: str, body: str) -> str:
    return HEAD.format(kind=kind, name=name) + "".join(f"  {line}\n" for line in body.strip().splitlines())


SPECS = {
    "specs/wine.yaml": doc(
        "Dataset",
        "wine",
        """
type: tabular
task: classification
format: csv
source: {sample: wine}
label: target
splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 7}
""",
    ),
    "specs/small.yaml": doc(
        "Dataset",
        "wine-small",
        """
type: tabular
task: classification
format: csv
source: {dataset: {name: wine}}
label: target
""",
    ),
    "specs/a.yaml": doc(
        "Experiment",
        "a",
        """
dataset: {name: wine-small}
algorithm: {name: decision_tree}
trigger: {onNewDatasetVersion: retrain}
register: {model: m, aliases: [production, {name: staging, when: always}, {name: stable, version: 1}]}
""",
    ),
    "specs/b.yaml": doc(
        "Experiment",
        "b",
        """
dataset: {name: wine}
algorithm: {name: naive_bayes}
register: {model: other}
""",
    ),
    "specs/deploy.yaml": "---\n".join(
        [
            doc("Deployment", "d-prod", "model: {name: m, alias: production}"),
            doc("Deployment", "d-staging", "model: {name: m, alias: staging}\n"
                "rollout: {strategy: canary, steps: [10, 100], interval: 30, maxErrorRate: 0.02}"),
            doc("Deployment", "d-exp", "model: {experiment: a}"),
            doc("Deployment", "d-pinned", "model: {name: m, version: 1}"),
        ]
    ),
    "specs/label.yaml": doc(
        "LabelingJob",
        "relabel",
        """
dataset: {name: wine}
task: tabular-classification
labels: ["0", "1", "2"]
annotators: [ann]
reviewers: [rev]
preAnnotation: {deployment: d-prod}
""",
    ),
}


def test_a_dataset_change_lists_who_takes_its_new_version(tmp_path: Path) -> None:
    write(tmp_path, SPECS)
    specs = load_specs(tmp_path / "specs")
    assert not specs.issues, specs.issues
    # everything applied as it is, except the Dataset, applied with another split seed
    records = []
    for s in specs.specs:
        spec_hash, body = (
            ("0" * 64, {**s.doc, "spec": {**s.doc["spec"], "splits": {"seed": 1}}}) if s.name == "wine" else (s.spec_hash, s.doc)
        )
        rec = ObjectRecord(key=s.key, spec_hash=spec_hash, spec=body, generation=1, observed_generation=1)
        records.append(rec.with_condition("Ready", "True", "Applied", ""))
    plan = make_plan(specs, records)
    pending = [c for c in plan.changes if c.pending]
    assert [c.ref for c in pending] == ["Dataset/wine"]
    effects = {(e.step, e.ref, e.depth) for e in pending[0].cascade}
    assert effects == {
        ("versions", "Dataset/wine-small", 1),
        ("retrains", "Experiment/a", 2),
        ("registers", "model m", 3),
        ("alias", "model m@production", 4),
        ("alias", "model m@staging", 4),
        ("alias", "model m@stable", 4),
        ("rollout", "Deployment/d-prod", 5),
        ("rollout", "Deployment/d-staging", 5),
        ("rollout", "Deployment/d-exp", 5),
        ("pre-annotation", "LabelingJob/relabel", 6),
        ("noted", "Experiment/b", 1),
        ("imports", "LabelingJob/relabel", 1),
    }
    texts = {e.ref: e.text for e in pending[0].cascade if e.step in ("alias", "noted")}
    assert texts["model m@production"] == "alias production: moves to v1 (better on test_accuracy; new alias)"
    assert texts["model m@stable"] == "alias stable: moves to v1 (pinned; new alias)"
    assert "trigger.onNewDatasetVersion: plan-only" in texts["Experiment/b"]

    # the same in each format: JSON carries it per change, text and markdown indent it by depth
    change = next(c for c in json.loads(plan.to_json())["changes"] if c["ref"] == "Dataset/wine")
    assert len(change["cascade"]) == 12 and {"step", "ref", "text", "depth"} == set(change["cascade"][0])
    text = plan.to_text()
    assert "      -> Dataset/wine-small derives a new version from it" in text
    assert "        -> Experiment/a retrains (trigger.onNewDatasetVersion: retrain)" in text
    md = plan.to_markdown()
    assert "- `Dataset/wine` (update)" in md
    assert "          - Deployment/d-prod rolls out m v1 (serves m@production)" in md
    # a deployment with a rollout says how: the steps and the bound a reviewer weighs
    assert ("Deployment/d-staging rolls out m v1 (serves m@staging), as a canary (10% -> 100%, "
            "30s each, rolled back above 2.0% errors)") in [e["text"] for e in change["cascade"]]
