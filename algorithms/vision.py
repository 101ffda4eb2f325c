"""Image algorithms on PyTorch: the shared epoch loop (checkpoints, resume, seeds, reports) and
torchvision image classification (ResNet 18/50/101, DenseNet-121, EfficientNet B0/B1).

Models are built with ``weights=None`` (nothing is ever downloaded); ``pretrained`` is a local
file loaded with ``torch.load(weights_only=True)`` (a state dict, or a checkpoint holding one
under ``"model"``); classifier-head tensors whose shape does not fit the new class count are
skipped, so ImageNet weights fine-tune on any number of classes.

Checkpoints (one per epoch, written atomically)::

    workdir/checkpoints/epoch-0003.pt   {"epoch": 3, "model": state_dict, "optimizer": ...,
                                         "scheduler": ..., "meta": {...}, "history": [...]}

Determinism: the model is initialised from ``torch.manual_seed(seed)`` and epoch ``e`` shuffles
with a generator seeded from ``(seed, e)``, so a run resumed from epoch ``k`` sees the same batches
as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterator
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
    check_checkpoint_classes,
    checkpoint_due,
    latest_checkpoint_file,
    read_meta,
    torch_snapshot,
    write_meta,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CKPT = re.compile(r"^epoch-(\d+)\.pt$")


class TorchHyperparameters(Hyperparameters):
    batch_size: int = Field(32, ge=1, le=4096)
    epochs: int = Field(10, ge=1, le=10_000)
    learning_rate: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")


def torch_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself if a file, else the highest ``epoch-NNNN.pt`` in the folder."""
    return latest_checkpoint_file(path, _CKPT, "pass a checkpoint file or a folder holding epoch-NNNN.pt files")


