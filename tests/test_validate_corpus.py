"""The PR check tells the whole truth (#13): a corpus of newcomer mistakes, one spec each, in a
small repository that is valid without it. Every one fails `kiln validate` with exit 1, names the
right file, line and YAML path, gives a hint, and never a traceback; one file with several
mistakes reports all of them in one run; validate imports no ML library.

(Algorithm, hyperparameter and metric mistakes are the algorithm catalogue's corpus.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiln.cli import main
from tests.helpers import ROOT, write

BASE = {
    "specs/ws.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Workspace
        metadata: {name: team}
        spec:
          members:
            - {user: ada@example.com, role: admin}
            - {user: bo@example.com, role: developer}
            - {user: cy@example.com, role: annotator}
          presets: [{name: small, cpu: "1", memory: 2Gi}, {name: large, cpu: "4", memory: 8Gi}]
          quotas: {cpu: "8", trainingGpus: 1}
        """,
    "specs/data.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: wine}
        spec: {type: tabular, task: classification, source: {sample: wine}}
        ---
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: pets, workspace: team}
        spec: {type: image, task: classification, format: image-folder, source: {path: data/pets}}
        ---
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: table}
        spec:
          type: tabular
          task: classification
          source: {path: data/t.csv}
          label: y
          preprocessing: [{op: StandardScaler, columns: [a]}]
        """,
    "specs/exp.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Experiment
        metadata: {name: wine-rf}
        spec:
          dataset: {name: wine}
          algorithm: {name: random_forest}
          register: {model: wine-model, aliases: [production]}
        """,
    "specs/templates/base.yaml": """
        spec:
          mode: run
          algorithm: {name: random_forest}
          checkpoint: {every: 1}
        """,
    "data/t.csv": "a,b,y\n1,2,0\n3,4,1\n",
    "data/pets/cat/a.png": "",
}

HEAD = "apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}{ws}}}\nspec:\n"


def doc(kind: str, body: str, name: str = "x", ws: str | None = None) -> str:
    """A document whose spec's first line is line 5 of the file."""
    return HEAD.format(kind=kind, name=name, ws=f", workspace: {ws}" if ws else "") + textwrap.indent(
        textwrap.dedent(body).strip("\n"), "  ") + "\n"


@dataclass
class Case:
    id: str
    text: str                 # specs/case.yaml
    line: int
    path: str                 # the YAML path printed
    words: str                # in the message
    file: str = "specs/case.yaml"
    extra: dict[str, str] = field(default_factory=dict)


EXP = "dataset: {name: wine}\nalgorithm: {name: random_forest}\n"

