"""NHN Cloud AI EasyMaker's built-in algorithms, with EasyMaker's names and hyperparameters.

- ``easymaker-image-classification``: ResNet-50 (transformers ``ResNetForImageClassification``,
  ``ResNetConfig()`` is ResNet-50), AdamW;
- ``easymaker-semantic-segmentation``: SegFormer-B3 (``SegformerConfig(depths=[3, 4, 18, 3],
  hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768)``);
- ``easymaker-object-detection``: DETR with a ResNet-50 backbone (``DetrConfig(use_timm_backbone=False,
  use_pretrained_backbone=False, backbone=None, backbone_config=ResNetConfig(out_features=["stage4"]))``).

Hyperparameter names, types, defaults and ranges are EasyMaker's (``learning_rate``,
``per_device_train_batch_size``, ``num_train_epochs``, ``save_steps``, ``logging_steps`` ...);
kiln adds ``seed``, ``device`` and the image size the CPU tests shrink (``image_size``;
classification has EasyMaker's own ``input_size``); whichever it is, the model's meta stores it as
``input_size``, the one name registration and serving read. Training follows Hugging Face ``Trainer``'s
defaults: AdamW without weight decay, the learning rate decaying linearly to 0 over
``ceil(num_train_epochs * steps_per_epoch)`` optimiser steps (a fractional epoch count stops
mid-epoch).

Steps, not epochs: ``callbacks.report(step, ...)`` receives the global optimiser step; every
``logging_steps`` it carries ``train_loss`` (mean since the last report), ``learning_rate`` and
``epoch`` (fractional), and at the end of each epoch the ``validation_*`` metrics. Checkpoints
every ``save_steps`` and at the end, written atomically::

    workdir/checkpoints/step-0000500.pt  {"step": 500, "model": state_dict, "optimizer": ...,
                                          "scheduler": ..., "rng": torch RNG state, "meta": {...},
                                          "history": [...]}

Resuming continues at the saved step with the same batch order (epoch ``e`` shuffles with a
generator seeded from ``(seed, e)``; the batches of the interrupted epoch already done are skipped).

Nothing is downloaded (``HF_HUB_OFFLINE=1`` is set on import). ``pretrained`` is a local folder
written by ``save_pretrained`` (heads of another size are re-initialised) or a torch state dict file.
``save`` writes ``model.pt`` (state dict) and ``meta.json`` holding the model config, so ``load``
rebuilds any architecture a pretrained folder brought in.

Evaluation: classification -> accuracy, macro precision/recall/F1, loss; segmentation ->
mean_iou, mean_accuracy, overall_accuracy (per-category lists in the artifacts); detection ->
COCO map/ap50/ap75 (all 100 queries, no threshold). Predictions: classification
``[{"label", "score"}]`` (top-1); segmentation an ``(H, W)`` array of category ids; detection per
image ``[{"label", "category_id", "score", "box": [xmin, ymin, xmax, ymax]}]`` above ``threshold``.

ONNX and TorchScript: classification and segmentation export ``logits_net`` (the logits tensor;
SegFormer's resized to the input), which the parity check runs as the native side too; DETR has
no ONNX exporter (returns None). Serving DETR: ``export_torchscript`` traces DETR plus its post-processing (batched boxes, scores,
labels) for the serving layer's torch runtime (``runtime: native`` Deployments).
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from kiln.algorithms import metrics as M
from kiln.algorithms.base import (
    Algorithm,
    AlgorithmError,
    BestWeights,
    Evaluation,
    Hyperparameters,
    ReportCallback,
    TrainData,
    TrainedModel,
    atomic_save,
    checkpoint_due,
    latest_checkpoint_file,
    torch_snapshot,
)
from kiln.algorithms.detection import (
    IGNORE,
    SegmentationDataset,
    annotation_boxes,
    category_lut,
    dataset_categories,
    open_rgb,
    segmentation_evaluation,
    segmentation_predict,
)
from kiln.algorithms.vision import IMAGENET_MEAN, IMAGENET_STD, TorchModelIO, load_pretrained, optimiser_step, to_tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CKPT = re.compile(r"^step-(\d+)\.pt$")


class StepHyperparameters(Hyperparameters):
    learning_rate: float = Field(2e-4, ge=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    num_train_epochs: float = Field(3.0, gt=0)
    save_steps: int = Field(500, ge=1, description="checkpoint every save_steps optimiser steps")
    logging_steps: int = Field(10, ge=1, description="report train_loss every logging_steps steps")
    device: str = Field("auto", description="kiln: auto (cuda when available), cpu, cuda, cuda:N")


def latest_step_checkpoint(path: Path) -> Path:
    """``path`` itself if a file, else the highest ``step-NNNNNNN.pt`` in the folder."""
    return latest_checkpoint_file(path, _CKPT, "pass a checkpoint file or a folder holding step-NNNNNNN.pt files")


class StepAlgorithm(TorchModelIO, Algorithm):
    """The steps-based loop shared by the EasyMaker algorithms (see the module docstring)."""

    data_type = "image"
    framework = "transformers"
    Hyperparameters = StepHyperparameters
    data_tasks: tuple[str, ...] = ()

    # -- hooks -----------------------------------------------------------------------------------
    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        raise NotImplementedError

    def model_class(self) -> Any:
        raise NotImplementedError

    def config(self, meta: dict[str, Any]) -> Any:
        """The architecture config for a fresh model with ``meta``'s labels."""
        raise NotImplementedError

    def example(self, data: TrainData, split: str, meta: dict[str, Any]) -> Any:
        """A dataset object (``len`` and ``[i]``) of training examples for ``split``."""
        raise NotImplementedError

    def collate(self, examples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        raise NotImplementedError

    def train_batch_size(self, hp: Any) -> int:
        return int(hp.per_device_train_batch_size)

    # -- model construction ------------------------------------------------------------------------
    def build_model(self, meta: dict[str, Any]) -> Any:
        cls = self.model_class()
        if "config" in meta:
            return cls(cls.config_class.from_dict(meta["config"]))
        return cls(self.config(meta))

    def _fresh(self, meta: dict[str, Any], pretrained: str | Path | None) -> Any:
        if pretrained is None:
            return self.build_model(meta)
        p = Path(pretrained)
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise AlgorithmError(f"pretrained folder {p} has no config.json",
                                     hint="pass a folder written by save_pretrained(); kiln never downloads weights")
            fresh = self.config(meta)
            try:
                return self.model_class().from_pretrained(
                    str(p), local_files_only=True, ignore_mismatched_sizes=True, num_labels=fresh.num_labels,
                    id2label=fresh.id2label, label2id=fresh.label2id)
            except (OSError, ValueError) as e:
                raise AlgorithmError(f"pretrained folder {p} cannot be loaded: {e}",
                                     hint="pass a folder written by save_pretrained() for this architecture") from None
        model = self.build_model(meta)
        meta["pretrained_skipped"] = load_pretrained(model, p)
        return model

    # -- the loop --------------------------------------------------------------------------------
    def train(self, data: TrainData, hp: Any = None, *, callbacks: ReportCallback | None = None,
              workdir: Path | None = None, resume_from: Path | None = None,
              pretrained: str | Path | None = None) -> TrainedModel:
        import torch

        hp, device, meta = self.training_setup(data, hp)
        ckpt = None
        if resume_from is not None:
            ckpt = self.resume_state(latest_step_checkpoint(Path(resume_from)), meta, "cpu")
            meta = ckpt["meta"]
        torch.manual_seed(hp.seed)
        model = self.build_model(meta) if ckpt is not None else self._fresh(meta, pretrained)
        meta["config"] = model.config.to_dict()
        model.to(device)
        ds = self.example(data, "train", meta)
        bs = self.train_batch_size(hp)
        per_epoch = math.ceil(len(ds) / bs)
        max_steps = max(1, math.ceil(hp.num_train_epochs * per_epoch))
        opt, sched = self._optimisation(model, hp, max_steps)
        step, history = self._restore(ckpt, model, opt, sched) if ckpt is not None else (0, [])
        reporter, hist_cb = self._reporter(callbacks, workdir)
        hist_cb.history.extend(history)
        has_val = data.has_split("validation")
        saved = step
        best = BestWeights(callbacks, torch_snapshot(model))

        def checkpoint(pending: list[tuple[int, dict[str, float]]]) -> None:
            if workdir is None:
                return
            state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "meta": meta,
                     "history": [list(h) for h in hist_cb.history + pending]}
            atomic_save(Path(workdir) / "checkpoints" / f"step-{step:07d}.pt", lambda tmp: torch.save(state, tmp))

        try:
            loss_sum, n_loss, t0 = 0.0, 0, time.perf_counter()
            while step < max_steps:
                epoch, skip = divmod(step, per_epoch)
                order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(hp.seed * 1_000_003 + epoch))
                model.train()
                for b in range(skip, per_epoch):
                    if step >= max_steps:
                        break
                    batch = self.collate([ds[int(i)] for i in order[b * bs:(b + 1) * bs]])
                    out = model(**_to(batch, device))
                    loss_value = optimiser_step(self.name, opt, out.loss, f"step {step + 1}")
                    sched.step()
                    step += 1
                    loss_sum, n_loss = loss_sum + loss_value, n_loss + 1
                    logs: dict[str, float] = {}
                    if step % hp.logging_steps == 0:
                        logs = {"train_loss": loss_sum / n_loss, "learning_rate": opt.param_groups[0]["lr"],
                                "epoch": step / per_epoch, "train_seconds_per_step": (time.perf_counter() - t0) / n_loss}
                        loss_sum, n_loss, t0 = 0.0, 0, time.perf_counter()
                    if (step % per_epoch == 0 or step == max_steps) and has_val:
                        logs.update(self.evaluate_native(model, data, "validation", meta, hp))
                        model.train()
                    if checkpoint_due(callbacks, step, last=step == max_steps, unit="step", default=hp.save_steps):
                        checkpoint([(step, logs)] if logs else [])  # before the report, which may prune
                        saved = step
                    if logs:
                        reporter.report(step, logs)
                        best.offer(step, logs)
            if saved != step:
                checkpoint([])
        finally:
            reporter.close()
        meta["checkpoint"] = best.finish(step, model.load_state_dict)
        model.eval()
        return TrainedModel(self.name, model, hp.model_dump(), meta, hist_cb.history)

    @staticmethod
    def _optimisation(model: Any, hp: Any, max_steps: int) -> tuple[Any, Any]:
        """Hugging Face ``Trainer``'s defaults: AdamW without weight decay, the learning rate
        decaying linearly to 0 over ``max_steps``."""
        import torch

        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate,
                                weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (max_steps - s) / max_steps))
        return opt, sched

    @staticmethod
    def _restore(ckpt: dict[str, Any], model: Any, opt: Any, sched: Any) -> tuple[int, list[Any]]:
        """Continue from a checkpoint (weights, optimiser, schedule, RNG); its step and history."""
        import torch

        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        return int(ckpt["step"]), [tuple(h) for h in ckpt.get("history", [])]


    # -- export: the network as served ---------------------------------------------------------
    upsample_logits = False  # segmentation: logits at the input size, as predict() takes them

    def logits_net(self, model: TrainedModel) -> Any:
        """``pixel_values -> logits`` as one tensor: transformers models return a ``ModelOutput``
        (a dict), which ``torch.jit.trace`` refuses ("Encountering a dict at the output of the
        tracer") and the serving layer cannot read. The ONNX file, the TorchScript file and the
        parity check's native side all run this module, so they compute the same thing."""
        return _logits_module(model.native.eval().cpu(), self._size(model.meta) if self.upsample_logits else None)

    def _export_logits(self, model: TrainedModel, path: Path, sample: Any) -> Path:
        import warnings

        import torch

        x = self.input_batch(model, sample)[:1]
        net = self.logits_net(model)
        path = Path(path)

        def write(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (x,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)

        atomic_save(path, write)
        return path

    def _trace_logits(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """TorchScript of ``logits_net`` for ``runtime: native`` serving; the serving config's
        image size and labels come from ``meta`` (``input_size``, ``classes``)."""
        import warnings

        import torch

        s = self._size(model.meta)
        net = self.logits_net(model)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarning: shape arithmetic traced as constants
            traced = torch.jit.trace(net, torch.zeros(2, 3, s, s))
        atomic_save(Path(path), lambda tmp: traced.save(tmp))
        return {}

    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """The network's ``pixel_values`` for image paths or PIL images: ``N x 3 x S x S``,
        normalised as in training (what ``kiln report`` and the ONNX check feed it)."""
        import torch

        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return torch.stack([to_tensor(open_rgb(x), self._size(model.meta)) for x in inputs])

    @staticmethod
    def _size(meta: dict[str, Any]) -> int:
        # ``input_size`` is the one name the rest of kiln reads (registration's serving config,
        # kiln infer); models saved before it was renamed carry ``image_size``
        return int(meta["input_size"] if "input_size" in meta else meta["image_size"])

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        import torch

        net = self.logits_net(model)
        with torch.inference_mode():
            return [net(self.input_batch(model, sample)).numpy()]


def _logits_module(net: Any, size: int | None) -> Any:
    """``net`` returning its ``logits`` tensor, bilinearly resized to ``size`` x ``size`` when
    given (a class built here so that importing this module needs no torch)."""
    import torch
    import torch.nn.functional as F

    class Logits(torch.nn.Module):
        def __init__(self, net: Any, size: int | None) -> None:
            super().__init__()
            self.net, self.size = net, size

        def forward(self, x: Any) -> Any:
            logits = self.net(pixel_values=x).logits
            if self.size is not None:
                logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return logits

    return Logits(net, size).eval()


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, list):
            out[k] = [{kk: vv.to(device) for kk, vv in t.items()} for t in v]
        else:
            out[k] = v.to(device)
    return out


def _label_maps(names: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    return {i: n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------------
# image classification (ResNet-50)

class ClassificationStepHyperparameters(StepHyperparameters):
    input_size: int = Field(28, ge=4, description="images are resized to input_size x input_size")
    learning_rate: float = Field(0.1, ge=0, description="AdamW learning rate")
    per_device_train_batch_size: int = Field(16, ge=2)
    per_device_eval_batch_size: int = Field(16, ge=1)
    num_train_epochs: int = Field(3, ge=1)  # type: ignore[assignment] - an int in EasyMaker's table


class _ClassificationExamples:
    def __init__(self, paths: list[Path], targets: list[int], size: int) -> None:
        self.paths, self.targets, self.size = paths, targets, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return to_tensor(open_rgb(self.paths[i]), self.size), self.targets[i]


class EasyMakerImageClassification(StepAlgorithm):
    """EasyMaker image classification: ResNet-50 (transformers), AdamW, steps-based."""

    name = "easymaker-image-classification"
    task = "classification"
    data_tasks = ("classification",)
    Hyperparameters = ClassificationStepHyperparameters

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        classes = data.classes
        if len(classes) < 2:
            raise AlgorithmError(f"algorithm {self.name}: need at least 2 classes, found {classes}")
        return {"classes": classes, "input_size": hp.input_size}

    def model_class(self) -> Any:
        from transformers import ResNetForImageClassification

        return ResNetForImageClassification

    def config(self, meta: dict[str, Any]) -> Any:
        from transformers import ResNetConfig

        id2label, label2id = _label_maps(meta["classes"])
        return ResNetConfig(num_labels=len(meta["classes"]), id2label=id2label, label2id=label2id)

    def example(self, data: TrainData, split: str, meta: dict[str, Any]) -> Any:
        index = {c: i for i, c in enumerate(meta["classes"])}
        items = data.labelled_items(split)
        unknown = sorted({str(it.label) for it in items if it.label not in index})
        if unknown:
            raise AlgorithmError(f"{split} images have labels the model was not trained on: {unknown}")
        return _ClassificationExamples([data.content.abspath(it.path) for it in items],
                                       [index[str(it.label)] for it in items], self._size(meta))

    def collate(self, examples: list[Any]) -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.stack([e[0] for e in examples]),
                "labels": torch.tensor([e[1] for e in examples], dtype=torch.int64)}

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        import torch

        ds = self.example(data, split, meta)
        device = next(model.parameters()).device
        preds: list[int] = []
        loss_sum = 0.0
        model.eval()
        with torch.inference_mode():
            for s in range(0, len(ds), hp.per_device_eval_batch_size):
                b = self.collate([ds[i] for i in range(s, min(s + hp.per_device_eval_batch_size, len(ds)))])
                out = model(**_to(b, device))
                loss_sum += float(out.loss) * len(b["labels"])
                preds.extend(out.logits.argmax(1).cpu().tolist())
        m, art = M.classification(ds.targets, preds, list(range(len(meta["classes"]))))
        art["labels"] = list(meta["classes"])
        m["loss"] = loss_sum / max(len(ds), 1)
        return Evaluation(M.prefixed(split, m), art)

    def probabilities(self, model: TrainedModel, inputs: Any) -> Any:
        """Paths / PIL images -> ``N x K`` softmax probabilities (numpy)."""
        import torch

        net = model.native.eval()
        device = next(net.parameters()).device
        with torch.inference_mode():
            return torch.softmax(net(pixel_values=self.input_batch(model, inputs).to(device)).logits, 1).cpu().numpy()

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> ``[{"label", "score"}]`` (top-1 softmax), EasyMaker's response shape."""
        prob = self.probabilities(model, inputs)
        return [{"label": model.meta["classes"][int(p.argmax())], "score": float(p.max())} for p in prob]

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """Input ``input`` (N x 3 x S x S, ImageNet-normalised), output ``logits``."""
        return self._export_logits(model, path, sample)

    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """The logits network traced (``N x 3 x S x S`` -> ``N x K``)."""
        return self._trace_logits(model, path)


# ---------------------------------------------------------------------------------------------
# semantic segmentation (SegFormer-B3)

class SegmentationStepHyperparameters(StepHyperparameters):
    image_size: int = Field(512, ge=32, le=4096,
                            description="kiln: images and masks are resized to image_size^2 (EasyMaker: 512)")


class _SegmentationExamples:
    def __init__(self, data: TrainData, split: str, lut: Any, size: int) -> None:
        self.inner = SegmentationDataset(data, split, lut, size)
        self.items = self.inner.items

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.inner[i]


class EasyMakerSemanticSegmentation(StepAlgorithm):
    """EasyMaker semantic segmentation: SegFormer-B3 (transformers), AdamW, steps-based."""

    name = "easymaker-semantic-segmentation"
    task = "semantic-segmentation"
    data_tasks = ("semantic-segmentation",)
    Hyperparameters = SegmentationStepHyperparameters
    upsample_logits = True

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        ids, names = dataset_categories(data, self.name)
        if len(ids) < 2:
            raise AlgorithmError(f"algorithm {self.name}: need at least 2 categories, found {names}")
        return {"category_ids": ids, "classes": names, "input_size": hp.image_size}

    def model_class(self) -> Any:
        from transformers import SegformerForSemanticSegmentation

        return SegformerForSemanticSegmentation

    def config(self, meta: dict[str, Any]) -> Any:
        from transformers import SegformerConfig

        id2label, label2id = _label_maps(meta["classes"])
        return SegformerConfig(depths=[3, 4, 18, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768,
                               num_labels=len(meta["classes"]), id2label=id2label, label2id=label2id,
                               semantic_loss_ignore_index=IGNORE)

    def example(self, data: TrainData, split: str, meta: dict[str, Any]) -> Any:
        return _SegmentationExamples(data, split, category_lut(meta["category_ids"]), self._size(meta))

    def collate(self, examples: list[Any]) -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.stack([e[0] for e in examples]), "labels": torch.stack([e[1] for e in examples])}

    def _class_maps(self, model: Any, images: list[Any], size: int) -> list[Any]:
        import torch
        import torch.nn.functional as F

        device = next(model.parameters()).device
        model.eval()
        out = []
        with torch.inference_mode():
            logits = model(pixel_values=torch.stack([to_tensor(im, size) for im in images]).to(device)).logits
            for im, lg in zip(images, logits):
                w, h = im.size
                out.append(F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                           .argmax(0).cpu().numpy())
        return out

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        return segmentation_evaluation(lambda images: self._class_maps(model, images, self._size(meta)),
                                       data, self.example(data, split, meta).inner, split, meta,
                                       hp.per_device_eval_batch_size)

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> per image an ``(H, W)`` int array of category ids."""
        return segmentation_predict(lambda images: self._class_maps(model.native, images, self._size(model.meta)),
                                    model.meta, inputs)

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """Input ``input`` (N x 3 x S x S, ImageNet-normalised), output ``logits`` (N x K x S x S:
        SegFormer's S/4 logits resized as ``predict`` resizes them, so a served mask is its argmax)."""
        return self._export_logits(model, path, sample)

    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """The logits network traced (``N x 3 x S x S`` -> ``N x K x S x S``)."""
        return self._trace_logits(model, path)


# ---------------------------------------------------------------------------------------------
# object detection (DETR-ResNet-50)

class DetectionStepHyperparameters(StepHyperparameters):
    threshold: float = Field(0.5, ge=0, le=1, description="score below which predict() drops a detection")
    image_size: int = Field(800, ge=32, le=4096, description="kiln: images are resized to image_size^2")


class _DetectionExamples:
    """``(pixel_values, {"class_labels", "boxes": normalised cx, cy, w, h})`` per image."""

    def __init__(self, data: TrainData, split: str, meta: dict[str, Any]) -> None:
        self.content, self.items = data.content, data.items(split)
        self.label_of = {cid: i for i, cid in enumerate(meta["category_ids"])}
        self.size = StepAlgorithm._size(meta)

    def __len__(self) -> int:
        return len(self.items)

    def boxes(self, i: int, w: int, h: int) -> tuple[list[list[float]], list[int]]:
        """Pixel xyxy boxes and class indices of item ``i`` (crowd / degenerate boxes left out)."""
        boxes, labels = [], []
        for a, box, _ in annotation_boxes(self.items[i].annotations, self.label_of, w, h):
            boxes.append(box)
            labels.append(self.label_of[a.category_id])
        return boxes, labels

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        import torch

        im = open_rgb(self.content.abspath(self.items[i].path))
        w, h = im.size
        boxes, labels = self.boxes(i, w, h)
        norm = [[(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h] for x0, y0, x1, y1 in boxes]
        return to_tensor(im, self.size), {"class_labels": torch.tensor(labels, dtype=torch.int64),
                                          "boxes": torch.tensor(norm, dtype=torch.float32).reshape(-1, 4)}


def _detr_serving(net: Any, size: int) -> Any:
    """DETR wrapped for serving (a class built here so that importing this module needs no torch)."""
    import torch

    class DetrServing(torch.nn.Module):
        """DETR with its post-processing folded in, so the traced module gives boxes/scores/labels."""

        def __init__(self, net: Any, size: int) -> None:
            super().__init__()
            self.net, self.size = net, float(size)

        def forward(self, x: Any) -> dict[str, Any]:
            out = self.net(pixel_values=x)
            prob = out.logits.softmax(-1)[..., :-1]  # the last class is "no object"
            scores, labels = prob.max(-1)
            cx, cy, bw, bh = (out.pred_boxes * self.size).unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            return {"boxes": boxes, "scores": scores, "labels": labels}

    return DetrServing(net, size)


class EasyMakerObjectDetection(StepAlgorithm):
    """EasyMaker object detection: DETR with a ResNet-50 backbone (transformers), AdamW, steps-based."""

    name = "easymaker-object-detection"
    task = "detection"
    data_tasks = ("detection", "instance-segmentation")
    Hyperparameters = DetectionStepHyperparameters

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        ids, names = dataset_categories(data, self.name)
        return {"category_ids": ids, "classes": names, "input_size": hp.image_size}

    def model_class(self) -> Any:
        from transformers import DetrForObjectDetection

        return DetrForObjectDetection

    def config(self, meta: dict[str, Any]) -> Any:
        from transformers import DetrConfig, ResNetConfig

        id2label, label2id = _label_maps(meta["classes"])
        return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                          backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=len(meta["classes"]),
                          id2label=id2label, label2id=label2id)

    def example(self, data: TrainData, split: str, meta: dict[str, Any]) -> Any:
        return _DetectionExamples(data, split, meta)

    def collate(self, examples: list[Any]) -> dict[str, Any]:
        import torch

        x = torch.stack([e[0] for e in examples])
        return {"pixel_values": x, "pixel_mask": torch.ones((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.int64),
                "labels": [e[1] for e in examples]}

    def _detect(self, model: Any, images: list[Any], size: int) -> list[dict[str, Any]]:
        """Per image ``scores``, ``labels`` (class index) and pixel ``boxes`` (xyxy) of all queries."""
        import torch

        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            out = model(pixel_values=torch.stack([to_tensor(im, size) for im in images]).to(device))
        prob = out.logits.softmax(-1)[..., :-1]  # the last class is "no object"
        scores, labels = prob.max(-1)
        res = []
        for im, s, lab, b in zip(images, scores.cpu(), labels.cpu(), out.pred_boxes.cpu()):
            w, h = im.size
            cx, cy, bw, bh = b.unbind(-1)
            xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
            res.append({"scores": s, "labels": lab, "boxes": xyxy})
        return res

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        ds = self.example(data, split, meta)
        ids = meta["category_ids"]
        gt: dict[str, Any] = {"images": [], "annotations": [],
                              "categories": [{"id": c, "name": n} for c, n in zip(ids, meta["classes"])]}
        dets: list[dict[str, Any]] = []
        bs = hp.per_device_eval_batch_size
        for s in range(0, len(ds), bs):
            idx = list(range(s, min(s + bs, len(ds))))
            images = [open_rgb(data.content.abspath(ds.items[i].path)) for i in idx]
            for i, im, o in zip(idx, images, self._detect(model, images, self._size(meta))):
                w, h = im.size
                gt["images"].append({"id": i + 1, "width": w, "height": h})
                for (x0, y0, x1, y1), lab in zip(*ds.boxes(i, w, h)):
                    gt["annotations"].append({"image_id": i + 1, "category_id": ids[lab], "iscrowd": 0,
                                              "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
                for (x0, y0, x1, y1), lab, sc in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist()):
                    dets.append({"image_id": i + 1, "category_id": ids[lab], "score": sc,
                                 "bbox": [x0, y0, x1 - x0, y1 - y0]})
        return Evaluation(M.prefixed(split, M.coco(gt, dets, "bbox")), {"labels": list(meta["classes"])})

    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """TorchScript for the serving layer's torch runtime: ``N x 3 x S x S`` (ImageNet-normalised,
        S = ``image_size``) -> ``{"boxes": N x Q x 4`` pixel xyxy in the S x S frame, ``"scores"``,
        ``"labels"``: N x Q class indices}`` (Q = 100 queries, the best real class of each; the server
        drops those under ``threshold``). Returns the serving keys that differ from the defaults."""
        import torch

        s = self._size(model.meta)
        net = _detr_serving(model.native.eval().cpu(), s).eval()
        x = torch.zeros(2, 3, s, s)
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(net, x, strict=False, check_trace=False)  # a dict out: strict=False
        atomic_save(Path(path), lambda tmp: traced.save(tmp))
        return {"image": {"size": [s, s], "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                "labels": [str(c) for c in model.meta["classes"]],
                "threshold": float(model.hyperparameters.get("threshold", 0.5))}

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> per image ``[{"label", "category_id", "score", "box"}]`` above threshold."""
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        thr = float(model.hyperparameters.get("threshold", 0.5))
        ids, names = model.meta["category_ids"], model.meta["classes"]
        out = []
        for o in self._detect(model.native, [open_rgb(x) for x in inputs], self._size(model.meta)):
            out.append([{"label": names[lab], "category_id": ids[lab], "score": float(sc), "box": [float(v) for v in box]}
                        for box, lab, sc in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist())
                        if sc >= thr])
        return out
