"""Spec loading and validation: one precise line per problem, every problem at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln.loader import load_specs
from kiln.validate import validate
from tests.helpers import ROOT, kiln, write

BROKEN = ROOT / "tests" / "fixtures" / "broken"


def issues_of(path: Path) -> list[str]:
    specs = load_specs(path)
    return [i.format() for i in validate(specs)]


def test_example_repo_is_valid() -> None:
    specs = load_specs(ROOT / "specs")
    assert validate(specs) == []
    kinds = {s.kind for s in specs.specs}
    assert kinds == {"Workspace", "Dataset", "LabelingJob", "Experiment", "Deployment"}


# (file, line, yaml path, words in the message): every broken thing in tests/fixtures/broken
EXPECTED = [
    ("duplicate.yaml", 13, "metadata.name", "defined twice"),
    ("refs.yaml", 6, "spec.model.name", "dangling model reference"),
    ("refs.yaml", 13, "spec.dataset.name", "unknown dataset 'wien'"),
    ("refs.yaml", 31, "spec", "reference cycle: Dataset/loop-a -> Dataset/loop-b -> Dataset/loop-a"),
    ("roles.yaml", 21, "spec.source.path", "source.path 'data/cells' does not exist in the repository"),
    ("roles.yaml", 22, "spec.owner", "annotator of workspace 'lab' and may not own a Dataset"),
    ("roles.yaml", 32, "spec.resources", "needs 16 CPU at once, quota is 8"),
    ("roles.yaml", 32, "spec.resources", "needs 4 GPU at once, quota trainingGpus is 2"),
    ("roles.yaml", 44, "spec.reviewers[0]", "is an annotator and may not review"),
    ("syntax.yaml", 7, "<document>", "YAML syntax error"),
    ("types.yaml", 11, "spec.algorithm.searchSpace.n_estimators", "low (10) must be < high (5)"),
    ("types.yaml", 13, "spec.hpo.maxTrials", "got 'ten'"),
    ("types.yaml", 14, "spec.hpo.parallelTrials", "greater than or equal to 1, got 0"),
    ("types.yaml", 15, "spec.objective.metric", "'accuracy' is not reported by random_forest"),
    ("types.yaml", 15, "spec.objective.direction", "'maximize' or 'minimize', got 'up'"),
    ("unknown.yaml", 9, "spec.preprocesing", "unknown field 'preprocesing'"),
    ("unknown.yaml", 13, "kind", "unknown kind 'Datset'"),
]


def test_broken_specs_one_precise_line_each() -> None:
    lines = issues_of(BROKEN)
    assert len(lines) == len(EXPECTED), "\n".join(lines)
    for (file, line, path, words), got in zip(EXPECTED, lines):
        m = re.match(r"^(\S+):(\d+):(\d+)  (\S+)  (.*)$", got)
        assert m, got
        assert m.group(1).endswith(file) and int(m.group(2)) == line and m.group(4) == path, got
        assert words in m.group(5), got


def test_hints_name_the_fix() -> None:
    lines = "\n".join(issues_of(BROKEN))
    assert "(did you mean 'preprocessing'?)" in lines
    assert "(did you mean Dataset?)" in lines
    assert "first defined at" in lines


def test_cli_validate_broken_exit_1_no_traceback(tmp_path: Path) -> None:
    p = kiln("validate", str(BROKEN), cwd=ROOT)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr + p.stdout
    out = p.stderr.strip().splitlines()
    assert out[-1] == f"{len(EXPECTED)} errors in specs"
    assert all(re.match(r"^tests/fixtures/broken/\S+\.yaml:\d+:\d+  ", x) for x in out[:-1])


def test_cli_validate_examples(tmp_path: Path) -> None:
    p = kiln("validate", "specs", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "specs valid" in p.stdout


def test_cross_workspace_dataset_must_be_shared(tmp_path: Path) -> None:
    write(tmp_path, {
        "ws.yaml": """
            apiVersion: kiln.dev/v1alpha1
            kind: Workspace
            metadata: {name: a}
            ---
            apiVersion: kiln.dev/v1alpha1
            kind: Workspace
            metadata: {name: b}
            """,
        "data.yaml": """
            apiVersion: kiln.dev/v1alpha1
            kind: Dataset
            metadata: {name: shared-one, workspace: a}
            spec: {type: tabular, task: classification, source: {sample: iris},
                   sharing: {visibility: shared, workspaces: [b]}}
            ---
            apiVersion: kiln.dev/v1alpha1
            kind: Dataset
            metadata: {name: private-one, workspace: a}
            spec: {type: tabular, task: classification, source: {sample: iris}}
            """,
        "exp.yaml": """
            apiVersion: kiln.dev/v1alpha1
            kind: Experiment
            metadata: {name: ok, workspace: b}
            spec:
              dataset: {name: shared-one, workspace: a}
              algorithm: {name: random_forest}
            ---
            apiVersion: kiln.dev/v1alpha1
            kind: Experiment
            metadata: {name: not-ok, workspace: b}
            spec:
              dataset: {name: private-one, workspace: a}
              algorithm: {name: random_forest}
            ---
            apiVersion: kiln.dev/v1alpha1
            kind: Experiment
            metadata: {name: lost, workspace: c}
            spec:
              dataset: {name: private-one}
              algorithm: {name: random_forest}
            """,
    })
    lines = issues_of(tmp_path)
    assert any("not-ok" in x and "is not shared with workspace 'b'" in x for x in lines), lines
    assert any("lost" in x and "unknown workspace 'c'" in x for x in lines), lines
    assert not any("Experiment/b/ok:" in x for x in lines), lines


@pytest.mark.parametrize("spec, words", [
    ("{mode: run, dataset: {name: d}}", "exactly one of 'algorithm' or 'command'"),
    ("{mode: hpo, dataset: {name: d}, algorithm: {name: svm}}", "needs a searchSpace"),
    ("{mode: automl, dataset: {name: d}, automl: {candidates: [{name: svm}]}}", "at least 2 items"),
    ("{mode: run, dataset: {name: d, version: banana}, algorithm: {name: svm}}", "expected 'latest', 'vN'"),
    ("{mode: run, dataset: {name: d}, command: {run: python t.py, env: {API_TOKEN: x}}}", "looks like a secret"),
])
def test_experiment_rules(tmp_path: Path, spec: str, words: str) -> None:
    write(tmp_path, {"x.yaml": f"""
        apiVersion: kiln.dev/v1alpha1
        kind: Experiment
        metadata: {{name: e}}
        spec: {spec}
        ---
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {{name: d}}
        spec: {{type: tabular, source: {{sample: iris}}}}
        """})
    lines = issues_of(tmp_path)
    assert any(words in x for x in lines), lines


def test_other_tools_manifests_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, {"k8s.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                     "typo.yaml": "apiVersion: kiln.dev/v1\nkind: Dataset\n"})
    specs = load_specs(tmp_path)
    lines = [i.format() for i in validate(specs)]
    assert specs.ignored == 1
    assert len(lines) == 1 and "unsupported apiVersion 'kiln.dev/v1'" in lines[0]


def test_workspace_period_of_use(tmp_path: Path) -> None:
    write(tmp_path, {"x.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Workspace
        metadata: {name: old}
        spec: {period: {start: 2020-01-01, end: 2021-01-01}}
        ---
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: d, workspace: old}
        spec: {type: tabular, source: {sample: iris}}
        """})
    # valid: the plan refuses its runs (and stops its deployments) until the period is extended (#18)
    assert issues_of(tmp_path) == []
    from kiln.controller.plan import make_plan

    [ws, d] = make_plan(load_specs(tmp_path), []).changes
    assert ws.refused == "" and d.refused.startswith("the workspace's period of use ended on 2021-01-01"), d


@pytest.mark.parametrize("path", ["/etc/passwd", "../../state.db", "out/../../x.jsonl"])
def test_metrics_file_must_stay_in_the_trials_output_folder(tmp_path: Path, path: str) -> None:
    """kiln deletes the metrics file before a re-run: a path outside the run would delete that file."""
    write(tmp_path, {"specs/e.yaml": f"""
        apiVersion: kiln.dev/v1alpha1
        kind: Experiment
        metadata: {{name: own}}
        spec:
          dataset: {{name: wine}}
          command: {{run: python train.py, metricsFile: "{path}"}}
    """})
    issues = [i.format() for i in load_specs(tmp_path / "specs").issues]
    assert any("spec.command.metricsFile" in i and "must be a path inside the trial's output folder" in i
               for i in issues), issues