CASES = [
    # -- the document ------------------------------------------------------------------------
    Case("yaml-syntax", doc("Dataset", "type: tabular\nsource: {sample: wine"), 7, "<document>", "YAML syntax error"),
    Case("duplicate-key", doc("Dataset", "type: tabular\nsource: {sample: wine}\ntype: image"), 7, "<document>",
         "found duplicate key 'type'"),
    Case("no-api-version", "kind: Dataset\nmetadata: {name: x}\nspec: {}\n", 1, "<document>", "missing apiVersion"),
    Case("api-version", doc("Dataset", "type: tabular").replace("v1alpha1", "v1"), 1, "apiVersion",
         "unsupported apiVersion"),
    Case("kind-typo", doc("Experiement", EXP), 2, "kind", "unknown kind 'Experiement'"),
    Case("name-case", doc("Dataset", "type: tabular\nsource: {sample: wine}", name="Wine_Data"), 3, "metadata.name",
         "should match pattern"),
    # -- Workspace ---------------------------------------------------------------------------
    Case("ws-unknown-field", doc("Workspace", "memebers: []", name="w2"), 5, "spec.memebers", "unknown field"),
    Case("ws-role", doc("Workspace", "members: [{user: a@x.io, role: develper}]", name="w2"), 5,
         "spec.members[0].role", "got 'develper'"),
    Case("ws-member-twice", doc("Workspace", "members:\n  - {user: a@x.io, role: admin}\n  - {user: a@x.io, role: developer}",
                                name="w2"), 7, "spec.members[1]", "listed twice"),
    Case("ws-default-preset", doc("Workspace", "presets: [{name: gpu-large, gpu: 1}]\ndefaultPreset: gpu-larg", name="w2"),
         6, "spec.defaultPreset", "is not one of the presets"),
    Case("ws-period", doc("Workspace", "period: {start: 2030-01-01, end: 2029-01-01}", name="w2"), 5,
         "spec.period.end", "end is before start"),
    Case("ws-quota-type", doc("Workspace", "quotas: {trainingGpus: two}", name="w2"), 5, "spec.quotas.trainingGpus",
         "valid integer"),
    # -- Dataset -----------------------------------------------------------------------------
    Case("ds-type", doc("Dataset", "type: images\nsource: {sample: digits}"), 5, "spec.type", "got 'images'"),
    Case("ds-task", doc("Dataset", "type: tabular\ntask: classfication\nsource: {sample: wine}"), 6, "spec.task",
         "got 'classfication'"),
    Case("ds-format-task", doc("Dataset", "type: image\ntask: classification\nformat: coco\nsource: {sample: digits}"),
         7, "spec.format", "format 'coco' cannot hold a classification dataset"),
    Case("ds-format-type", doc("Dataset", "type: image\nformat: csv\nsource: {sample: digits}"), 6, "spec.format",
         "an image dataset cannot have format 'csv'"),
    Case("ds-two-sources", doc("Dataset", "type: tabular\nsource:\n  sample: wine\n  path: data/t.csv"), 7,
         "spec.source.sample", "give exactly one of"),
    Case("ds-no-source", doc("Dataset", "type: tabular\ntask: classification"), 4, "spec.source",
         "required field is missing"),
    Case("ds-path-missing", doc("Dataset", "type: tabular\nsource: {path: data/t.cvs}"), 6, "spec.source.path",
         "does not exist in the repository"),
    Case("ds-path-outside", doc("Dataset", "type: tabular\nsource: {path: ../elsewhere}"), 6, "spec.source.path",
         "outside the repository"),
    Case("ds-label", doc("Dataset", "type: tabular\nsource: {path: data/t.csv}\nlabel: Y"), 7, "spec.label",
         "label column 'Y' is not in t.csv's header"),
    Case("ds-op-name", doc("Dataset", "type: tabular\nsource: {sample: wine}\npreprocessing:\n  - {op: StandardScalr}"),
         8, "spec.preprocessing[0].op", "unknown preprocessing op 'StandardScalr'"),
    Case("ds-op-param-name", doc("Dataset", "type: image\nsource: {sample: digits}\npreprocessing:\n"
                                 "  - {op: Rotate, params: {rotat: 10}}"),
         8, "spec.preprocessing[0].params.rotat", "Rotate takes no parameter 'rotat'"),
    Case("ds-op-param-value", doc("Dataset", "type: tabular\nsource: {sample: wine}\npreprocessing:\n"
                                  "  - op: KBinsDiscretizer\n    params: {n_bins: five}"),
         9, "spec.preprocessing[0].params.n_bins", "valid integer"),
    Case("ds-op-column", doc("Dataset", "type: tabular\nsource: {path: data/t.csv}\npreprocessing:\n"
                             "  - {op: MinMaxScaler, columns: [a, c]}"),
         8, "spec.preprocessing[0].columns", "column 'c' is not in the table"),
    Case("ds-op-kind", doc("Dataset", "type: tabular\nsource: {sample: wine}\npreprocessing:\n  - {op: flip}"),
         8, "spec.preprocessing[0].op", "'flip' is a image op; this dataset is tabular"),
    Case("ds-splits", doc("Dataset", "type: tabular\nsource: {sample: wine}\nsplits: {train: 0.8, validation: 0.3}"),
         7, "spec.splits", "must be 1.0"),
    Case("ds-sharing-ws", doc("Dataset", "type: tabular\nsource: {sample: wine}\nsharing:\n  visibility: shared\n"
                              "  workspaces: [teem]"), 9, "spec.sharing.workspaces[0]", "unknown workspace 'teem'"),
    Case("ds-derive-unknown", doc("Dataset", "type: tabular\nsource: {dataset: {name: wien}}"), 6,
         "spec.source.dataset.name", "unknown dataset 'wien'"),
    Case("ds-capture-unknown", doc("Dataset", "type: image\nsource: {capture: pets-api}"), 6, "spec.source.capture",
         "unknown deployment 'pets-api'"),
    Case("ds-owner", doc("Dataset", "type: image\nsource: {sample: digits}\nowner: zed@example.com", ws="team"), 7,
         "spec.owner", "is not a member of workspace 'team'"),
    Case("ds-workspace", doc("Dataset", "type: image\nsource: {sample: digits}", ws="teem"), 3,
         "metadata.workspace", "unknown workspace 'teem'"),
    Case("ds-twice", (2 * doc("Dataset", "type: tabular\nsource: {sample: iris}", name="grapes")).replace(
         "apiVersion", "---\napiVersion").removeprefix("---\n"), 10, "metadata.name", "is defined twice"),
    Case("ds-classes", doc("Dataset", "type: image\nsource: {sample: digits}\nclasses: [cat, dog, cat]"), 7,
         "spec.classes[2]", "duplicates"),
    Case("ds-background", doc("Dataset", "type: image\ntask: detection\nsource: {sample: shapes}\nbackground: 0"), 8,
         "spec.background", "background is for semantic-segmentation masks"),
    # -- LabelingJob ---------------------------------------------------------------------------
    Case("lj-dataset", doc("LabelingJob", "dataset: {name: petz}\ntask: classification\nlabels: [cat]\n"
                           "annotators: [cy@example.com]\nreviewers: [bo@example.com]", ws="team"),
         5, "spec.dataset.name", "unknown dataset 'petz'"),
    Case("lj-tabular", doc("LabelingJob", "dataset: {name: wine}\ntask: tabular-classification\nlabels: [a]\n"
                           "annotators: [cy@example.com]\ncompletion: {rule: all-annotated}"),
         5, "spec.dataset.name", "tabular labelling is not available"),
    Case("lj-reviewer", doc("LabelingJob", "dataset: {name: pets}\ntask: classification\nlabels: [cat]\n"
                            "annotators: [cy@example.com]\nreviewers: [cy@example.com]", ws="team"),
         9, "spec.reviewers[0]", "is an annotator and may not review"),
    Case("lj-annotator", doc("LabelingJob", "dataset: {name: pets}\ntask: classification\nlabels: [cat]\n"
                             "annotators: [zed@example.com]\nreviewers: [bo@example.com]", ws="team"),
         8, "spec.annotators[0]", "is not a member of workspace 'team'"),
    Case("lj-no-reviewer", doc("LabelingJob", "dataset: {name: pets}\ntask: classification\nlabels: [cat]\n"
                               "annotators: [cy@example.com]\ncompletion: {rule: reviewed}", ws="team"),
         9, "spec.completion", "needs at least one reviewer"),
    Case("lj-preannotation", doc("LabelingJob", "dataset: {name: pets}\ntask: classification\nlabels: [cat]\n"
                                 "annotators: [cy@example.com]\nreviewers: [bo@example.com]\n"
                                 "preAnnotation: {model: {experiment: pets-resnet}}", ws="team"),
         10, "spec.preAnnotation.model.experiment", "unknown experiment 'pets-resnet'"),
    Case("lj-output", doc("LabelingJob", "dataset: {name: pets}\ntask: classification\nlabels: [cat]\n"
                          "annotators: [cy@example.com]\nreviewers: [bo@example.com]\noutput: {dataset: pets-v2}",
                          ws="team"), 10, "spec.output.dataset", "unknown dataset 'pets-v2'"),
    # -- Experiment ----------------------------------------------------------------------------
    Case("ex-dataset", doc("Experiment", "dataset: {name: win}\nalgorithm: {name: random_forest}"), 5,
         "spec.dataset.name", "unknown dataset 'win'"),
    Case("ex-version", doc("Experiment", "dataset: {name: wine, version: newest}\nalgorithm: {name: random_forest}"),
         5, "spec.dataset.version", "expected 'latest', 'vN' or a content hash"),
    Case("ex-mode", doc("Experiment", "mode: hop\n" + EXP), 5, "spec.mode", "got 'hop'"),
    Case("ex-hpo-field", doc("Experiment", "mode: hpo\ndataset: {name: wine}\nalgorithm:\n  name: random_forest\n"
                             "  searchSpace: {max_depth: {type: int, low: 2, high: 8}}\nhpo: {maxTrails: 20}"),
         10, "spec.hpo.maxTrails", "unknown field 'maxTrails'"),
    Case("ex-parallel", doc("Experiment", "mode: hpo\n" + EXP.replace("forest}", "forest, searchSpace: {max_depth: "
                            "{type: int, low: 2, high: 8}}}") + "hpo:\n  maxTrials: 4\n  parallelTrials: 8"),
         10, "spec.hpo.parallelTrials", "exceeds maxTrials"),
    Case("ex-both", doc("Experiment", EXP + "command: {run: python train.py}"), 7, "spec.command",
         "give exactly one of 'algorithm' or 'command'"),
    Case("ex-search-in-run", doc("Experiment", "dataset: {name: wine}\nalgorithm:\n  name: random_forest\n"
                                 "  searchSpace: {max_depth: {type: int, low: 2, high: 8}}"),
         8, "spec.algorithm.searchSpace", "searchSpace needs mode 'hpo' or 'automl'"),
    Case("ex-range", doc("Experiment", "mode: hpo\ndataset: {name: wine}\nalgorithm:\n  name: random_forest\n"
                         "  searchSpace:\n    max_depth: {type: int, low: 9, high: 3}"),
         10, "spec.algorithm.searchSpace.max_depth", "low (9) must be < high (3)"),
    Case("ex-preset", doc("Experiment", "dataset: {name: pets}\ncommand: {run: python train.py}\n"
                          "resources: {preset: larg}", ws="team"), 7, "spec.resources.preset",
         "unknown resource preset 'larg'"),
    Case("ex-quota", doc("Experiment", "dataset: {name: pets}\ncommand: {run: python train.py}\n"
                         "resources: {cpu: \"16\"}", ws="team"), 7, "spec.resources", "needs 16 CPU at once"),
    Case("ex-grid", doc("Experiment", "mode: hpo\ndataset: {name: wine}\ncommand:\n  run: python train.py\n"
                        "  searchSpace:\n    lr: {type: float, low: 0.001, high: 0.1}\nhpo: {sampler: {type: grid}}"),
         10, "spec.command.searchSpace.lr", "sampler grid cannot search the continuous float range"),
    Case("ex-workdir", doc("Experiment", "dataset: {name: wine}\ncommand: {run: python train.py, workdir: trainer}"),
         6, "spec.command.workdir", "is not a folder of the repository"),
    Case("ex-resplit", doc("Experiment", "dataset: {name: table}\nalgorithm: {name: random_forest}\n"
                           "split: {train: 0.5, validation: 0.25, test: 0.25}"), 7, "spec.split",
         "re-splits dataset 'table'"),
    Case("ex-secret-env", doc("Experiment", "dataset: {name: wine}\ncommand:\n  run: python train.py\n"
                              "  env: {API_TOKEN: abc}"), 8, "spec.command.env.API_TOKEN", "looks like a secret"),
    Case("ex-task", doc("Experiment", "task: regression\n" + EXP), 5, "spec.task",
         "does not match dataset 'wine'"),
    Case("ex-users", doc("Experiment", "dataset: {name: pets}\ncommand: {run: python train.py}\naccess: private\n"
                         "users: [zed@example.com]", ws="team"), 8, "spec.users[0]", "is not a member"),
    Case("ex-not-shared", doc("Experiment", "dataset: {name: wine, workspace: default}\n"
                              "command: {run: python train.py}", ws="team"), 5, "spec.dataset.workspace",
         "is not shared with workspace 'team'"),
    # -- Deployment ----------------------------------------------------------------------------
    Case("dep-model", doc("Deployment", "model: {name: wine-modl, alias: production}"), 5, "spec.model.name",
         "no experiment registers model 'wine-modl'"),
    Case("dep-alias", doc("Deployment", "model: {name: wine-model, alias: prod}"), 5, "spec.model.alias",
         "has no alias 'prod'"),
    Case("dep-experiment", doc("Deployment", "model: {experiment: wine-forest}"), 5, "spec.model.experiment",
         "unknown experiment 'wine-forest'"),
    Case("dep-replicas", doc("Deployment", "model: {experiment: wine-rf}\nreplicas: two"), 6, "spec.replicas",
         "valid integer"),
    Case("dep-capture", doc("Deployment", "model: {experiment: wine-rf}\ncapture: {sampleRate: 0.1, dataset: wine-inputs}"), 6,
         "spec.capture.dataset", "unknown dataset 'wine-inputs'"),
    Case("dep-model-both", doc("Deployment", "model: {experiment: wine-rf, name: wine-model}"), 5,
         "spec.model.experiment", "give either 'experiment' or 'name'"),
    # -- templates -----------------------------------------------------------------------------
    Case("tpl-unknown", "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\ndefaults: [bse]\nmetadata: {name: x}\n"
         "spec: {dataset: {name: wine}}\n", 3, "defaults[0]", "unknown template 'bse'"),
    Case("tpl-value", "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\ndefaults: [bad]\nmetadata: {name: x}\n"
         "spec: {dataset: {name: wine}}\n", 4, "spec.checkpoint.every", "in template 'bad', used by specs/case.yaml:1",
         file="specs/templates/bad.yaml",
         extra={"specs/templates/bad.yaml": "spec:\n  algorithm: {name: random_forest}\n  checkpoint:\n    every: 0\n"}),
    Case("tpl-yaml", "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\ndefaults: [broken]\nmetadata: {name: x}\n"
         "spec: {dataset: {name: wine}}\n", 3, "<document>", "YAML syntax error in template 'broken'",
         file="specs/templates/broken.yaml",
         extra={"specs/templates/broken.yaml": "spec:\n  algorithm: {name: random_forest\n  mode: run\n"}),
    Case("tpl-override", "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\ndefaults: [base]\n"
         "overrides: [spec.hpo.maxTrials=5]\nmetadata: {name: x}\nspec: {dataset: {name: wine}}\n", 4,
         "overrides[0]", "override 'spec.hpo.maxTrials=5'"),
    Case("tpl-own-value", "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\ndefaults: [base]\nmetadata: {name: x}\n"
         "spec:\n  dataset: {name: wine}\n  checkpoint: {every: 0}\n", 7, "spec.checkpoint.every",
         "greater than or equal to 1"),
]

