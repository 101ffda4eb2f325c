"""EasyMaker built-ins (transformers, random weights, offline): hyperparameters as documented,
steps-based logging/checkpoints/resume, ResNet-50 on digits, SegFormer-B3 and DETR on drawn shapes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kiln.algorithms.base import AlgorithmError, HistoryCallback  # noqa: E402
from kiln.algorithms.registry import describe, get_algorithm  # noqa: E402
from tests.algorithms.conftest import digits_data  # noqa: E402


def test_hyperparameters_are_easymakers() -> None:
    def spec(name: str) -> dict:
        return {k: (v["type"], v["default"], v.get("ge"), v.get("le")) for k, v in describe(name)["hyperparameters"].items()}

    cls = spec("easymaker-image-classification")
    assert cls["input_size"] == ("int", 28, 4, None)
    assert cls["learning_rate"] == ("float", 0.1, 0, None)
    assert cls["per_device_train_batch_size"] == ("int", 16, 2, None)
    assert cls["per_device_eval_batch_size"] == ("int", 16, 1, None)
    assert cls["num_train_epochs"] == ("int", 3, 1, None)
    assert cls["save_steps"][:2] == ("int", 500) and cls["logging_steps"][:2] == ("int", 10)
    seg = spec("easymaker-semantic-segmentation")
    assert seg["learning_rate"][:2] == ("float", 2e-4) and seg["per_device_train_batch_size"][:2] == ("int", 4)
    assert seg["num_train_epochs"][:2] == ("float", 3.0)
    assert seg["save_steps"][1] == 500 and seg["logging_steps"][1] == 10
    det = spec("easymaker-object-detection")
    assert det["learning_rate"][:2] == ("float", 2e-4)
    assert det["per_device_train_batch_size"][1] == 4 and det["per_device_eval_batch_size"][1] == 4
    assert det["num_train_epochs"][:2] == ("float", 3.0)
    assert det["threshold"] == ("float", 0.5, 0, 1)
    with pytest.raises(AlgorithmError, match="per_device_train_batch_size"):
        get_algorithm("easymaker-image-classification").hyperparameters({"per_device_train_batch_size": 1})
    with pytest.raises(AlgorithmError, match="threshold"):
        get_algorithm("easymaker-object-detection").hyperparameters({"threshold": 1.5})


CLS = {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "num_train_epochs": 1,
       "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1}


def test_resnet50_steps_logging_checkpoints_and_exact_resume(digits_root: Path, tmp_path: Path) -> None:
    data = digits_data(digits_root, {"train": 32, "validation": 10, "test": 10})
    algo = get_algorithm("easymaker-image-classification")
    hist = HistoryCallback()
    t0 = time.perf_counter()
    model = algo.train(data, CLS, callbacks=hist, workdir=tmp_path)
    print(f"\neasymaker resnet50 28px batch 8: {(time.perf_counter() - t0) / 4:.2f} s per step (incl. validation)")
    assert [s for s, _ in hist.history] == [1, 2, 3, 4]  # logging_steps 1, 32 images / batch 8
    assert all("train_loss" in m and "learning_rate" in m for _, m in hist.history)
    assert "validation_accuracy" in hist.history[-1][1] and "validation_f1" in hist.history[-1][1]
    assert hist.history[-1][1]["epoch"] == 1.0 and hist.history[-1][1]["learning_rate"] == 0.0  # linear decay
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000004.pt"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    # resuming from step 2 replays steps 3 and 4 with the same batches and RNG: identical weights
    seen = HistoryCallback()
    resumed = algo.train(data, CLS, callbacks=seen, workdir=tmp_path / "again",
                         resume_from=tmp_path / "checkpoints" / "step-0000002.pt")
    assert [s for s, _ in seen.history] == [3, 4] and [s for s, _ in resumed.history] == [1, 2, 3, 4]
    for (k, a), b in zip(resumed.native.state_dict().items(), model.native.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k

    ev = algo.evaluate(model, data, "test")
    assert {"test_accuracy", "test_precision", "test_recall", "test_f1", "test_loss"} == set(ev)
    paths = [data.content.abspath(it.path) for it in data.items("test")[:4]]
    preds = algo.predict(model, paths)
    assert len(preds) == 4 and all(p["label"] in data.classes and 0 <= p["score"] <= 1 for p in preds)
    algo.save(model, tmp_path / "saved")
    assert algo.predict(algo.load(tmp_path / "saved"), paths) == preds

    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    report = export_and_check(algo, model, tmp_path / "m.onnx", paths, tolerance=1e-3)
    assert report is not None and report.passed


def test_pretrained_from_a_save_pretrained_folder(digits_root: Path, tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    donor = ResNetForImageClassification(ResNetConfig(num_labels=7))
    torch.nn.init.constant_(donor.resnet.embedder.embedder.convolution.weight, 0.01)
    donor.save_pretrained(tmp_path / "donor")
    data = digits_data(digits_root, {"train": 8, "validation": 4})
    algo = get_algorithm("easymaker-image-classification")
    model = algo.train(data, {**CLS, "learning_rate": 0.0}, pretrained=tmp_path / "donor")
    w = model.native.resnet.embedder.embedder.convolution.weight
    assert torch.allclose(w, torch.full_like(w, 0.01))
    k = len(data.classes)  # 8: the 12-image cut holds digits 0-7
    assert model.native.config.num_labels == k and model.native.classifier[1].out_features == k != 7
    with pytest.raises(AlgorithmError, match="no config.json"):
        algo.train(data, CLS, pretrained=tmp_path)


def test_segformer_b3_reports_mean_iou(shapes_segmentation, tmp_path: Path) -> None:
    algo = get_algorithm("easymaker-semantic-segmentation")
    hist = HistoryCallback()
    t0 = time.perf_counter()
    model = algo.train(shapes_segmentation, {"num_train_epochs": 0.5, "image_size": 64, "logging_steps": 1,
                                              "save_steps": 100, "learning_rate": 6e-4}, callbacks=hist,
                       workdir=tmp_path)
    steps = hist.history[-1][0]
    print(f"\nsegformer-b3 64px batch 4: {(time.perf_counter() - t0) / steps:.2f} s per step; "
          f"{[(s, round(m['train_loss'], 3)) for s, m in hist.history]}")
    assert sum(p.numel() for p in model.native.parameters()) > 40e6  # B3, not B0
    assert steps == 1  # half an epoch of 8 images / batch 4
    assert (tmp_path / "checkpoints" / "step-0000001.pt").is_file()  # the final step is always saved
    ev = algo.evaluate(model, shapes_segmentation, "test")
    print(f"segformer test: {dict(ev)}")
    assert {"test_mean_iou", "test_mean_accuracy", "test_overall_accuracy"} == set(ev)
    assert len(ev.artifacts["per_category_accuracy"]) == 3 and ev.artifacts["labels"][0] == "background"
    path = shapes_segmentation.content.abspath(shapes_segmentation.items("test")[0].path)
    (mask,) = algo.predict(model, [path])
    assert mask.shape == (64, 64) and set(mask.ravel().tolist()) <= {0, 1, 2}


def test_detr_computes_a_loss_and_predicts(shapes_coco, tmp_path: Path) -> None:
    algo = get_algorithm("easymaker-object-detection")
    hist = HistoryCallback()
    t0 = time.perf_counter()
    model = algo.train(shapes_coco, {"num_train_epochs": 0.25, "image_size": 64, "logging_steps": 1,
                                      "per_device_train_batch_size": 4}, callbacks=hist, workdir=tmp_path)
    steps = hist.history[-1][0]
    print(f"\ndetr-resnet50 64px batch 4: {(time.perf_counter() - t0) / steps:.2f} s per step; {hist.history}")
    assert hist.history[0][1]["train_loss"] > 0 and "validation_map" in hist.history[-1][1]
    assert model.native.config.num_labels == 2
    paths = [shapes_coco.content.abspath(it.path) for it in shapes_coco.items("test")[:2]]
    model.hyperparameters["threshold"] = 0.0
    preds = algo.predict(model, paths)
    assert [len(p) for p in preds] == [100, 100]  # every query when nothing is filtered
    assert all(d["label"] in ("square", "circle") for d in preds[0])
    model.hyperparameters["threshold"] = 1.0
    assert algo.predict(model, paths) == [[], []]
    ev = algo.evaluate(model, shapes_coco, "test")
    assert set(ev) == {"test_map", "test_ap50", "test_ap75"}
    algo.save(model, tmp_path / "saved")
    again = algo.load(tmp_path / "saved")
    assert again.native.config.num_labels == 2
    again.hyperparameters["threshold"] = model.hyperparameters["threshold"] = 0.0
    a, b = algo.predict(again, paths[:1])[0], algo.predict(model, paths[:1])[0]
    assert [d["label"] for d in a] == [d["label"] for d in b]
    assert torch.allclose(torch.tensor([d["box"] for d in a]), torch.tensor([d["box"] for d in b]), atol=1e-4)


def _serve(algo, model, folder: Path, paths: list[Path]) -> list:
    """Register-style TorchScript export, loaded and run by the serving layer's engine."""
    import base64
    import json

    from kiln.bento.runtime import load_engine

    folder.mkdir(parents=True)
    own = algo.export_torchscript(model, folder / "model.pt")
    (folder / "kiln-serving.json").write_text(json.dumps(
        {"framework": "torch", "file": "model.pt", "task": "detection", "input": "image", **own, "threshold": 0.0}))
    eng = load_engine(folder)
    decoded = [eng.decode({"data": base64.b64encode(Path(p).read_bytes()).decode()}, i) for i, p in enumerate(paths)]
    outs = eng.predict([x for x, _ in decoded])
    assert len(outs) == len(paths)
    return [eng.format(y, meta) for y, (_, meta) in zip(outs, decoded)]