def optimiser_step(name: str, opt: Any, loss: Any, where: str) -> float:
    """One optimiser step on ``loss`` (a torch training loop's inner step); returns the loss, or
    raises when training diverged (``where``: at which epoch or step, for the message)."""
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise AlgorithmError(f"algorithm {name}: training diverged (loss {loss_value}) at {where}",
                             hint="lower learning_rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss_value


def load_pretrained(model: Any, path: str | Path) -> list[str]:
    """Load local weights into ``model``; returns the keys skipped for a shape mismatch."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise AlgorithmError(f"pretrained weights {p} do not exist",
                             hint="pretrained is a local .pt/.pth file; kiln never downloads weights")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise AlgorithmError(f"pretrained weights {p} cannot be read: {e}",
                             hint="save a state_dict with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = sorted(k for k in state if k in own and k not in usable)
    if not usable:
        raise AlgorithmError(f"pretrained weights {p} match no parameter of the model",
                             hint="the file must hold weights of the same architecture")
    model.load_state_dict(usable, strict=False)
    return skipped


class TorchModelIO:
    """evaluate/save/load and the start of ``train`` shared by every torch algorithm (epoch- and
    step-based): a state dict in ``model.pt`` plus ``meta.json``; loading rebuilds the model from
    the meta, never unpickles."""

    def evaluate(self, model: TrainedModel, data: TrainData, split: str = "test") -> Evaluation:
        if not data.has_split(split):
            raise AlgorithmError(f"dataset has no {split!r} images to evaluate on")
        return self.evaluate_native(model.native, data, split, model.meta, self.hyperparameters(model.hyperparameters))

    # -- persistence -----------------------------------------------------------------------------
    def save(self, model: TrainedModel, path: Path) -> Path:
        import torch

        path = Path(path)
        state = {k: v.detach().cpu() for k, v in model.native.state_dict().items()}
        atomic_save(path / "model.pt", lambda tmp: torch.save(state, tmp))
        write_meta(path, {"algorithm": self.name, "hyperparameters": model.hyperparameters, **model.meta})
        return path

    def load(self, path: Path) -> TrainedModel:
        import torch

        meta = read_meta(Path(path), self.name)
        hp = meta.pop("hyperparameters")
        meta.pop("algorithm")
        model = self.build_model(meta)
        model.load_state_dict(torch.load(Path(path) / "model.pt", map_location="cpu", weights_only=True))
        model.eval()
        return TrainedModel(self.name, model, hp, meta)

    # -- the start of a training loop (epoch- and step-based alike) ------------------------------
    def training_setup(self, data: TrainData, hp: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Validated hyperparameters, the device and the model's meta (``make_meta``) for ``train``;
        raises for a dataset of another task or without train images."""
        self._check_task(data, self.data_tasks)
        hp = self.hyperparameters(hp)
        if not data.items("train"):
            raise AlgorithmError(f"algorithm {self.name}: the dataset has no train images")
        return hp, torch_device(hp.device), self.make_meta(data, hp)

    @staticmethod
    def resume_state(checkpoint: Path, meta: dict[str, Any], map_location: Any) -> dict[str, Any]:
        """A training checkpoint's contents (tensors and plain data only: ``weights_only``), which
        must have been trained on the same classes."""
        import torch

        ckpt = torch.load(checkpoint, map_location=map_location, weights_only=True)
        check_checkpoint_classes(checkpoint, ckpt["meta"].get("classes"), meta.get("classes"))
        return ckpt


class TorchAlgorithm(TorchModelIO, Algorithm):
    """The epoch loop shared by every PyTorch algorithm. Subclasses provide the model, the
    loaders, the loss of one batch and the evaluation."""

    data_type = "image"
    framework = "pytorch"
    Hyperparameters = TorchHyperparameters
    data_tasks: tuple[str, ...] = ()  # dataset tasks (kiln.data) this algorithm trains on

    # -- hooks -----------------------------------------------------------------------------------
    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self, meta: dict[str, Any]) -> Any:
        raise NotImplementedError

    def loader(self, data: TrainData, split: str, hp: Any, meta: dict[str, Any], *, shuffle: bool,
               generator: Any = None) -> Any:
        raise NotImplementedError

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Any, dict[str, float]]:
        """(loss tensor, extra running sums such as ``correct``/``count``) for one training batch."""
        raise NotImplementedError

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        raise NotImplementedError

    def optimizer(self, params: list[Any], hp: Any) -> Any:
        import torch

        return torch.optim.SGD(params, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)

    # -- loop ------------------------------------------------------------------------------------
    def train(self, data: TrainData, hp: Any = None, *, callbacks: ReportCallback | None = None,
              workdir: Path | None = None, resume_from: Path | None = None,
              pretrained: str | Path | None = None) -> TrainedModel:
        import torch

        hp, device, meta = self.training_setup(data, hp)
        torch.manual_seed(hp.seed)
        model = self.build_model(meta)
        if pretrained is not None and resume_from is None:
            meta["pretrained_skipped"] = load_pretrained(model, pretrained)
        model.to(device)
        opt = self.optimizer([p for p in model.parameters() if p.requires_grad], hp)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs)
        start, history = 1, []
        if resume_from is not None:
            ckpt = self.resume_state(latest_checkpoint(Path(resume_from)), meta, device)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            start, history = int(ckpt["epoch"]) + 1, [tuple(h) for h in ckpt.get("history", [])]
        reporter, hist_cb = self._reporter(callbacks, workdir)
        hist_cb.history.extend(history)
        has_val = data.has_split("validation")
        best = BestWeights(callbacks, torch_snapshot(model))
        try:
            for epoch in range(start, hp.epochs + 1):
                model.train()
                g = torch.Generator().manual_seed(hp.seed * 1_000_003 + epoch)
                sums: dict[str, float] = {}
                n_batches, loss_sum, t0 = 0, 0.0, time.perf_counter()
                for batch in self.loader(data, "train", hp, meta, shuffle=True, generator=g):
                    loss, extra = self.batch_loss(model, batch, device)
                    loss_sum += optimiser_step(self.name, opt, loss, f"epoch {epoch}")
                    n_batches += 1
                    for k, v in extra.items():
                        sums[k] = sums.get(k, 0.0) + v
                sched.step()
                scores = {"train_loss": loss_sum / max(n_batches, 1),
                          "train_seconds": time.perf_counter() - t0,
                          "learning_rate": opt.param_groups[0]["lr"]}
                if sums.get("count"):
                    scores["train_accuracy"] = sums["correct"] / sums["count"]
                if has_val:
                    scores.update(self.evaluate_native(model, data, "validation", meta, hp))
                if workdir is not None and checkpoint_due(callbacks, epoch, last=epoch == hp.epochs):
                    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "meta": meta,
                             "history": [list(h) for h in hist_cb.history] + [[epoch, scores]]}
                    atomic_save(Path(workdir) / "checkpoints" / f"epoch-{epoch:04d}.pt",
                                functools.partial(torch.save, state))
                reporter.report(epoch, scores)
                best.offer(epoch, scores)
        finally:
            reporter.close()
        meta["checkpoint"] = best.finish(hp.epochs, model.load_state_dict)
        model.eval()
        return TrainedModel(self.name, model, hp.model_dump(), meta, hist_cb.history)



# ---------------------------------------------------------------------------------------------
# classification

class ImageClassificationDataset:
    """Decodes image files to normalised ``3 x S x S`` tensors (grayscale becomes RGB)."""

    def __init__(self, paths: list[Path], targets: list[int], size: int) -> None:
        self.paths, self.targets, self.size = paths, targets, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return to_tensor(im, self.size), self.targets[i]