LINE = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+)  (?P<path>\S+)  (?P<msg>.*?)(?:  \((?P<hint>.*)\))?$")


def run_validate(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`kiln validate` as the CLI runs it (``main``: errors to exit codes, no traceback), in this
    process: an exception that escapes it fails the test."""
    monkeypatch.chdir(repo)
    capsys.readouterr()
    code = main(["validate"])
    out = capsys.readouterr()
    return code, out.out + out.err


def repo_with(tmp_path: Path, files: dict[str, str]) -> Path:
    write(tmp_path, BASE)
    for rel, text in files.items():  # written as given: their line numbers are the test's
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_base_repository_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_validate(repo_with(tmp_path, {}), monkeypatch, capsys)
    assert code == 0, out


def test_the_corpus_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {re.search(r"kind: (\w+)", c.text).group(1) for c in CASES if "kind:" in c.text}  # type: ignore[union-attr]
    assert {"Workspace", "Dataset", "LabelingJob", "Experiment", "Deployment"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_mistake_is_named_at_its_line_with_a_hint(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    repo = repo_with(tmp_path, {"specs/case.yaml": case.text, **case.extra})
    code, out = run_validate(repo, monkeypatch, capsys)
    assert code == 1, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert re.fullmatch(r"\d+ errors? in specs", lines[-1]), out
    found = [m for m in map(LINE.match, lines[:-1]) if m]
    assert len(found) == len(lines) - 1, out  # every problem is one located line
    hit = [m for m in found if (m["file"], int(m["line"]), m["path"]) == (case.file, case.line, case.path)
           and case.words in m["msg"]]
    assert hit, f"expected {case.file}:{case.line}  {case.path}  ...{case.words}... in:\n{out}"
    assert hit[0]["hint"], f"no hint: {hit[0].group(0)}"
    # the mistake is reported where it is, not as knock-on errors in the valid base files
    assert all(m["file"] in (case.file, "specs/case.yaml") for m in found), out


def test_several_mistakes_in_one_file_are_all_reported_in_one_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Schema errors no longer hide the references of the same document, nor other documents'."""
    text = "---\n".join([
        doc("Dataset", "type: tabular\nsource: {path: data/t.csv}\nlabel: z\nsplits: {train: 2}", name="d1"),
        doc("Experiment", "mode: hpo\ndataset: {name: wien}\nalgorithm:\n  name: random_forest\n"
                          "  searchSpace: {max_depth: {type: int, low: 2, high: 8}}\nhpo: {maxTrails: 20}\n"
                          "resources: {preset: larg}", name="e1", ws="team"),
        doc("Deployment", "model: {experiment: e2}\nreplicas: many", name="p1"),
    ])
    repo = repo_with(tmp_path, {"specs/case.yaml": text})
    code, out = run_validate(repo, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in out
    expected = [
        (7, "spec.label", "label column 'z'"),                       # a reference check of the document ...
        (8, "spec.splits.train", "less than or equal to 1"),         # ... whose schema also failed
        (15, "spec.dataset.name", "unknown dataset 'wien'"),
        (19, "spec.hpo.maxTrails", "unknown field 'maxTrails'"),
        (20, "spec.resources.preset", "unknown resource preset 'larg'"),
        (26, "spec.model.experiment", "unknown experiment 'e2'"),
        (27, "spec.replicas", "valid integer"),
    ]
    found = [LINE.match(x) for x in out.strip().splitlines()[:-1]]
    got = [(int(m["line"]), m["path"], m["msg"]) for m in found if m]
    for line, path, words in expected:
        assert any(g[0] == line and g[1] == path and words in g[2] for g in got), f"{line} {path} {words}:\n{out}"
    assert out.strip().splitlines()[-1] == f"{len(expected)} errors in specs", out


def test_validate_imports_no_ml_library_and_the_examples_validate() -> None:
    """Validate of the example repository, in a fresh interpreter: valid, and not one ML,
    serving or data library imported (preprocessing parameters and CSV headers included), nor
    hydra (the example's template is plain: kiln.templates.compose_plain)."""
    code = ("import sys; from kiln.cli import main; rc = main(['validate', 'specs']); "
            "heavy = ('torch', 'torchvision', 'sklearn', 'pandas', 'numpy', 'xgboost', 'tensorflow', 'keras', "
            "'transformers', 'bentoml', 'optuna', 'onnx', 'onnxruntime', 'PIL', 'dvc', 'label_studio_sdk', "
            "'pycocotools', 'hydra', 'omegaconf'); "  # hydra: the example's template composes without it
            "print('IMPORTED', sorted(m for m in heavy if m in sys.modules)); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "IMPORTED []" in p.stdout, p.stdout


def test_plan_says_what_each_experiment_will_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """One line per Experiment to run: mode, algorithm(s), trials x parallel, dataset version,
    resources (the workspace's preset resolved)."""
    repo = repo_with(tmp_path, {"specs/case.yaml": "---\n".join([
        doc("Experiment", "mode: hpo\ndataset: {name: pets, version: v2}\ncommand:\n  run: python train.py\n"
                          "  searchSpace: {lr: {type: float, low: 0.001, high: 0.1}}\nhpo: {maxTrials: 6, parallelTrials: 2}\n"
                          "resources: {preset: large, cpu: \"3\"}", name="tune", ws="team"),
        doc("Experiment", "mode: automl\ndataset: {name: wine}\nautoml:\n  candidates: [{name: svm}, {name: naive_bayes}]\n"
                          "  timeBudget: 60", name="compare"),
    ])})
    monkeypatch.chdir(repo)
    capsys.readouterr()
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert ("runs: hpo command 'python train.py', 6 trials x 2 parallel, dataset pets v2, "
            "3 CPU 8Gi (preset large) per trial") in out, out
    assert ("runs: automl 2 candidates (svm, naive_bayes), 1 trial(s) per candidate, one at a time, within 60 s, "
            "dataset wine latest (no version yet), 1 CPU 2Gi per trial") in out, out
    assert "runs: run random_forest, 1 trial, dataset wine latest (no version yet)" in out, out  # the base's wine-rf
    assert out.count("runs: ") == 3, out  # experiments only


def test_the_spec_layers_names_agree_with_the_data_layers() -> None:
    """What the spec admits is what apply can do: the preprocessing ops and the format x task
    pairs of kiln.api.dataset against the implementations in kiln.data."""
    from kiln.api.dataset import FORMAT_TASKS, PREPROCESSING_OPS
    from kiln.data.formats import FORMATS
    from kiln.data.preprocess import IMGAUG_ALIASES, IMGAUG_PARAMS, OPS

    assert set(PREPROCESSING_OPS) == set(OPS) | set(IMGAUG_ALIASES)
    assert {n: PREPROCESSING_OPS[n] for n in OPS} == {n: op.kind for n, op in OPS.items()}
    assert set(IMGAUG_PARAMS) == set(IMGAUG_ALIASES)
    for fmt, tasks in FORMAT_TASKS.items():
        impl = FORMATS["segmentation-json" if fmt == "masks" else fmt].tasks  # masks are read by segmentation-json
        held = {"classification", "regression", "clustering", "dimension-reduction"} if impl == ("tabular",) else set(impl)
        assert tasks == held, (fmt, tasks, impl)


def test_an_imgaug_parameter_kiln_would_ignore_is_refused_by_apply_too() -> None:
    """`Affine: {translate_percent: ...}` was accepted and silently ignored (kiln's Affine reads
    translate_px, rotate, scale): validate and the dataset step now both refuse it."""
    from kiln.data.errors import DatasetFormatError
    from kiln.data.preprocess import make_op, op_problems

    with pytest.raises(DatasetFormatError, match=r"unknown parameter\(s\) \['translate_percent'\]"):
        make_op("Affine", {"translate_percent": 0.1})
    assert [(p, m) for p, m, _ in op_problems("Affine", {"translate_percent": 0.1})] == [
        (["translate_percent"], "Affine takes no parameter 'translate_percent'")]
    assert op_problems("Affine", {"translate_px": {"x": 3}, "rotate": 5}) == []
