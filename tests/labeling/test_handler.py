"""LabelingJob handler against the real Label Studio (session fixture): kiln apply in a git repo
creates the project from the spec, imports a DVC-versioned dataset with pre-annotations, splits it
among annotators; annotations made through the API as two annotators complete it; completion
writes a new dataset version whose COCO content is exactly the annotations."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kiln.labeling import server
from kiln.labeling.client import LabelingClient, box_region

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("dvc")

W, H = 64, 48
COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
TOKEN_ENV = "KILN_TEST_LS_TOKEN"
ANNOTATORS = ["cy@example.com", "di@example.com", "ed@example.com"]


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def draw(folder: Path, n: int) -> dict[str, list[tuple[str, list[int]]]]:
    """n PNGs with 1-2 non-overlapping pure-colour boxes, as an images-only COCO dataset."""
    folder.mkdir(parents=True)
    truth = {}
    images = []
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        img = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        boxes = []
        for k in range(1 + i % 2):
            name = list(COLORS)[(i + k) % 3]
            # box k lives in its own half; every 5th image's first box is narrow (scores 0.3)
            w = 5 if (k == 0 and i % 5 == 0) else int(rng.integers(8, 14))
            h = int(rng.integers(6, 14))
            x = int(rng.integers(0, W // 2 - w)) + k * (W // 2)
            y = int(rng.integers(0, H - h))
            img[y:y + h, x:x + w] = COLORS[name]
            boxes.append((name, [x, y, w, h]))
        key = f"{i:04d}.png"
        Image.fromarray(img).save(folder / key)
        truth[key] = boxes
        images.append({"id": i, "file_name": key, "width": W, "height": H})
    (folder / "_annotations.coco.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": [],
         "categories": [{"id": j, "name": c} for j, c in enumerate(COLORS, start=1)]}))
    return truth


def spec(kind: str, name: str, body: str) -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
            + "".join(f"  {ln}\n" for ln in body.strip().splitlines()))


def make_repo(fx, name: str, files: dict[str, str], url: str | None = None) -> Path:
    repo = git_repo(fx.repos / name)
    (repo / "kiln.yaml").write_text(
        f"labelStudio: {{url: '{url or fx.url}', tokenEnv: {TOKEN_ENV}, documentRoot: '{fx.document_root}'}}\n")
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    return repo


def apply(repo: Path):
    from kiln.config import load_config
    from kiln.controller.project import apply as do_apply

    lines: list[str] = []
    out = do_apply(load_config(repo), echo=lines.append)
    return out.result, "\n".join(lines)


def outcome(result, ref: str) -> str:
    return next(r.outcome for r in result.results if r.ref == ref)


def plan(repo: Path):
    from kiln.config import load_config
    from kiln.controller.project import plan as do_plan

    return do_plan(load_config(repo))


def record(repo: Path, key: str):
    from kiln.config import load_config
    from kiln.controller.project import open_state

    store = open_state(load_config(repo))
    try:
        return store.get(key)
    finally:
        store.close()


def register_oracle(repo: Path) -> int:
    from kiln.algorithms.base import TrainedModel
    from kiln.bento.registry import Registry, default_home
    from tests.labeling.color_boxes import ColorBoxes

    folder = repo.parent / f"{repo.name}-model"
    ColorBoxes().save(TrainedModel("test_color_boxes", None, {}, {"colors": COLORS}), folder)
    # as the Experiment below would register it (its handler arrives separately)
    return Registry(default_home(repo)).register("shapes-oracle", folder, "onnx", serving={"file": "meta.json"},
                                                 labels={"experiment": "shapes-exp"})


EXPERIMENT = """
dataset: {name: shapes}
algorithm: {name: test_color_boxes}
register: {model: shapes-oracle}
"""


DETECTION_JOB = """
dataset: {name: shapes}
task: detection
labels: [red, green, {name: blue, color: "#2040e0"}]
instructions: Box every coloured rectangle.
annotators: [cy@example.com, di@example.com, ed@example.com]
reviewers: [bo@example.com]
completion: {rule: all-annotated}
preAnnotation: {model: {experiment: shapes-exp}, threshold: 0.5}
"""


@pytest.fixture(scope="module")
def det(label_studio, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(TOKEN_ENV, label_studio.token)
    mp.setitem(__import__("kiln.algorithms.registry", fromlist=["ALGORITHMS"]).ALGORITHMS,
               "test_color_boxes", "tests.labeling.color_boxes:ColorBoxes")
    # validation reads the catalogue, not the registry: the oracle is declared there as a detector
    from dataclasses import replace

    from kiln.algorithms.catalogue import CATALOGUE
    mp.setitem(CATALOGUE, "test_color_boxes",
               replace(CATALOGUE["fasterrcnn_resnet50_fpn"], name="test_color_boxes", hyperparameters=()))
    repo = make_repo(label_studio, "det", {
        "specs/shapes.yaml": spec("Dataset", "shapes", "type: image\ntask: detection\nformat: coco\n"
                                                       "source: {path: raw/shapes}"),
        "specs/boxes.yaml": spec("LabelingJob", "boxes", DETECTION_JOB),
        "specs/exp.yaml": spec("Experiment", "shapes-exp", EXPERIMENT)})
    truth = draw(repo / "raw" / "shapes", 42)
    assert register_oracle(repo) == 1
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "created", log
    admin = LabelingClient(label_studio.url, label_studio.token)
    yield {"repo": repo, "truth": truth, "admin": admin, "fx": label_studio, "first": (result, log)}
    mp.undo()


def test_project_tasks_predictions_and_even_split(det) -> None:
    repo, truth, admin = det["repo"], det["truth"], det["admin"]
    rec = record(repo, "LabelingJob/default/boxes")
    pid = rec.extra["project"]
    assert rec.health == "Progressing" and rec.condition("Ready").status == "True"
    assert rec.extra["assignment"] == {"cy@example.com": [1, 14], "di@example.com": [15, 28],
                                       "ed@example.com": [29, 42]}
    assert rec.extra["progress"]["per_annotator"] == {u: {"assigned": 14, "annotated": 0, "skipped": 0}
                                                      for u in ANNOTATORS}
    assert rec.extra["dataset"] == "default/shapes@v1"
    v1 = json.loads((repo / "data/default/shapes.versions.json").read_text())["versions"][0]["id"]
    assert rec.extra["inputVersions"] == {"default/shapes": v1}  # what plan compares for new versions
    p = admin.ls.projects.get(pid)
    assert "blue" in p.label_config and "#2040e0" in p.label_config and p.expert_instruction
    tasks = {t["data"]["kiln_key"]: t for t in admin.export_tasks(pid)}
    assert sorted(tasks) == sorted(truth)
    # the oracle drops boxes under 8 px (score 0.3 < threshold 0.5); an image left without a box
    # stays unlabelled
    want_pred = {k: [(c, b) for c, b in v if b[2] >= 8] for k, v in truth.items()}
    n_pred = sum(bool(v) for v in want_pred.values())
    assert rec.extra["preAnnotation"]["withPredictions"] == n_pred and 0 < n_pred < 42
    for key, boxes in want_pred.items():
        preds = list(admin.ls.predictions.list(task=tasks[key]["id"]))
        if not boxes:
            assert preds == []
            continue
        (pred,) = preds
        assert pred.model_version == "shapes-oracle:v1" and pred.score == pytest.approx(0.9)
        got = sorted((r["value"]["rectanglelabels"][0], [r["value"]["x"] * W / 100, r["value"]["y"] * H / 100,
                                                         r["value"]["width"] * W / 100, r["value"]["height"] * H / 100])
                     for r in pred.result)
        for (gc, gb), (wc, wb) in zip(got, sorted(boxes)):
            assert gc == wc and gb == pytest.approx(wb, abs=1e-9)
    # the images are served from the export folder under the document root: hard links of the
    # repository's files (the repository itself is outside the root)
    import urllib.parse
    import urllib.request

    fx = det["fx"]
    url = tasks["0001.png"]["data"]["image"]
    served = fx.document_root / urllib.parse.unquote(url.split("?d=", 1)[1])
    assert not repo.resolve().is_relative_to(fx.document_root)
    assert os.path.samefile(served, repo / "data" / "default" / "shapes" / "0001.png")
    req = urllib.request.Request(fx.url + url, headers={"Authorization": f"Token {fx.token}"})
    with urllib.request.urlopen(req) as r:
        assert r.read() == (repo / "data" / "default" / "shapes" / "0001.png").read_bytes()
    # describe shows the project, URL and per-annotator progress
    from kiln.config import load_config
    from kiln.controller.status import describe, status_rows

    text = describe(load_config(repo), "LabelingJob/boxes")
    assert f"/projects/{pid}" in text and '"ed@example.com": {"assigned": 14, "annotated": 0, "skipped": 0}' in text
    row = next(r for r in status_rows(load_config(repo)) if r["kind"] == "LabelingJob")
    assert row["health"] == "Progressing" and "0/42 items annotated or skipped" in row["info"]


def test_unchanged_reapply_changes_nothing(det) -> None:
    repo, admin = det["repo"], det["admin"]
    pid = record(repo, "LabelingJob/default/boxes").extra["project"]
    before = admin.export_tasks(pid)
    p = plan(repo)
    ch = {c.ref: c for c in p.changes}
    assert ch["LabelingJob/boxes"].action == "unchanged" and ch["LabelingJob/boxes"].poll
    assert "labelling in progress: 0/42" in ch["LabelingJob/boxes"].note
    # (the Experiment spec only names the hand-registered model for validation; it never trains here)
    assert not [c for c in p.changes if c.pending and c.handled and c.kind != "Experiment"]
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "unchanged" and result.actions == 0, log
    assert outcome(result, "Dataset/shapes") == "unchanged"
    assert admin.export_tasks(pid) == before
    from kiln.controller.labeling_steps import kiln_id

    marker = f"kiln.dev/id: {kiln_id(repo, 'default', 'boxes')}"
    assert len([q for q in admin.ls.projects.list() if marker in (q.description or "").splitlines()]) == 1


def test_metadata_change_is_recorded_without_touching_the_project(det) -> None:
    """Labels and the owner are metadata (``kiln.api.kinds``): plan says "in place", apply records
    the spec and does no work in Label Studio (#25)."""
    repo, admin = det["repo"], det["admin"]
    pid = record(repo, "LabelingJob/default/boxes").extra["project"]
    before, project = admin.export_tasks(pid), admin.ls.projects.get(pid)
    original = (repo / "specs/boxes.yaml").read_text()
    (repo / "specs/boxes.yaml").write_text(original.replace("metadata: {name: boxes}",
                                                            "metadata: {name: boxes, labels: {team: vision}}")
                                           + "  owner: cy@example.com\n")
    ch = next(c for c in plan(repo).changes if c.ref == "LabelingJob/boxes")
    assert ch.action == "update" and ch.update == "metadata"
    assert ch.work() == "in place: metadata.labels, owner"
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "updated" and result.actions == 0, log
    assert admin.export_tasks(pid) == before
    after = admin.ls.projects.get(pid)
    assert (after.title, after.description, after.label_config) == (project.title, project.description,
                                                                    project.label_config)
    rec = record(repo, "LabelingJob/default/boxes")
    assert rec.extra["lastUpdate"]["class"] == "metadata" and rec.spec["metadata"]["labels"] == {"team": "vision"}
    (repo / "specs/boxes.yaml").write_text(original)
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "updated" and result.actions == 0, log


def test_annotate_complete_new_dataset_version(det) -> None:
    repo, truth, admin = det["repo"], det["truth"], det["admin"]
    pid = record(repo, "LabelingJob/default/boxes").extra["project"]
    # submitted as the annotators (completed_by); per-user tokens are covered in test_label_studio
    uid = admin.users()
    ids = admin.existing_keys(pid)
    keys = sorted(truth)
    for n, key in enumerate(keys, start=1):
        who = ANNOTATORS[1] if 15 <= n <= 28 else ANNOTATORS[0]  # cy also does ed's share
        if key == "0020.png":
            admin.annotate(ids[key], [], cancelled=True, user_id=uid[who])  # skipped
            continue
        if key == "0042.png":
            continue  # deleted below, never annotated
        admin.annotate(ids[key], [box_region(c, x, y, w, h, W, H) for c, (x, y, w, h) in truth[key]],
                       user_id=uid[who])
    # one more missing: not complete yet -> Progressing, no version
    assert admin.mark_deleted(pid, ["0042.png"]) == 1
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "updated", log
    rec = record(repo, "LabelingJob/default/boxes")
    assert rec.extra["completion"]["complete"] and rec.health == "Healthy"
    assert rec.extra["output"]["number"] == "v2" and rec.extra["output"]["dataset"] == "default/shapes"
    assert rec.extra["progress"]["per_annotator"]["cy@example.com"]["annotated"] == 27
    assert rec.extra["progress"]["per_annotator"]["di@example.com"] == {"assigned": 14, "annotated": 13, "skipped": 1}
    log_ = json.loads((repo / "data/default/shapes.versions.json").read_text())
    v2 = log_["versions"][1]
    assert log_["current"] == v2["id"] and v2["lineage"]["parent"] == log_["versions"][0]["id"]
    assert v2["lineage"]["labelingJob"]["job"] == "LabelingJob/default/boxes"
    assert v2["lineage"]["labelingJob"]["skipped"] == ["0020.png"]
    assert v2["lineage"]["labelingJob"]["deleted"] == ["0042.png"]
    coco = json.loads((repo / "data/default/shapes/_annotations.coco.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im["file_name"] for im in coco["images"]}
    want = {k: v for k, v in truth.items() if k not in ("0020.png", "0042.png")}
    assert sorted(images.values()) == sorted(want)
    got: dict[str, list] = {}
    for a in coco["annotations"]:
        got.setdefault(images[a["image_id"]], []).append((cats[a["category_id"]], a["bbox"]))
    assert sorted(got) == sorted(want)
    for key, boxes in want.items():
        g = sorted(got[key])
        assert [c for c, _ in g] == sorted(c for c, _ in boxes)
        for (_, gb), (_, wb) in zip(g, sorted(boxes)):
            assert gb == pytest.approx(wb, abs=1e-9)  # percent <-> pixels: float rounding only
    # the job's own output is no new input; applying again changes nothing
    p = plan(repo)
    job = next(c for c in p.changes if c.ref == "LabelingJob/boxes")
    assert job.action == "unchanged" and not job.note and not job.poll, p.to_text()
    again, log = apply(repo)
    assert again.actions == 0, log
    assert len(json.loads((repo / "data/default/shapes.versions.json").read_text())["versions"]) == 2


def test_drift_reported_by_plan_and_corrected_by_apply(det) -> None:
    from kiln.labeling.configs import label_config

    repo, admin = det["repo"], det["admin"]
    pid = record(repo, "LabelingJob/default/boxes").extra["project"]
    admin.ls.projects.update(pid, label_config=label_config("detection", ["crimson", "green", "blue"]))
    p = plan(repo)
    ch = next(c for c in p.changes if c.ref == "LabelingJob/boxes")
    assert ch.action == "update"
    assert "class 'red' renamed to 'crimson' in Label Studio" in ch.note
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "updated", log
    from kiln.labeling.configs import classes_of

    assert classes_of(admin.ls.projects.get(pid).label_config, "detection") == ["red", "green", "blue"]
    assert next(c for c in plan(repo).changes if c.ref == "LabelingJob/boxes").action == "unchanged"


def test_rename_class_in_spec_keeps_annotations(det) -> None:
    repo, admin = det["repo"], det["admin"]
    pid = record(repo, "LabelingJob/default/boxes").extra["project"]
    body = DETECTION_JOB.replace("labels: [red,", "labels: [{name: scarlet, renamedFrom: red},")
    (repo / "specs/boxes.yaml").write_text(spec("LabelingJob", "boxes", body))
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/boxes") == "updated", log
    labels = {lab for t in admin.export_tasks(pid) for a in t["annotations"] for r in a["result"]
              for lab in r["value"]["rectanglelabels"]}
    assert "scarlet" in labels and "red" not in labels
    rec = record(repo, "LabelingJob/default/boxes")
    assert "scarlet" in rec.extra["progress"]["per_class"] and rec.extra["output"]["number"] == "v3"


def test_unreachable_server_and_bad_token(det, monkeypatch) -> None:
    repo, fx = det["repo"], det["fx"]
    good = (repo / "kiln.yaml").read_text()
    try:
        (repo / "kiln.yaml").write_text(good.replace(fx.url, f"http://127.0.0.1:{server.free_port()}"))
        p = plan(repo)  # plan does not fail: it notes that it could not look
        job = next(c for c in p.changes if c.ref == "LabelingJob/boxes")
        assert "Label Studio not checked" in job.note and "is unreachable" in job.note
        result, log = apply(repo)
        res = next(r for r in result.results if r.ref == "LabelingJob/boxes")
        first, *rest = res.message.splitlines()  # the error line, then its hint
        assert res.outcome == "retrying" and "is unreachable" in first and len(rest) <= 1
        assert "Traceback" not in log and result.exit_code == 1
        rec = record(repo, "LabelingJob/default/boxes")
        assert rec.condition("Reconciling").reason == "Retrying" and rec.condition("Ready").status == "False"
        assert next(c for c in plan(repo).changes if c.ref == "LabelingJob/boxes").action == "update"  # retried

        (repo / "kiln.yaml").write_text(good)
        monkeypatch.setenv(TOKEN_ENV, "0" * 40)
        result, log = apply(repo)
        res = next(r for r in result.results if r.ref == "LabelingJob/boxes")
        assert res.outcome == "failed" and "refused the API token (HTTP 401)" in res.message
        assert "0" * 40 not in log and fx.token not in log
        rec = record(repo, "LabelingJob/default/boxes")
        assert rec.condition("Stalled").status == "True"
        assert fx.token not in json.dumps(rec.extra) + json.dumps(rec.spec)

        monkeypatch.setenv(TOKEN_ENV, fx.token)  # fixed: the next apply recovers
        result, log = apply(repo)
        assert next(r for r in result.results if r.ref == "LabelingJob/boxes").outcome in ("updated", "unchanged"), log
        assert record(repo, "LabelingJob/default/boxes").condition("Ready").status == "True"
    finally:
        (repo / "kiln.yaml").write_text(good)


@pytest.mark.slow  # ~50 s: trains resnet18 for a few epochs on CPU and versions a second dataset
def test_classification_pre_annotation_from_registered_torch_model(label_studio, monkeypatch) -> None:
    """A resnet18 trained on solid colours, registered, pre-annotates a classification job: the
    predictions are exactly its predict output; items under the threshold stay unlabelled."""
    pytest.importorskip("torch")
    from kiln.algorithms.base import TrainData
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.data import load

    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    job = """
dataset: {name: swatches}
task: classification
labels: [red, green, blue]
annotators: [cy@example.com, di@example.com]
assignment: weighted
completion: {rule: min-count, minCount: 5}
preAnnotation: {model: {name: colors-net, version: 1}, threshold: 0.6}
"""
    repo = make_repo(label_studio, "cls", {
        "specs/swatches.yaml": spec("Dataset", "swatches", "type: image\nformat: coco\nsource: {path: raw/swatches}"),
        "specs/exp.yaml": spec("Experiment", "colors-exp", "dataset: {name: swatches}\nalgorithm: {name: resnet18}\n"
                                                            "register: {model: colors-net}"),
        "specs/job.yaml": spec("LabelingJob", "swatch-labels", job.replace("annotators: [cy@example.com, di@example.com]",
                                                                          "annotators: [{user: cy@example.com, weight: 2},"
                                                                          " {user: di@example.com, weight: 1}]"))})
    # training data: noisy solid colours in image-folder layout; the job's images: 12 more
    rng = np.random.default_rng(0)
    train = repo.parent / "cls-train"
    for split, n in (("train", 12), ("validation", 3)):
        for c, rgb in COLORS.items():
            (train / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb) + rng.integers(-25, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(train / split / c / f"{i}.png")
    folder = repo / "raw" / "swatches"
    folder.mkdir(parents=True)
    images = []
    for i in range(12):
        rgb = np.array(list(COLORS.values())[i % 3])
        mix = rgb if i < 9 else (rgb + np.array(list(COLORS.values())[(i + 1) % 3])) // 2  # 3 ambiguous ones
        img = np.clip(mix + rng.integers(-25, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"s{i:02d}.png")
        images.append({"id": i + 1, "file_name": f"s{i:02d}.png", "width": 16, "height": 16})
    (folder / "_annotations.coco.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    algo = get_algorithm("resnet18")
    model = algo.train(TrainData(load(train, "image-folder")),
                       {"input_size": 32, "epochs": 4, "batch_size": 12, "learning_rate": 0.05, "device": "cpu"})
    algo.save(model, repo.parent / "cls-model")
    Registry(default_home(repo)).register("colors-net", repo.parent / "cls-model", "torch",
                                          labels={"experiment": "colors-exp"})
    result, log = apply(repo)
    assert outcome(result, "LabelingJob/swatch-labels") == "created", log
    rec = record(repo, "LabelingJob/default/swatch-labels")
    assert rec.extra["assignment"] == {"cy@example.com": [1, 8], "di@example.com": [9, 12]}  # weights 2:1
    admin = LabelingClient(label_studio.url, label_studio.token)
    tasks = {t["data"]["kiln_key"]: t for t in admin.export_tasks(rec.extra["project"])}
    want = dict(zip(sorted(tasks), algo.predict(model, [str(folder / k) for k in sorted(tasks)])))
    above = 0
    for key, out in want.items():
        preds = list(admin.ls.predictions.list(task=tasks[key]["id"]))
        if out["score"] < 0.6:
            assert preds == [], key
            continue
        above += 1
        (pred,) = preds
        assert pred.model_version == "colors-net:v1" and pred.score == pytest.approx(out["score"])
        assert pred.result[0]["value"]["choices"] == [out["label"]]
    assert rec.extra["preAnnotation"]["withPredictions"] == above >= 6
