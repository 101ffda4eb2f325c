"""The relabelling loop for detection, instance and semantic segmentation (issue 25), from specs
alone, with real components: a Dataset ``base`` of drawn shapes (COCO boxes, COCO polygons, or
segmentation-json masks) -> an Experiment trains a tiny torchvision model one epoch and registers
it -> Dataset ``captured``, new unlabelled images (as a deployment's capture folder holds them)
-> a LabelingJob pre-annotated by that model on the real Label Studio -> an annotator submits the
true shapes through Label Studio's API (boxes, polygons, brush RLE) -> the job completes -> base
v2 = v1 + the labelled images -> the Experiment retrains on v2 and registers model v2.

Classification's loop (with capture from a serving Deployment and pre-annotation through it) is
``test_retraining_loop.py``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers import kiln
from tests.labeling.test_handler import TOKEN_ENV, apply, make_repo, plan, record, spec

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("bentoml")
pytest.importorskip("dvc")

CLASSES = ["square", "circle"]  # draw_shapes' category ids 1 and 2
DET_HP = "{epochs: 1, batch_size: 4, min_size: 64, max_size: 64, learning_rate: 0.01, threshold: 0.0}"
CASES = {  # task: (base format, algorithm, hyperparameters, objective metric)
    "detection": ("coco", "fasterrcnn_mobilenet_v3_large_fpn", DET_HP, "validation_map"),
    "instance-segmentation": ("coco", "maskrcnn_resnet50_fpn", DET_HP, "validation_map"),
    "semantic-segmentation": ("segmentation-json", "deeplabv3_resnet50",
                              "{epochs: 1, batch_size: 3, input_size: 32, learning_rate: 0.02}", "validation_mean_iou"),
}
REGION = {"detection": "rectanglelabels", "instance-segmentation": "polygonlabels",
          "semantic-segmentation": "brushlabels"}


def truth_regions(task: str, anns: list[dict], size: int) -> list[dict]:
    """What an annotator draws for one image: its true shapes, in the job's control."""
    from PIL import ImageDraw

    from kiln.labeling.client import box_region, brush_region, polygon_region

    if task == "detection":
        return [box_region(CLASSES[a["category_id"] - 1], *a["bbox"], size, size) for a in anns]
    if task == "instance-segmentation":
        return [polygon_region(CLASSES[a["category_id"] - 1], list(zip(p[0::2], p[1::2])), size, size)
                for a in anns for p in a["segmentation"]]
    mask = Image.new("L", (size, size), 0)
    for a in anns:  # as draw_shapes paints its masks
        ImageDraw.Draw(mask).polygon(a["segmentation"][0], fill=a["category_id"])
    m = np.asarray(mask)
    return [brush_region(CLASSES[c - 1], m == c, size, size) for c in (1, 2) if (m == c).any()]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", list(CASES))