def to_tensor(im: Any, size: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


class ClassificationHyperparameters(TorchHyperparameters):
    input_size: int = Field(224, ge=8, le=2048, description="images are resized to input_size x input_size")


class TorchvisionClassifier(TorchAlgorithm):
    """Shared code for torchvision classification architectures."""

    task = "classification"
    data_tasks = ("classification",)
    arch: str
    Hyperparameters = ClassificationHyperparameters

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        classes = data.classes
        if len(classes) < 2:
            raise AlgorithmError(f"algorithm {self.name}: need at least 2 classes, found {classes}")
        return {"arch": self.arch, "classes": classes, "input_size": hp.input_size}

    def build_model(self, meta: dict[str, Any]) -> Any:
        import torchvision

        return torchvision.models.get_model(meta["arch"], weights=None, num_classes=len(meta["classes"]))

    def dataset(self, data: TrainData, split: str, meta: dict[str, Any]) -> ImageClassificationDataset:
        index = {c: i for i, c in enumerate(meta["classes"])}
        items = data.labelled_items(split)
        unknown = sorted({it.label for it in items if it.label not in index})
        if unknown:
            raise AlgorithmError(f"{split} images have labels the model was not trained on: {unknown}")
        return ImageClassificationDataset([data.content.abspath(it.path) for it in items],
                                          [index[it.label] for it in items], meta["input_size"])

    def loader(self, data: TrainData, split: str, hp: Any, meta: dict[str, Any], *, shuffle: bool,
               generator: Any = None) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset(data, split, meta), batch_size=hp.batch_size, shuffle=shuffle,
                          generator=generator, num_workers=hp.num_workers,
                          persistent_workers=False, drop_last=False)

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Any, dict[str, float]]:
        import torch.nn.functional as F

        x, y = batch[0].to(device), batch[1].to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        return loss, {"correct": float((out.argmax(1) == y).sum()), "count": float(len(y))}

    def _logits(self, model: Any, batches: Iterator[Any], device: Any) -> tuple[list[int], list[int], float]:
        import torch
        import torch.nn.functional as F

        preds: list[int] = []
        ys: list[int] = []
        loss_sum, n = 0.0, 0
        model.eval()
        with torch.inference_mode():
            for x, y in batches:
                out = model(x.to(device))
                loss_sum += float(F.cross_entropy(out, y.to(device), reduction="sum"))
                n += len(y)
                preds.extend(out.argmax(1).cpu().tolist())
                ys.extend(y.tolist())
        return preds, ys, loss_sum / max(n, 1)

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        device = next(model.parameters()).device
        preds, ys, loss = self._logits(model, self.loader(data, split, hp, meta, shuffle=False), device)
        m, art = M.classification(ys, preds, list(range(len(meta["classes"]))))
        art["labels"] = list(meta["classes"])
        m["loss"] = loss
        return Evaluation(M.prefixed(split, m), art)

    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """The network's input for image paths or PIL images: ``N x 3 x S x S``, normalised as in
        training (what ``kiln infer``, ``kiln report`` and the ONNX check feed it)."""
        import torch
        from PIL import Image

        if isinstance(inputs, torch.Tensor):
            return inputs
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        tensors = []
        for x in inputs:
            if isinstance(x, (str, Path)):
                with Image.open(x) as im:
                    tensors.append(to_tensor(im, model.meta["input_size"]))
            else:
                tensors.append(to_tensor(x, model.meta["input_size"]))
        return torch.stack(tensors)

    def probabilities(self, model: TrainedModel, inputs: Any) -> Any:
        """Image paths / PIL images -> ``N x K`` class probabilities (numpy), K = ``meta["classes"]``:
        what every image classifier offers ``kiln infer`` and the report's curves, whatever its
        framework returns."""
        import torch

        net = model.native.eval()
        device = next(net.parameters()).device
        with torch.inference_mode():
            return torch.softmax(net(self.input_batch(model, inputs).to(device)), 1).cpu().numpy()

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Image paths / PIL images -> ``[{"label", "score"}]`` (top-1, softmax score)."""
        prob = self.probabilities(model, inputs)
        return [{"label": model.meta["classes"][int(p.argmax())], "score": float(p.max())} for p in prob]

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """ONNX file with input ``input`` (N x 3 x S x S, normalised) and output ``logits``."""
        import torch

        x = self.input_batch(model, sample)[:1].cpu()
        net = model.native.eval().cpu()
        path = Path(path)

        def write(tmp: str) -> None:
            import warnings

            with warnings.catch_warnings():  # dynamo=False is deliberate: one file, no onnxscript
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (x,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)

        atomic_save(path, write)
        return path

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        import torch

        net = model.native.eval().cpu()
        with torch.inference_mode():
            return [net(self.input_batch(model, sample)).numpy()]


class ResNet18(TorchvisionClassifier):
    """ResNet-18 image classifier (torchvision)."""

    name, arch = "resnet18", "resnet18"


class ResNet50(TorchvisionClassifier):
    """ResNet-50 image classifier (torchvision)."""

    name, arch = "resnet50", "resnet50"


class ResNet101(TorchvisionClassifier):
    """ResNet-101 image classifier (torchvision)."""

    name, arch = "resnet101", "resnet101"


class DenseNet121(TorchvisionClassifier):
    """DenseNet-121 image classifier (torchvision)."""

    name, arch = "densenet121", "densenet121"


class EfficientNetB0(TorchvisionClassifier):
    """EfficientNet-B0 image classifier (torchvision)."""

    name, arch = "efficientnet_b0", "efficientnet_b0"


class EfficientNetB1(TorchvisionClassifier):
    """EfficientNet-B1 image classifier (torchvision)."""

    name, arch = "efficientnet_b1", "efficientnet_b1"