def _best(preds: list[dict]) -> tuple[str, list[float]]:
    d = max(preds, key=lambda d: d["score"])
    return d["label"], d["box"]


def test_detr_serves_through_torchscript_like_predict(shapes_coco, tmp_path: Path) -> None:
    """The TorchScript a registered DETR is served from gives predict()'s best box, in EasyMaker's format."""
    algo = get_algorithm("easymaker-object-detection")
    model = algo.train(shapes_coco, {"num_train_epochs": 0.25, "image_size": 64, "per_device_train_batch_size": 4})
    model.hyperparameters["threshold"] = 0.0
    paths = [shapes_coco.content.abspath(it.path) for it in shapes_coco.items("test")[:3]]
    served = _serve(algo, model, tmp_path / "serve", paths)  # a batch of 3: the trace is not tied to 2
    for per, native in zip(served, algo.predict(model, paths)):
        assert len(per) == 100 and all(len(d) == 2 and "score" in d for d in per)
        (label,) = set(per[0]) - {"score"}
        want_label, want_box = _best(native)
        assert label == want_label
        box = per[0][label]
        assert [box["xmin"], box["ymin"], box["xmax"], box["ymax"]] == [round(v) for v in want_box] or \
            max(abs(a - b) for a, b in zip(box.values(), want_box)) <= 1


