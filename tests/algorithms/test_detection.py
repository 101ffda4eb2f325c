"""torchvision detection / instance / semantic segmentation on drawn shapes (COCO and
segmentation-json layouts loaded through kiln.data)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from kiln.algorithms.base import AlgorithmError, HistoryCallback  # noqa: E402
from kiln.algorithms.registry import get_algorithm  # noqa: E402

DET = {"epochs": 2, "batch_size": 8, "min_size": 64, "max_size": 64, "learning_rate": 0.01}
SEG = {"epochs": 4, "batch_size": 4, "input_size": 64, "learning_rate": 0.02}


def _test_paths(data, n: int = 3) -> list[Path]:
    return [data.content.abspath(it.path) for it in data.items("test")[:n]]


def test_fasterrcnn_trains_a_few_iterations_and_reports_coco_map(shapes_coco, tmp_path: Path) -> None:
    algo = get_algorithm("fasterrcnn_resnet50_fpn")
    hist = HistoryCallback()
    t0 = time.perf_counter()
    model = algo.train(shapes_coco, DET, callbacks=hist, workdir=tmp_path)
    steps = 2  # 8 train images, batch 8, 2 epochs
    print(f"\nfasterrcnn: {(time.perf_counter() - t0) / steps:.2f} s per step (incl. validation), "
          f"history {[(s, round(m['train_loss'], 3), round(m['validation_map'], 4)) for s, m in hist.history]}")
    assert [s for s, _ in hist.history] == [1, 2]
    for _, m in hist.history:
        assert {"train_loss", "validation_map", "validation_ap50", "validation_ap75"} <= set(m)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert model.meta["category_ids"] == [1, 2] and model.meta["classes"] == ["square", "circle"]

    ev = algo.evaluate(model, shapes_coco, "test")
    print(f"fasterrcnn test: {dict(ev)}")
    assert set(ev) == {"test_map", "test_ap50", "test_ap75"}
    assert all(0.0 <= v <= 1.0 for v in ev.values())

    # predictions: box lists per image, above the threshold, labels by name; save/load keeps them
    paths = _test_paths(shapes_coco)
    model.hyperparameters["threshold"] = 0.0
    preds = algo.predict(model, paths)
    assert len(preds) == 3 and any(preds)
    for d in (d for per in preds for d in per):
        assert d["label"] in ("square", "circle") and d["category_id"] in (1, 2)
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and 0 <= d["score"] <= 1
    algo.save(model, tmp_path / "saved")
    again = algo.load(tmp_path / "saved")
    assert again.hyperparameters["threshold"] == 0.0
    assert [[d["box"] for d in p] for p in algo.predict(again, paths)] == [[d["box"] for d in p] for p in preds]
    model.hyperparameters["threshold"] = 1.0
    assert algo.predict(model, paths) == [[], [], []]



@pytest.mark.slow
def test_ssd300_and_maskrcnn_train_one_epoch(shapes_coco, shapes_instances, tmp_path: Path) -> None:
    from kiln.algorithms.base import TrainData

    def cut(td):
        return TrainData(td.content.model_copy(update={"items": [it for s in ("train", "validation", "test")
                                                                 for it in td.items(s)[:4]]}))

    ssd = get_algorithm("ssd300_vgg16")
    m = ssd.train(cut(shapes_coco), {"epochs": 1, "batch_size": 4, "learning_rate": 0.001})
    assert m.history[0][1]["train_loss"] > 0 and "validation_map" in m.history[0][1]
    assert len(ssd.predict(m, _test_paths(shapes_coco, 2))) == 2

    mask = get_algorithm("maskrcnn_resnet50_fpn")
    inst = cut(shapes_instances)
    m = mask.train(inst, {**DET, "epochs": 1})
    ev = mask.evaluate(m, inst, "test")
    assert {"test_bbox_map", "test_segm_map", "test_segm_ap50", "test_map"} <= set(ev)
    assert ev["test_map"] == ev["test_segm_map"]
    m.hyperparameters["threshold"] = 0.0
    m.native.roi_heads.score_thresh = 0.0
    # a one-epoch model may leave no box after torchvision's small-box/NMS filters, so only the shape is checked
    found = [d for per in mask.predict(m, _test_paths(shapes_instances, 2)) for d in per]
    assert all(d["mask"]["size"] == [64, 64] and isinstance(d["mask"]["counts"], str) for d in found)
    with pytest.raises(AlgorithmError, match="cannot train on a detection dataset"):
        mask.train(cut(shapes_coco), DET)


def test_deeplabv3_reports_mean_iou(shapes_segmentation, tmp_path: Path) -> None:
    algo = get_algorithm("deeplabv3_resnet50")
    hist = HistoryCallback()
    model = algo.train(shapes_segmentation, {**SEG, "epochs": 1, "input_size": 48}, callbacks=hist, workdir=tmp_path)
    assert {"validation_mean_iou", "validation_mean_accuracy", "validation_overall_accuracy"} <= set(hist.history[0][1])
    ev = algo.evaluate(model, shapes_segmentation, "test")
    print(f"\ndeeplabv3 1 epoch: {dict(ev)}")
    assert {"test_mean_iou", "test_mean_accuracy", "test_overall_accuracy"} == set(ev)
    assert ev.artifacts["labels"] == ["background", "square", "circle"]
    assert len(ev.artifacts["per_category_iou"]) == 3 and len(ev.artifacts["per_category_accuracy"]) == 3
    pred = algo.predict(model, _test_paths(shapes_segmentation, 2))
    assert pred[0].shape == (64, 64) and set(pred[0].ravel().tolist()) <= {0, 1, 2}
    assert (tmp_path / "checkpoints" / "epoch-0001.pt").is_file()


@pytest.mark.slow
def test_deeplabv3_learns_drawn_masks(tmp_path: Path) -> None:
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load
    from tests.algorithms.conftest import draw_shapes

    data = TrainData(load(draw_shapes(tmp_path / "d", {"train": 32, "validation": 4, "test": 8}, seed=1,
                                      layout="segmentation-json"), task="semantic-segmentation"))
    algo = get_algorithm("deeplabv3_resnet50")
    hist = HistoryCallback()
    t0 = time.perf_counter()
    model = algo.train(data, {**SEG, "epochs": 6}, callbacks=hist)
    elapsed = time.perf_counter() - t0
    ev = algo.evaluate(model, data, "test")
    print(f"\ndeeplabv3: {elapsed / (6 * 8):.2f} s per step; validation mean_iou per epoch "
          f"{[round(m['validation_mean_iou'], 3) for _, m in hist.history]}; test {dict(ev)}")
    # background alone would give mean IoU <= 1/3; the model must find shapes too
    assert ev["test_mean_iou"] > 0.4, dict(ev)


def test_fcn_segmentation_onnx_parity_and_save_load(shapes_segmentation, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    algo = get_algorithm("fcn_resnet50")
    hp = {**SEG, "epochs": 1, "input_size": 48}
    algo.train(shapes_segmentation, hp, workdir=tmp_path / "run")
    # resume: the category mapping travels in the checkpoint (loaded with weights_only=True)
    seen = HistoryCallback()
    model = algo.train(shapes_segmentation, {**hp, "epochs": 2}, callbacks=seen, resume_from=tmp_path / "run" / "checkpoints")
    assert [s for s, _ in seen.history] == [2] and [s for s, _ in model.history] == [1, 2]
    assert model.meta["category_ids"] == [0, 1, 2]
    paths = _test_paths(shapes_segmentation, 2)
    report = export_and_check(algo, model, tmp_path / "fcn.onnx", paths, tolerance=1e-3)
    assert report is not None and report.passed, report
    algo.save(model, tmp_path / "saved")
    again = algo.load(tmp_path / "saved")
    assert all((a == b).all() for a, b in zip(algo.predict(again, paths), algo.predict(model, paths)))


@pytest.mark.slow
def test_fasterrcnn_onnx_parity(shapes_coco, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    algo = get_algorithm("fasterrcnn_resnet50_fpn")
    model = algo.train(shapes_coco, {**DET, "epochs": 1})
    model.native.roi_heads.score_thresh = 0.0  # keep detections even from a barely trained model
    sample = _test_paths(shapes_coco, 1)
    t0 = time.perf_counter()
    report = export_and_check(algo, model, tmp_path / "frcnn.onnx", sample, tolerance=1e-3)
    print(f"\nfasterrcnn ONNX export + check {time.perf_counter() - t0:.1f}s: {report.summary() if report else None}")
    assert report is not None and report.passed
    assert len(algo.native_outputs(model, sample)[0]) > 0  # parity on real boxes, not on two empty lists


def test_coco_evaluation_of_a_perfect_detector_is_1(shapes_instances) -> None:
    """The evaluation path (label <-> category id, xyxy -> xywh boxes, masks -> RLE) checked with a
    stand-in network that answers each test image with its ground truth: mAP must be exactly 1."""
    from kiln.algorithms.detection import DetectionDataset

    algo = get_algorithm("maskrcnn_resnet50_fpn")
    meta = {"category_ids": [1, 2], "classes": ["square", "circle"]}
    truth = {}
    for img, t in DetectionDataset(shapes_instances, "test", {1: 1, 2: 2}, masks=True):
        truth[float(img.sum())] = {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                                   "masks": t["masks"][:, None].float()}

    class GroundTruth(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the evaluation a device to read

        def forward(self, images: list) -> list:
            return [truth[float(x.sum())] for x in images]

    hp = algo.hyperparameters({"batch_size": 2})
    ev = algo.evaluate_native(GroundTruth(), shapes_instances, "test", meta, hp)
    assert ev["test_bbox_map"] == pytest.approx(1.0) and ev["test_segm_map"] == pytest.approx(1.0)
    shifted = {k: {**v, "boxes": v["boxes"] + 2.0} for k, v in truth.items()}
    truth.update(shifted)  # boxes moved by 2 px: no longer perfect at the strict IoUs
    ev = get_algorithm("fasterrcnn_resnet50_fpn").evaluate_native(GroundTruth(), shapes_instances, "test", meta, hp)
    assert 0.0 < ev["test_map"] < 1.0 and ev["test_ap75"] < 1.0


def test_wrong_dataset_task_is_a_clear_error(digits_root: Path, shapes_coco) -> None:
    from tests.algorithms.conftest import digits_data

    with pytest.raises(AlgorithmError, match="cannot train on a classification dataset"):
        get_algorithm("fasterrcnn_resnet50_fpn").train(digits_data(digits_root, {"train": 4}), DET)
    with pytest.raises(AlgorithmError, match="cannot train on a detection dataset"):
        get_algorithm("deeplabv3_resnet50").train(shapes_coco, SEG)
    with pytest.raises(AlgorithmError, match="batch_size"):
        get_algorithm("deeplabv3_resnet50").hyperparameters({"batch_size": 1})


def test_torchvision_detector_serves_through_torchscript(shapes_coco, tmp_path: Path) -> None:
    """A scripted (not traced) detector: any batch size; labels back to class indices; EasyMaker format."""
    from tests.algorithms.test_easymaker import _serve

    algo = get_algorithm("fasterrcnn_mobilenet_v3_large_fpn")
    model = algo.train(shapes_coco, {**DET, "epochs": 1})
    model.hyperparameters["threshold"] = 0.0
    model.native.roi_heads.score_thresh = 0.0  # one epoch scores low: keep every box, so there is something to compare
    paths = _test_paths(shapes_coco)
    served = _serve(algo, model, tmp_path / "serve", paths)
    native = algo.predict(model, paths)
    assert any(native) and [len(p) for p in served] == [len(p) for p in native]
    for per, nat in zip(served, native):
        for d, n in zip(per, sorted(nat, key=lambda d: -d["score"])):
            (label,) = set(d) - {"score"}
            assert label == n["label"] and abs(d["score"] - n["score"]) < 1e-4
            b = d[label]
            assert max(abs(a - v) for a, v in zip((b["xmin"], b["ymin"], b["xmax"], b["ymax"]), n["box"])) <= 0.5001


# ---------------------------------------------------------------------------------------------
# tiny_centernet: the example repo's detector (#23)

@pytest.mark.slow
def test_tiny_centernet_exports_onnx_with_parity_and_serves_batches(shapes_coco, tmp_path: Path) -> None:
    """Two epochs on 8 images: the ONNX graph (decoding included, batched) computes what the
    network does, the TorchScript file answers the serving layer's batched detections, and a
    saved model predicts the same boxes."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from kiln.algorithms.onnx import export_and_check
    from kiln.bento.runtime import LOADERS

    algo = get_algorithm("tiny_centernet")
    model = algo.train(shapes_coco, {"epochs": 2, "batch_size": 4, "max_detections": 10, "threshold": 0.0})
    assert model.meta["classes"] == ["square", "circle"] and model.meta["input_size"] == 64
    paths = _test_paths(shapes_coco)
    report = export_and_check(algo, model, tmp_path / "m.onnx", paths)
    assert report is not None and report.passed and report.samples == 3
    assert report.outputs == ["boxes", "scores", "labels"] and report.compared == 3 * 10 * 6

    batch = algo.input_batch(model, paths).numpy()
    served = LOADERS["onnx"](tmp_path / "m.onnx", 1)(batch)  # the serving layer's ONNX runtime
    assert len(served) == 3 and set(served[0]) == {"boxes", "scores", "labels"}
    assert served[0]["boxes"].shape == (10, 4) and np.all(np.diff(served[0]["scores"]) <= 0)  # best first
    assert algo.export_torchscript(model, tmp_path / "model.pt") == {}
    scripted = LOADERS["torch"](tmp_path / "model.pt", 1)(batch)
    for a, b in zip(served, scripted):
        assert np.array_equal(a["labels"], b["labels"]) and np.allclose(a["boxes"], b["boxes"], atol=1e-3)

    preds = algo.predict(model, paths)
    assert len(preds) == 3 and all(len(p) == 10 for p in preds)  # threshold 0: every output box
    for d in (d for p in preds for d in p):
        x0, y0, x1, y1 = d["box"]
        assert d["label"] in ("square", "circle") and 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64
    algo.save(model, tmp_path / "saved")
    again = algo.load(tmp_path / "saved")
    assert algo.predict(again, paths) == preds
    model.hyperparameters["threshold"] = 1.0
    assert algo.predict(model, paths) == [[], [], []]


