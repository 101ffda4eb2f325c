"""Issue #14: every algorithm of the catalogue end to end, as a user runs it.

Parametrised over ``kiln.algorithms.registry.ALGORITHMS`` (nothing listed by hand: a new algorithm
joins the suite, and a task without data here fails loudly). For each algorithm, on tiny generated
data in the seeds' layouts (EasyMaker's folders, its segmentation JSON lists, COCO; a CSV):

1. train: one Experiment per algorithm, one ``kiln apply`` per task's repository (16 drawn 32 x 32
   images or 60 rows, 1 epoch, the smallest sizes the hyperparameters allow);
2. register: ONNX with its parity check wherever the algorithm has an exporter, else native
   (``NATIVE`` says why); the record, the registry and ``kiln describe`` are checked;
3. ``kiln infer`` on the test split (the CLI command, run in this process: a subprocess per
   algorithm would import torch 36 times);
4. deploy: a real BentoML server (``ManagedServer``, what a Deployment's rollout starts) for the
   first model of each serving family (task, ONNX or native, algorithm module: what decides how a
   server process loads and answers it); the family's other models answer through the same
   serving engine in this process (``load_engine`` -> decode -> predict -> format, the calls the
   server makes), since a server start costs 8-11 s (14 servers instead of 37);
5. one request in EasyMaker's format (``{"instances": [{"data": <base64>}]}`` / rows);
6. ``kiln infer --as-version`` once per task (the first algorithm of each): the new dataset
   version holds the predictions as the task's labels, boxes, masks or label column;
   ``kiln report`` shows a segmenter's per-category metrics.

Every prediction, served or batch, goes through ``check_predictions``: the response contract lives
in that one function. Times: ``E2E`` lines on stdout (``-s``) per stage and algorithm.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import kiln, write

pytest.importorskip("bentoml")
pytest.importorskip("dvc")
pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from kiln.algorithms.registry import ALGORITHMS, describe  # noqa: E402

# the algorithms registered native, and why (every other one is ONNX with its parity check;
# test_every_native_registration_has_a_reason keeps this list true)
_TV = "torchvision detector: its ONNX graph takes one unbatched image, a Deployment sends batches; TorchScript"
NATIVE = {
    "easymaker-object-detection": "DETR's post-processing (100 queries, argmax, box decode) has no ONNX exporter; "
                                  "served as TorchScript with it folded in",
    "fasterrcnn_resnet50_fpn": _TV, "fasterrcnn_mobilenet_v3_large_fpn": _TV, "ssd300_vgg16": _TV,
    "maskrcnn_resnet50_fpn": _TV,
}

# algorithms that cannot run here, each with the reason (an xfail, never a silent skip)
CANNOT_RUN: dict[str, str] = {}

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


# ---------------------------------------------------------------------------------- the contract --
def check_predictions(task: str, body: Any, n: int, labels: list[str] | None = None) -> list[Any]:
    """The response contract, in one place: ``body`` (a server's JSON or the list of ``kiln
    infer``'s predictions) holds one prediction per instance, each of the task's shape. Returns
    them. Servers answer ``{"predictions": [P_1..P_n]}`` for every task (one entry per instance);
    ``kiln infer`` writes each prediction in the same shape (``kiln.bento.predictions``)."""
    preds = body["predictions"] if isinstance(body, dict) and "predictions" in body else body
    assert isinstance(preds, list) and len(preds) == n, (task, n, str(body)[:300])
    valid = set(labels or [])
    for p in preds:
        if task == "classification":
            if isinstance(p, list):  # EasyMaker: [{"score", "label"}], best first
                assert p and all(set(d) == {"score", "label"} for d in p), p
                scores = [d["score"] for d in p]
                assert all(0.0 <= s <= 1.0 + 1e-6 for s in scores) and scores == sorted(scores, reverse=True), p
                assert not valid or {str(d["label"]) for d in p} <= valid, (p, valid)
            else:  # a table row: {"label", "score"} (no score from a model without probabilities)
                assert isinstance(p, dict) and "label" in p and set(p) <= {"label", "score"}, p
                assert "score" not in p or 0.0 <= p["score"] <= 1.0 + 1e-6, p
                assert not valid or str(p["label"]) in valid, (p, valid)
        elif task == "regression":
            assert isinstance(p, (int, float)) and math.isfinite(p), p
        elif task == "clustering":  # k-means: the distance to the centre; a mixture: its probability
            assert isinstance(p, dict) and isinstance(p["cluster"], int) and p["cluster"] >= 0, p
            assert set(p) in ({"cluster", "distance"}, {"cluster", "score"}), p
            assert p.get("distance", 0.0) >= 0.0 and 0.0 <= p.get("score", 1.0) <= 1.0 + 1e-6, p
        elif task == "dimension-reduction":
            assert isinstance(p, list) and p and all(isinstance(v, (int, float)) for v in p), p
        elif task in ("detection", "instance-segmentation"):
            assert isinstance(p, list), p
            for d in p:
                label, box, score = _box(d)
                assert not valid or label in valid, (label, valid)
                assert 0.0 <= score <= 1.0 + 1e-6 and box[0] <= box[2] and box[1] <= box[3], d
        elif task == "semantic-segmentation":
            assert isinstance(p, list) and p and all(isinstance(r, list) and len(r) == len(p[0]) for r in p)
            ids = {int(v) for r in p for v in r}
            assert not valid or ids <= {int(i) for i in valid}, (sorted(ids), valid)
        else:
            raise AssertionError(f"no contract for task {task!r}")
    return preds


def _box(d: dict) -> tuple[str, list[float], float]:
    """A detection as (label, [xmin, ymin, xmax, ymax], score), from EasyMaker's
    ``{label: {xmin..}, "score"}``."""
    (label,) = set(d) - {"score"}
    b = d[label]
    return label, [b["xmin"], b["ymin"], b["xmax"], b["ymax"]], float(d["score"])


# ---------------------------------------------------------------------------------- tiny data -----
def _png(arr: Any, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _noisy(colour: tuple[int, int, int], seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return np.clip(np.full((32, 32, 3), colour) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)


SPLITS = (("train", 8), ("validation", 4), ("test", 4))  # 16 images


def _classification(root: Path) -> list[str]:
    """EasyMaker: folder/{train,validation,test}/{label}/image.png, colours as classes."""
    k = 0
    for split, n in SPLITS:
        for _ in range(n):
            name = list(COLOURS)[k % 3]
            _png(_noisy(COLOURS[name], k), root / split / name / f"{k:04d}.png")
            k += 1
    return sorted(COLOURS)


def _shapes(seed: int) -> tuple[Any, list[tuple[str, list[int]]]]:
    """A noisy background with 1-2 coloured squares, and [(colour, [x, y, w, h])]."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (32, 32, 3))
    boxes = []
    for j in range(1 + seed % 2):
        name = list(COLOURS)[(seed + j) % 3]
        w = int(rng.integers(7, 12))
        x, y = (2 + 16 * j + int(rng.integers(0, 4)), int(rng.integers(2, 32 - w - 2)))
        arr[y:y + w, x:x + w] = COLOURS[name]
        boxes.append((name, [x, y, w, w]))
    return arr, boxes


def _coco(root: Path, polygons: bool) -> list[str]:
    """EasyMaker / Roboflow COCO: folder/{split}/_annotations.coco.json beside the images."""
    cats = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(COLOURS)]
    cid = {c["name"]: c["id"] for c in cats}
    k = 0
    for split, n in SPLITS:
        images, anns = [], []
        for i in range(n):
            arr, boxes = _shapes(k)
            _png(arr, root / split / f"{k:04d}.png")
            images.append({"id": i + 1, "file_name": f"{k:04d}.png", "width": 32, "height": 32})
            for name, (x, y, w, h) in boxes:
                a = {"id": len(anns) + 1, "image_id": i + 1, "category_id": cid[name], "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0}
                if polygons:
                    a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                anns.append(a)
            k += 1
        (root / split / "_annotations.coco.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "categories": cats, "images": images, "annotations": anns}))
    return sorted(COLOURS)


def _segmentation(root: Path) -> list[str]:
    """EasyMaker SegFormer: folder/{split}/{split}.json lists of {image, seg_map}, and
    resources/id2lable.json (sic, as EasyMaker's documents spell it)."""
    k = 0
    for split, n in SPLITS:
        entries = []
        for _ in range(n):
            arr, boxes = _shapes(k)
            mask = np.zeros((32, 32), np.uint8)
            for name, (x, y, w, h) in boxes:
                mask[y:y + h, x:x + w] = list(COLOURS).index(name) + 1
            _png(arr, root / split / "images" / f"{k:04d}.png")
            _png(mask, root / split / "annotations" / f"{k:04d}.png")
            entries.append({"image": f"images/{k:04d}.png", "seg_map": f"annotations/{k:04d}.png"})
            k += 1
        (root / split / f"{split}.json").write_text(json.dumps(entries))
    (root / "resources").mkdir(parents=True)
    ids = {"0": "unlabeled", **{str(i + 1): c for i, c in enumerate(COLOURS)}}
    (root / "resources" / "id2lable.json").write_text(json.dumps(ids))
    return sorted(ids)  # served masks hold label ids


def _table(root: Path, task: str) -> list[str] | None:
    rng = np.random.default_rng(3)
    n = 60
    x = rng.normal(size=(n, 3))
    cols = "a,b,c"
    if task == "classification":
        y = np.array(["lo", "mid", "hi"])[np.digitize(x[:, 0] + 0.3 * x[:, 1], [-0.5, 0.5])]
        cols += ",kind"
    elif task == "regression":
        y = np.round(2 * x[:, 0] - x[:, 2] + rng.normal(0, 0.1, n), 4)
        cols += ",value"
    else:
        y = None
    lines = [cols] + [",".join([*(f"{v:.4f}" for v in row), *([str(y[i])] if y is not None else [])])
                      for i, row in enumerate(x)]
    root.mkdir(parents=True)
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return ["hi", "lo", "mid"] if task == "classification" else None


# the suite's task of each algorithm -> (dataset spec lines, data builder, objective, tiny hyperparameters)
TASKS: dict[str, dict[str, Any]] = {
    "tabular-classification": {"task": "classification", "data": lambda r: _table(r, "classification"),
                               "spec": "type: tabular\ntask: classification\nformat: csv\nlabel: kind\n"
                                       "splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}",
                               "metric": "validation_accuracy"},
    "tabular-regression": {"task": "regression", "data": lambda r: _table(r, "regression"),
                           "spec": "type: tabular\ntask: regression\nformat: csv\nlabel: value\n"
                                   "splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}",
                           "metric": "validation_r2"},
    "tabular-clustering": {"task": "clustering", "data": lambda r: _table(r, "clustering"),
                           "spec": "type: tabular\ntask: clustering\nformat: csv\n"
                                   "splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}",
                           "metric": "validation_silhouette"},
    "tabular-dimension-reduction": {"task": "dimension-reduction", "data": lambda r: _table(r, "dimension-reduction"),
                                    "spec": "type: tabular\ntask: dimension-reduction\nformat: csv\n"
                                            "splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}",
                                    "metric": "validation_explained_variance"},
    "image-classification": {"task": "classification", "data": _classification,
                             "spec": "type: image\ntask: classification", "metric": "validation_accuracy"},
    "image-detection": {"task": "detection", "data": lambda r: _coco(r, False),
                        "spec": "type: image\ntask: detection", "metric": "validation_map"},
    "image-instance-segmentation": {"task": "instance-segmentation", "data": lambda r: _coco(r, True),
                                    "spec": "type: image\ntask: instance-segmentation", "metric": "validation_map"},
    "image-semantic-segmentation": {"task": "semantic-segmentation", "data": _segmentation,
                                    "spec": "type: image\ntask: semantic-segmentation",
                                    "metric": "validation_mean_iou"},
}

# the smallest that trains: 1 epoch, 32-px inputs, few trees / iterations
TINY: dict[str, dict[str, Any]] = {
    "mlp": {"max_iter": 20, "hidden_units": 8}, "mlp_regressor": {"max_iter": 20, "hidden_units": 8},
    "random_forest": {"n_estimators": 5}, "random_forest_regressor": {"n_estimators": 5},
    "gradient_boosting": {"n_estimators": 5}, "xgboost": {"n_estimators": 5}, "xgboost_regressor": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 5, "min_samples_leaf": 5},
    "hist_gradient_boosting_regressor": {"max_iter": 5, "min_samples_leaf": 5},
    "kmeans": {"n_clusters": 3}, "gaussian_mixture": {"n_components": 3}, "pca": {"n_components": 2},
    "truncated_svd": {"n_components": 2},
    "keras_resnet50": {"epochs": 1, "input_size": 32, "batch_size": 8},
    "keras_small_cnn": {"epochs": 1, "input_size": 32, "batch_size": 8, "filters": 4, "dense_units": 8},
    "easymaker-image-classification": {"num_train_epochs": 1, "input_size": 32, "per_device_train_batch_size": 8,
                                       "learning_rate": 0.001},
    "easymaker-semantic-segmentation": {"num_train_epochs": 1, "image_size": 32, "per_device_train_batch_size": 4},
    "tiny_centernet": {"epochs": 1, "batch_size": 4, "input_size": 32, "threshold": 0.0},
    "easymaker-object-detection": {"num_train_epochs": 1, "image_size": 32, "per_device_train_batch_size": 4,
                                   "threshold": 0.0},
}
TORCH_CLS = {"epochs": 1, "input_size": 32, "batch_size": 8}
TORCH_DET = {"epochs": 1, "batch_size": 4, "min_size": 32, "max_size": 64, "threshold": 0.0}
TORCH_SEG = {"epochs": 1, "input_size": 32, "batch_size": 4}


def suite_task(name: str) -> str:
    d = describe(name)
    return f"{d['data_type']}-{d['task']}" if d["data_type"] == "image" else f"tabular-{d['task']}"


def hyperparameters(name: str) -> dict[str, Any]:
    if name in TINY:
        return TINY[name]
    d = describe(name)
    if d["framework"] == "pytorch":
        return {"classification": TORCH_CLS, "semantic-segmentation": TORCH_SEG}.get(d["task"], TORCH_DET)
    return {}


def slug(name: str) -> str:
    return name.replace("_", "-")


def exporter(name: str) -> bool:
    """Whether ``name`` registers as ONNX: it has an exporter whose graph the serving layer runs."""
    from kiln.algorithms.base import Algorithm
    from kiln.algorithms.registry import get_algorithm_class

    cls = get_algorithm_class(name)
    return cls.export_onnx is not Algorithm.export_onnx and getattr(cls, "onnx_servable", True)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_native_registration_has_a_reason(name: str) -> None:
    assert exporter(name) == (name not in NATIVE), (name, "ONNX" if exporter(name) else "native", NATIVE.get(name))


# ---------------------------------------------------------------------------------- repos ---------
TIMES: dict[str, dict[str, float]] = {}


def _build(root: Path, key: str) -> dict[str, Any]:
    from tests.test_experiment_handler import git_repo

    t = TASKS[key]
    repo = git_repo(root / key)
    labels = t["data"](repo / "raw" / "data")
    files = {"specs/data.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: data}\nspec:\n"
                                + "".join(f"  {ln}\n" for ln in (t["spec"] + "\nsource: {path: raw/data}").splitlines())}
    names = [n for n in ALGORITHMS if suite_task(n) == key and n not in CANNOT_RUN]
    for n in names:
        hp = json.dumps(hyperparameters(n))
        export = ", export: [onnx]" if exporter(n) else ""
        files[f"specs/{slug(n)}.yaml"] = (
            f"apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: {slug(n)}}}\nspec:\n"
            f"  mode: run\n  dataset: {{name: data}}\n  algorithm: {{name: {n}, hyperparameters: {hp}}}\n"
            f"  objective: {{metric: {t['metric']}}}\n  register: {{model: {slug(n)}{export}}}\n")
    write(repo, files)
    t0 = time.perf_counter()
    res = kiln("apply", cwd=repo, timeout=1800)
    took = time.perf_counter() - t0
    done = re.findall(r"^  (Experiment/\S+): (.+)$", res.stdout, re.M)
    print(f"\nE2E apply {key}: {len(names)} experiments in {took:.1f} s; " + "; ".join(f"{k} {v}" for k, v in done))
    return {"repo": repo, "labels": labels, "apply": res, "seconds": took, "count": len(names)}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One repository per task, built (and applied once, every experiment of the task) on first use."""
    root = tmp_path_factory.mktemp("builtins")
    built: dict[str, dict[str, Any]] = {}

    def get(key: str) -> dict[str, Any]:
        if key not in built:
            built[key] = _build(root, key)
        return built[key]

    yield get
    if TIMES:
        total = sum(sum(v.values()) for v in TIMES.values())
        print("\nE2E per algorithm (apply share + serve + infer, s): "
              + ", ".join(f"{k}={sum(v.values()):.1f}" for k, v in sorted(TIMES.items())) + f"; total {total:.1f}")


def _instances(repo: Path, task: str, n: int) -> list[dict[str, Any]]:
    """``n`` instances in EasyMaker's request format, from the repository's test split."""
    data = repo / "raw" / "data"
    if task in ("classification", "regression", "clustering", "dimension-reduction") and (data / "data.csv").is_file():
        import csv

        with open(data / "data.csv") as f:
            rows = list(csv.DictReader(f))[-n:]
        return [{k: float(v) for k, v in r.items() if k in ("a", "b", "c")} for r in rows]
    paths = sorted(p for p in (data / "test").rglob("*.png") if "annotations" not in p.parts)[:n]
    return [{"data": base64.b64encode(p.read_bytes()).decode()} for p in paths]


def family(name: str) -> tuple[str, bool, str]:
    from kiln.algorithms.registry import get_algorithm_class

    return suite_task(name), exporter(name), get_algorithm_class(name).__module__


def served_by_a_server(name: str) -> bool:
    """The first algorithm of its serving family gets a real server process."""
    return name == min(n for n in ALGORITHMS if family(n) == family(name) and n not in CANNOT_RUN)


def _engine(repo: Path, name: str, instances: list[dict[str, Any]]) -> Any:
    """What the server answers, through its serving engine in this process."""
    from kiln.bento.runtime import load_engine
    from tests.test_experiment_handler import registry

    eng = load_engine(registry(repo).path(name, 1), name=name, version=1)
    xs, metas = zip(*(eng.decode(inst, i) for i, inst in enumerate(instances)))
    return {"predictions": [eng.format(y, m) for y, m in zip(eng.predict(list(xs)), metas)]}


def _serve(repo: Path, name: str, instances: list[dict[str, Any]]) -> Any:
    import httpx

    from kiln.bento.config import ServeConfig
    from kiln.bento.server import ManagedServer

    srv = ManagedServer(ServeConfig(deployment=name, model=name, version=1, public=True), repo)
    try:
        srv.start()
        srv.wait_ready(300)
        r = httpx.post(f"{srv.url}/predict", json={"instances": instances}, timeout=120)
        assert r.status_code == 200, (r.status_code, r.text[:500], srv.log_file.read_text()[-2000:])
        return r.json()
    finally:
        srv.stop()


def _cli(repo: Path, *args: str) -> str:
    """A kiln command in this process (a subprocess imports kiln again: 2-3 s each)."""
    from click.testing import CliRunner

    from kiln.cli import cli

    res = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert res.exit_code == 0, (args, res.output, repr(res.exception))
    return res.output


def _infer(repo: Path, name: str, out: Path, as_version: str | None = None) -> list[dict[str, Any]]:
    from click.testing import CliRunner

    from kiln.cli import cli

    extra = ["--as-version", as_version] if as_version else []
    res = CliRunner().invoke(cli, ["-C", str(repo), "infer", name, "data", "--split", "test", "--out", str(out), *extra])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    if as_version:
        assert f"dataset default/{as_version} v1" in res.output, res.output
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def first_of_task(name: str) -> bool:
    """One algorithm per task files its predictions as a dataset (``--as-version``): the writer is
    the task's, not the algorithm's, so once is enough."""
    return name == min(n for n in ALGORITHMS if suite_task(n) == suite_task(name) and n not in CANNOT_RUN)


def check_as_version(repo: Path, task: str, new: str, lines: list[dict[str, Any]]) -> None:
    """The new dataset version holds the test split's items with the predictions as the task's
    annotations: labels, a table's label column, boxes (and instance masks), mask PNGs."""
    from collections import Counter

    from kiln.data.merge import load_as

    folder = repo / "data" / "default" / new
    preds = [line["prediction"] for line in lines]
    if (folder / "data.csv").is_file():
        import csv

        with open(folder / "data.csv") as f:
            rows = list(csv.DictReader(f))
        col = {"classification": "kind", "regression": "value", "clustering": "cluster"}[task]
        want = [p["label"] if task == "classification" else p["cluster"] if task == "clustering" else p for p in preds]
        got = [r[col] for r in rows]
        assert set(rows[0]) >= {"a", "b", "c"}, rows[0]  # every feature kept beside the predictions
        assert len(got) == len(want) and all(
            float(g) == pytest.approx(w) if task == "regression" else g == str(w) for g, w in zip(got, want)), (got, want)
        return
    content = load_as(folder, task)
    assert len(content.items) == len(lines), (len(content.items), len(lines))
    if task == "classification":
        assert Counter(it.label for it in content.items) == Counter(p[0]["label"] for p in preds)
    elif task in ("detection", "instance-segmentation"):
        filed = Counter(content.categories[a.category_id] for it in content.items for a in it.annotations)
        assert filed == Counter(_box(d)[0] for p in preds for d in p), (filed, preds)
        if task == "instance-segmentation":
            assert all(a.rle or a.polygons for it in content.items for a in it.annotations)
    else:  # a mask PNG of category ids per image, the prediction's
        from PIL import Image

        masks = {Path(it.path).name: np.asarray(Image.open(content.abspath(it.mask))) for it in content.items}
        for line in lines:
            assert masks[Path(line["item"]).name].tolist() == line["prediction"], line["item"]


# ---------------------------------------------------------------------------------- the suite -----
@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test of a task applies all of the task's experiments
@pytest.mark.parametrize("name", sorted(ALGORITHMS, key=lambda n: (suite_task(n), n)))
def test_builtin_end_to_end(name: str, repos: Any, tmp_path: Path) -> None:
    from tests.test_experiment_handler import record, registry

    if name in CANNOT_RUN:
        pytest.xfail(CANNOT_RUN[name])
    key = suite_task(name)
    assert key in TASKS, f"algorithm {name}: no tiny data for task {key}; add it to TASKS"
    built = repos(key)
    repo, task, labels = built["repo"], TASKS[key]["task"], built["labels"]
    times = TIMES.setdefault(name, {"apply": built["seconds"] / built["count"]})
    exp = slug(name)

    # 1-2. trained and registered, with the format the algorithm allows and its metrics
    rec = record(repo, exp)
    out = built["apply"].stdout + built["apply"].stderr
    assert (rec["extra"] or {}).get("registered"), (rec.get("conditions"), out[-3000:])
    mv = registry(repo).describe(exp, 1)
    fw = mv["labels"]["framework"]
    if exporter(name):
        assert fw == "onnx", fw
        onnx = mv["metadata"]["onnx"]
        assert onnx["checked"] and onnx["samples"] >= 2, onnx  # its tolerance is relative to the logits
    else:
        assert fw in ("torch", "sklearn", "tensorflow"), fw
    if task in ("clustering", "dimension-reduction") and fw == "onnx":  # no label: a, b and c are features (#24)
        import onnx as onnx_lib

        (inp,) = onnx_lib.load(str(next(registry(repo).path(exp, 1).glob("*.onnx")))).graph.input
        assert inp.type.tensor_type.shape.dim[1].dim_value == 3, inp
    metric = TASKS[key]["metric"]
    best = rec["extra"]["best"]
    assert best["metric"] == metric
    desc = _cli(repo, "describe", f"Experiment/{exp}")
    if describe(name)["data_type"] == "image":  # epoch/step loops state which weights they return
        assert best["checkpoint"]["kind"] in ("best", "last") and "Registered weights:" in desc, desc
    if task == "semantic-segmentation":
        cats = best["perCategory"]
        assert cats["split"] == "test" and len(cats["iou"]) == len(cats["labels"]) == len(cats["accuracy"]) == 4
        assert "Per category (test split):" in desc and "unlabeled" in desc, desc
        from kiln.config import load_config
        from kiln.controller.report import build

        md = "\n".join(build(load_config(repo)).lines)  # kiln report, from the recorded results
        sec = md[md.index(f"## Experiment default/{exp}"):]
        assert "### Per category (test split)" in sec and "| unlabeled |" in sec, sec[:2000]

    # 3. kiln infer over the test split
    t0 = time.perf_counter()
    new = f"pred-{exp}" if first_of_task(name) and task != "dimension-reduction" else None
    lines = _infer(repo, exp, tmp_path / "pred", as_version=new)
    times["infer"] = time.perf_counter() - t0
    assert lines and all(line["split"] == "test" for line in lines)
    check_predictions(task, [line["prediction"] for line in lines], len(lines), labels)
    if new:
        check_as_version(repo, task, new, lines)
    elif task == "dimension-reduction" and first_of_task(name):  # components are no label: refused, clearly
        res = kiln("infer", exp, "data", "--as-version", "nope", cwd=repo)
        assert res.returncode == 1 and "cannot become a dataset version" in res.stderr, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and not (repo / "data/default/nope").exists()

    # 4-5. a real server, one request of two instances in EasyMaker's format
    t0 = time.perf_counter()
    served = (_serve if served_by_a_server(name) else _engine)(repo, exp, _instances(repo, task, 2))
    times["serve"] = time.perf_counter() - t0
    preds = check_predictions(task, served, 2, labels)
    if task == "semantic-segmentation":
        assert len(preds[0]) == len(preds[0][0]) == 32  # the model's input size, as EasyMaker resizes to 512
    how = "server" if served_by_a_server(name) else "engine"
    print(f"\nE2E {name}: serve ({how}) {times['serve']:.1f} s, infer {times['infer']:.1f} s, framework {fw}")