def test_relabelling_loop(task: str, label_studio, monkeypatch, tmp_path: Path) -> None:
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.labeling_steps import load_predictor, predictions_for, resolve_model
    from kiln.labeling.client import LabelingClient
    from tests.algorithms.conftest import draw_shapes

    fmt, algorithm, hp, metric = CASES[task]
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    name = f"loop-{task[:4]}"
    repo = make_repo(label_studio, name, {
        "specs/base.yaml": spec("Dataset", "base", f"type: image\ntask: {task}\nformat: {fmt}\nsource: {{path: raw/base}}"),
        "specs/captured.yaml": spec("Dataset", "captured", "type: image\nformat: image-folder\n"
                                                           "source: {path: raw/captured}"),
        "specs/exp.yaml": spec("Experiment", "shapes-exp", f"""
dataset: {{name: base, version: latest}}
algorithm: {{name: {algorithm}, hyperparameters: {hp}}}
objective: {{metric: {metric}}}
trigger: {{onNewDatasetVersion: retrain}}
register: {{model: shapes-net}}
"""),
        "specs/job.yaml": spec("LabelingJob", "relabel", f"""
dataset: {{name: captured}}
task: {task}
labels: [square, circle]
annotators: [cy@example.com]
completion: {{rule: all-annotated}}
preAnnotation: {{model: {{experiment: shapes-exp}}, threshold: 0.0}}
output: {{dataset: base}}
"""),
    })
    draw_shapes(repo / "raw/base", {"train": 4, "validation": 2}, seed=1, layout=fmt)
    # new images, unlabelled in the repository; their truth stays with the test (the annotator)
    draw_shapes(tmp_path / "truth", {"train": 4}, seed=2)
    coco = json.loads((tmp_path / "truth/train/_annotations.coco.json").read_text())
    (repo / "raw/captured").mkdir(parents=True)
    for im in coco["images"]:
        shutil.copyfile(tmp_path / "truth/train" / im["file_name"], repo / "raw/captured" / im["file_name"])
    truth = {im["file_name"]: [a for a in coco["annotations"] if a["image_id"] == im["id"]] for im in coco["images"]}
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    result, log = apply(repo)  # base v1, captured v1, model v1, the job's project, pre-annotated
    timings["apply 1"] = time.monotonic() - t0
    assert result.ok, log
    base = json.loads((repo / "data/default/base.versions.json").read_text())
    v1 = base["versions"][0]
    reg = Registry(default_home(repo))
    assert reg.versions("shapes-net") == [1], log
    job = record(repo, "LabelingJob/default/relabel").extra
    assert job["items"] == 4, job

    # the predictions in Label Studio are the registered model's, in the task's regions
    admin = LabelingClient(label_studio.url, label_studio.token)
    pid = job["project"]
    ids = admin.existing_keys(pid)
    assert sorted(ids) == sorted(truth)
    model = resolve_model(load_config_of(repo), type("Ref", (), {"experiment": "shapes-exp"})(), "default")
    predictor = load_predictor(model)
    paths = [repo / "data/default/captured" / k for k in sorted(truth)]
    want = predictions_for(task, predictor.predict(paths), paths, CLASSES, model.tag, 0.0, predictor.categories)
    for key, w in zip(sorted(truth), want):
        got = list(admin.ls.predictions.list(task=ids[key]))
        if w is None:
            assert got == [], key
            continue
        (p,) = got
        assert p.model_version == "shapes-net:v1" and {r["type"] for r in p.result} == {REGION[task]}
        assert len(p.result) == len(w.result)
    assert job["preAnnotation"]["withPredictions"] == sum(w is not None for w in want)
    print(f"\n{task}: {sum(w is not None for w in want)}/4 images pre-annotated by a one-epoch {algorithm}")

    # the annotator submits the true shapes
    uid = admin.users()["cy@example.com"]
    for key, anns in truth.items():
        admin.annotate(ids[key], truth_regions(task, anns, 64), user_id=uid)

    # completion -> base v2 -> retrain -> model v2, applying until the plan is clean
    t0 = time.monotonic()
    rounds = 0
    while True:
        rounds += 1
        result, log = apply(repo)
        assert result.ok, log
        if not plan(repo).has_changes:
            break
        assert rounds < 4, log
    timings["apply until clean"] = time.monotonic() - t0
    base = json.loads((repo / "data/default/base.versions.json").read_text())
    assert len(base["versions"]) == 2, log
    v2 = base["versions"][1]
    assert v2["lineage"]["parent"] == v1["id"] and v2["lineage"]["addedTo"]["items"] == 4
    added: dict[str, int] = {}
    for anns in truth.values():
        for c in {CLASSES[a["category_id"] - 1] for a in anns} if task == "semantic-segmentation" else \
                [CLASSES[a["category_id"] - 1] for a in anns]:
            added[c] = added.get(c, 0) + 1
    counts = {c: n for c, n in v2["per_class_counts"].items() if c != "background"}
    assert counts == {c: v1["per_class_counts"].get(c, 0) + added.get(c, 0) for c in CLASSES}, (v1, v2)
    # every v1 item is still there, and the four new ones in train
    assert sum(v2["per_split_class_counts"]["validation"].values()) == \
        sum(v1["per_split_class_counts"]["validation"].values())
    assert reg.versions("shapes-net") == [1, 2], log
    assert reg.describe("shapes-net", 2)["labels"]["dataset_version"] == v2["id"]
    assert get_algorithm(algorithm).task == task

    # the model's predictions as training data: kiln infer --as-version adds them to base as the
    # task's annotations (boxes, instance masks, mask PNGs), in base's own format
    p = kiln("infer", "shapes-net", "captured", "--out", str(tmp_path / "pred"), "--as-version", "base", cwd=repo,
             timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert "4 item(s), added to v2" in p.stdout, p.stdout
    preds = [json.loads(ln)["prediction"] for ln in (tmp_path / "pred/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4
    if task == "semantic-segmentation":  # a mask of category ids per image, as JSON lists
        assert all(len(m) == 64 and len(m[0]) == 64 and {v for row in m for v in row} <= {0, 1, 2} for m in preds)
    else:
        # the served shape ({<label>: {xmin..}, score}); the new version still gets boxes (and masks)
        assert all(set(d) - {"score"} <= set(CLASSES) and len(d) == 2 for per in preds for d in per), preds
    log3 = json.loads((repo / "data/default/base.versions.json").read_text())
    v3 = log3["versions"][2]
    assert log3["current"] == v3["id"] and v3["lineage"]["addedTo"]["version"] == v2["id"]
    diff = json.loads(kiln("data", "diff", "base", "v2", "v3", "-o", "json", cwd=repo, check=True).stdout)
    assert diff["removed"] == [], diff
    # new images (and their masks); only the annotation index of the format changes
    assert len(diff["added"]) == (8 if task == "semantic-segmentation" else 4), diff
    assert all(f.endswith(".json") for f in diff["changed"]), diff
    assert all(d["to"] >= d["from"] for d in diff["classes"].values()), diff
    if task != "semantic-segmentation":
        n_objects = sum(len(per) for per in preds)
        coco3 = json.loads((repo / "data/default/base" / next(f for f in diff["changed"])).read_text())
        assert len(coco3["annotations"]) >= n_objects
    print(f"{task}: base v1 {v1['per_class_counts']} -> v2 {v2['per_class_counts']}; {rounds} round(s); "
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def load_config_of(repo: Path):
    from kiln.config import load_config

    return load_config(repo)