def test_tiny_centernet_refuses_an_input_size_off_its_stride(shapes_coco) -> None:
    with pytest.raises(AlgorithmError, match="input_size 30 is not a multiple of 4"):
        get_algorithm("tiny_centernet").train(shapes_coco, {"epochs": 1, "input_size": 30})


@pytest.mark.slow
def test_tiny_centernet_learns_the_shapes_sample(tmp_path: Path) -> None:
    """The example repo's detection experiment (specs/experiments/shapes-centernet.yaml: the
    ``shapes`` sample, its 80/20 split, the spec's hyperparameters) reaches mAP@0.5 >= 0.5 on the
    validation split, with boxes above the spec's threshold on most validation images."""
    import os

    import yaml

    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load
    from kiln.data.samples import materialize_sample

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "specs/experiments/shapes-centernet.yaml").read_text())["spec"]
    splits = yaml.safe_load((root / "specs/datasets/shapes.yaml").read_text())["spec"]["splits"]
    materialize_sample("shapes", tmp_path / "shapes")
    data = TrainData(load(tmp_path / "shapes", task="detection"),
                     ratios={k: v for k, v in splits.items() if k != "seed"}, seed=splits["seed"])
    algo = get_algorithm(spec["algorithm"]["name"])
    hp = spec["algorithm"]["hyperparameters"]
    t0 = time.perf_counter()
    model = algo.train(data, hp)
    took = time.perf_counter() - t0
    ev = algo.evaluate(model, data, "validation")
    print(f"\ntiny_centernet on shapes: {took:.1f} s for {hp['epochs']} epochs (load {os.getloadavg()[0]:.1f}), "
          f"validation {dict((k, round(v, 3)) for k, v in ev.items())}")
    assert ev["validation_ap50"] >= 0.5, dict(ev)
    assert hp["threshold"] >= 0.3
    found = algo.predict(model, [data.content.abspath(it.path) for it in data.items("validation")])
    assert sum(bool(p) for p in found) >= len(found) * 3 // 4, found