def _served(folder: Path, paths: list[Path]) -> list:
    """The serving layer's engine on a registered-style folder: decode, predict, format."""
    import base64

    from kiln.bento.runtime import load_engine

    eng = load_engine(folder)
    decoded = [eng.decode({"data": base64.b64encode(Path(p).read_bytes()).decode()}, i) for i, p in enumerate(paths)]
    return [eng.format(y, m) for y, (_, m) in zip(eng.predict([x for x, _ in decoded]), decoded)]


def _package(algo, model, folder: Path, framework: str, sample: list[Path]) -> None:
    """What registration writes for a built-in: the serving file plus kiln-serving.json, built by
    the controller's own code (ONNX after its parity check, else TorchScript)."""
    import json

    from kiln.algorithms.onnx import export_and_check
    from kiln.controller.experiment.export import _serving

    folder.mkdir(parents=True)
    if framework == "onnx":
        report = export_and_check(algo, model, folder / "model.onnx", sample, tolerance=1e-3)
        assert report is not None and report.passed, report and report.summary()
        cfg = _serving(algo, model.meta, "onnx", "model.onnx")
    else:
        own = algo.export_torchscript(model, folder / "model.pt")
        assert own is not None
        cfg = {**_serving(algo, model.meta, "torch", "model.pt"), **own}
    (folder / "kiln-serving.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("framework", ["onnx", "torch"])
def test_resnet50_registers_and_serves_at_its_input_size(digits_root: Path, tmp_path: Path, framework: str) -> None:
    """#14: the served model resized requests to 224 while the network was trained at input_size
    (28): meta now says ``input_size``, the one name serving reads; TorchScript traced the
    ModelOutput dict and failed."""
    pytest.importorskip("onnxruntime")
    data = digits_data(digits_root, {"train": 16, "validation": 4, "test": 4})
    algo = get_algorithm("easymaker-image-classification")
    model = algo.train(data, {**CLS, "input_size": 20})
    assert model.meta["input_size"] == 20
    paths = [data.content.abspath(it.path) for it in data.items("test")]
    _package(algo, model, tmp_path / "m", framework, paths)
    served = _served(tmp_path / "m", paths)
    prob = algo.probabilities(model, paths)
    for per, p in zip(served, prob):
        assert [d["label"] for d in per][:1] == [model.meta["classes"][int(p.argmax())]]
        assert abs(per[0]["score"] - float(p.max())) < 1e-3 and len(per) == len(model.meta["classes"])


@pytest.mark.parametrize("framework", ["onnx", "torch"])
def test_segformer_registers_and_serves_its_masks(shapes_segmentation, tmp_path: Path, framework: str) -> None:
    """#14: SegFormer's registration failed ("Encountering a dict at the output of the tracer"):
    the logits network is exported (ONNX with parity, or traced), and the served mask is
    predict()'s at the model's input size."""
    pytest.importorskip("onnxruntime")
    algo = get_algorithm("easymaker-semantic-segmentation")
    model = algo.train(shapes_segmentation, {"num_train_epochs": 0.5, "image_size": 32, "learning_rate": 6e-4})
    paths = [shapes_segmentation.content.abspath(it.path) for it in shapes_segmentation.items("test")[:2]]
    _package(algo, model, tmp_path / "m", framework, paths)
    served = _served(tmp_path / "m", paths)
    from PIL import Image

    for mask, path in zip(served, paths):
        assert len(mask) == 32 and all(len(r) == 32 for r in mask)
        with Image.open(path) as im:
            native = algo.predict(model, [im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)])[0]
        agree = (torch.tensor(mask) == torch.from_numpy(native)).float().mean().item()
        assert agree > 0.98, agree  # the same argmax but at pixels where two logits tie within float error
