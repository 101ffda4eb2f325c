"""torchvision detection, instance segmentation and semantic segmentation on the shared epoch loop.

- detection: ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_mobilenet_v3_large_fpn``, ``ssd300_vgg16``; instance segmentation:
  ``maskrcnn_resnet50_fpn``; semantic segmentation: ``deeplabv3_resnet50``, ``fcn_resnet50``.
- Models are built with ``weights=None, weights_backbone=None`` (nothing is downloaded);
  ``pretrained`` is a local state dict (see ``kiln.algorithms.vision.load_pretrained``: heads whose
  shape differs, e.g. COCO's 91 classes, are skipped).
- Category ids: torchvision detectors use label 0 for the background, so the dataset's category
  ids (sorted) become labels ``1..K`` and go back to the original ids in predictions and in the
  COCO evaluation. Semantic masks hold category ids as pixel values; sorted ids become class
  indices ``0..K-1``; pixels with an id outside the categories are ignored (255) in loss and metrics.
  Every category counts as a class, ``unlabeled``/background included.
- Evaluation: detection -> COCO ``map`` (IoU .50:.95), ``ap50``, ``ap75`` by pycocotools on all
  detections above the model's internal 0.05 score floor; instance segmentation -> ``bbox_*``
  and ``segm_*`` of the same, with ``map``/``ap50``/``ap75`` the mask (segm) values; semantic ->
  ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (+ per-category lists in the artifacts,
  named in ``artifacts["labels"]``), computed on masks at the original image size.
- Predictions: detection -> per image ``[{"label", "category_id", "score", "box": [xmin, ymin,
  xmax, ymax]}]`` above ``threshold``; instance segmentation adds ``"mask"`` (COCO compressed RLE);
  semantic -> per image an ``(H, W)`` int array of category ids at the image's size.
- ONNX: every model here exports with ``torch.onnx.export(dynamo=False)``; detection models take
  one ``3 x H x W`` image (float 0..1) and give ``boxes``, ``labels``, ``scores`` (parity tested for
  Faster R-CNN, slow); segmentation models take ``N x 3 x S x S`` (normalised) and give ``logits``.

Not done: SSD's input is fixed at 300x300 by its anchors (``min_size``/``max_size`` do not apply);
no data augmentation (the image ops live in ``kiln.data.preprocess``); multi-GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from kiln.algorithms import metrics as M
from kiln.algorithms.base import AlgorithmError, Evaluation, TrainData, TrainedModel, atomic_save
from kiln.algorithms.vision import TorchAlgorithm, TorchHyperparameters, to_tensor
from kiln.data.formats import _masks

IGNORE = 255


def open_rgb(path: Any) -> Any:
    """An image file (or a PIL image) as an RGB PIL image."""
    from PIL import Image

    if isinstance(path, (str, Path)):
        with Image.open(path) as im:
            return im.convert("RGB")
    return path.convert("RGB")


def _image_tensor(im: Any) -> Any:
    """PIL image -> ``3 x H x W`` float tensor in 0..1 (detectors normalise inside the model)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def dataset_categories(data: TrainData, name: str) -> tuple[list[int], list[str]]:
    """The dataset's category ids (sorted) and names; ids found in the annotations when the
    dataset names none. Raises when there are none (algorithm ``name`` cannot train)."""
    cats = data.content.categories
    if not cats:
        ids = sorted({a.category_id for it in data.content.items for a in it.annotations})
        cats = {i: str(i) for i in ids}
    if not cats:
        raise AlgorithmError(f"algorithm {name}: the dataset has no categories",
                             hint="label the images (boxes, shapes or masks) first")
    ids = sorted(cats)
    return ids, [cats[i] for i in ids]


# ---------------------------------------------------------------------------------------------
# detection and instance segmentation

class DetectionHyperparameters(TorchHyperparameters):
    batch_size: int = Field(2, ge=1, le=256)
    epochs: int = Field(10, ge=1, le=10_000)
    learning_rate: float = Field(0.005, gt=0, le=10)
    min_size: int = Field(512, ge=32, le=4096, description="shorter image side inside the model (R-CNN models)")
    max_size: int = Field(853, ge=32, le=8192, description="longer image side cap inside the model (R-CNN models)")
    threshold: float = Field(0.5, ge=0, le=1, description="score below which predict() drops a detection")


def annotation_boxes(annotations: list[Any], label_of: dict[int, int], w: int,
                     h: int) -> Iterator[tuple[Any, list[float], Any]]:
    """The annotations a detector trains on, each with its pixel box ``[x0, y0, x1, y1]`` clipped
    to the ``w x h`` image and its RLE mask (None without a shape): crowd regions, categories not
    in ``label_of`` and degenerate boxes (torchvision rejects them) are left out."""
    for a in annotations:
        if a.iscrowd or a.category_id not in label_of:
            continue
        rle = a.rle or (_masks.polygons_to_rle(a.polygons, h, w) if a.polygons else None)
        box = a.bbox if a.bbox is not None else (_masks.bbox(rle) if rle else None)
        if box is None:
            continue
        x, y, bw, bh = box
        x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        yield a, [x0, y0, x1, y1], rle


class DetectionDataset:
    """Images as 0..1 tensors with torchvision targets (xyxy boxes, labels 1..K, masks if asked)."""

    def __init__(self, data: TrainData, split: str, label_of: dict[int, int], masks: bool) -> None:
        self.content, self.items, self.label_of, self.masks = data.content, data.items(split), label_of, masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        import numpy as np
        import torch

        it = self.items[i]
        img = _image_tensor(open_rgb(self.content.abspath(it.path)))
        h, w = img.shape[1:]
        boxes, labels, masks = [], [], []
        for a, box, rle in annotation_boxes(it.annotations, self.label_of, w, h):
            if self.masks:
                if rle is None:
                    raise AlgorithmError(f"{it.path}: an annotation has a box but no shape; instance "
                                         "segmentation needs polygons or RLE masks")
                masks.append(_masks.decode(rle))
            boxes.append(box)
            labels.append(self.label_of[a.category_id])
        target: dict[str, Any] = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  "labels": torch.tensor(labels, dtype=torch.int64)}
        if self.masks:
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        return img, target


def _collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch))


class TorchvisionDetector(TorchAlgorithm):
    """Shared code for torchvision detection / instance segmentation models."""

    task = "detection"
    data_tasks: tuple[str, ...] = ("detection", "instance-segmentation")
    arch: str
    Hyperparameters = DetectionHyperparameters
    with_masks = False
    # the ONNX graph takes one unbatched image (torchvision's exportable form), the serving layer
    # sends N x 3 x S x S batches: a Deployment serves the TorchScript export instead
    onnx_servable = False

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        ids, names = dataset_categories(data, self.name)
        return {"arch": self.arch, "category_ids": ids, "classes": names,
                "min_size": hp.min_size, "max_size": hp.max_size}

    def build_model(self, meta: dict[str, Any]) -> Any:
        import torchvision

        kwargs: dict[str, Any] = {}
        if self.arch != "ssd300_vgg16":
            kwargs = {"min_size": meta["min_size"], "max_size": meta["max_size"]}
        return torchvision.models.get_model(meta["arch"], weights=None, weights_backbone=None,
                                            num_classes=len(meta["classes"]) + 1, **kwargs)

    def loader(self, data: TrainData, split: str, hp: Any, meta: dict[str, Any], *, shuffle: bool,
               generator: Any = None) -> Any:
        from torch.utils.data import DataLoader

        label_of = {cid: i + 1 for i, cid in enumerate(meta["category_ids"])}
        return DataLoader(DetectionDataset(data, split, label_of, self.with_masks), batch_size=hp.batch_size,
                          shuffle=shuffle, generator=generator, num_workers=hp.num_workers, collate_fn=_collate)

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Any, dict[str, float]]:
        images, targets = batch
        losses = model([x.to(device) for x in images], [{k: v.to(device) for k, v in t.items()} for t in targets])
        return sum(losses.values()), {}

    # -- evaluation --------------------------------------------------------------------------------
    def _detect(self, model: Any, images: list[Any]) -> list[dict[str, Any]]:
        import torch

        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            return [{k: v.cpu() for k, v in o.items()} for o in model([x.to(device) for x in images])]

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        ids = meta["category_ids"]
        items = data.items(split)
        gt: dict[str, Any] = {"images": [], "annotations": [],
                              "categories": [{"id": c, "name": n} for c, n in zip(ids, meta["classes"])]}
        dets: list[dict[str, Any]] = []
        ds = DetectionDataset(data, split, {c: i + 1 for i, c in enumerate(ids)}, self.with_masks)
        bs = max(1, hp.batch_size)
        for start in range(0, len(items), bs):
            batch = [ds[i] for i in range(start, min(start + bs, len(items)))]
            outs = self._detect(model, [b[0] for b in batch])
            for j, ((img, target), out) in enumerate(zip(batch, outs)):
                iid = start + j + 1
                h, w = img.shape[1:]
                gt["images"].append({"id": iid, "width": int(w), "height": int(h)})
                for k, (box, lab) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
                    x0, y0, x1, y1 = box
                    ann: dict[str, Any] = {"image_id": iid, "category_id": ids[lab - 1], "iscrowd": 0,
                                           "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                    if self.with_masks:
                        ann["segmentation"] = _masks.encode(target["masks"][k].numpy())
                        ann["area"] = _masks.area(ann["segmentation"])
                    gt["annotations"].append(ann)
                for k, (box, lab, score) in enumerate(zip(out["boxes"].tolist(), out["labels"].tolist(),
                                                          out["scores"].tolist())):
                    x0, y0, x1, y1 = box
                    d = {"image_id": iid, "category_id": ids[lab - 1], "score": score,
                         "bbox": [x0, y0, x1 - x0, y1 - y0]}
                    if self.with_masks:
                        d["segmentation"] = _masks.encode((out["masks"][k, 0] > 0.5).numpy())
                    dets.append(d)
        if not self.with_masks:
            return Evaluation(M.prefixed(split, M.coco(gt, dets, "bbox")), {"labels": list(meta["classes"])})
        box = M.coco(gt, [{k: v for k, v in d.items() if k != "segmentation"} for d in dets], "bbox")
        segm = M.coco(gt, dets, "segm")
        m = {**{f"bbox_{k}": v for k, v in box.items()}, **{f"segm_{k}": v for k, v in segm.items()}, **segm}
        return Evaluation(M.prefixed(split, m), {"labels": list(meta["classes"])})

    # -- inference ---------------------------------------------------------------------------------
    def _images(self, inputs: Any) -> list[Any]:
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return [_image_tensor(open_rgb(x)) for x in inputs]

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> per image a list of ``{"label", "category_id", "score", "box"}``."""
        thr = float(model.hyperparameters.get("threshold", 0.5))
        ids, names = model.meta["category_ids"], model.meta["classes"]
        out = []
        for o in self._detect(model.native, self._images(inputs)):
            found = []
            for k, (box, lab, score) in enumerate(zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist())):
                if score < thr:
                    continue
                d: dict[str, Any] = {"label": names[lab - 1], "category_id": ids[lab - 1], "score": float(score),
                                     "box": [float(v) for v in box]}
                if "masks" in o:
                    d["mask"] = _masks.encode((o["masks"][k, 0] > 0.5).numpy())
                found.append(d)
            out.append(found)
        return out

    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """The ONNX input: the first image as ``3 x H x W`` (0..1)."""
        return self._images(inputs)[0]

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        net = model.native.eval().cpu()
        o = self._detect(net, [self.input_batch(model, sample)])[0]
        return [o["boxes"].numpy(), o["labels"].numpy(), o["scores"].numpy()]

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """ONNX with input ``image`` (3 x H x W, 0..1) and outputs ``boxes``, ``labels``, ``scores``
        (+ ``masks`` for Mask R-CNN); H and W are dynamic."""
        import warnings

        import torch

        x = self.input_batch(model, sample)
        net = model.native.eval().cpu()
        outputs = ["boxes", "labels", "scores"] + (["masks"] if self.with_masks else [])
        path = Path(path)

        def write(tmp: str) -> None:
            with warnings.catch_warnings():  # tracer warnings about data-dependent shapes are expected here
                warnings.simplefilter("ignore")
                torch.onnx.export(net, ([x],), tmp, dynamo=False, input_names=["image"], output_names=outputs,
                                  dynamic_axes={"image": {1: "height", 2: "width"}}, opset_version=17)

        atomic_save(path, write)
        return path


    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """TorchScript (``torch.jit.script``, so any image size and batch) for the serving layer's torch
        runtime: ``N x 3 x S x S`` (0..1, S = ``min_size``; the model normalises inside) -> per image
        ``{"boxes"`` (pixel xyxy), ``"scores"``, ``"labels"`` (0-based class indices)``}``. Returns the
        serving keys that differ from the defaults."""
        import torch

        s = int(model.meta["min_size"])
        scripted = torch.jit.script(_serving_detector(model.native.eval().cpu()))
        atomic_save(Path(path), lambda tmp: scripted.save(tmp))
        return {"image": {"size": [s, s], "mode": "RGB"}, "labels": [str(c) for c in model.meta["classes"]],
                "threshold": float(model.hyperparameters.get("threshold", 0.5))}


def _serving_detector(net: Any) -> Any:
    """A torchvision detector taking one batched tensor (the serving layer stacks its requests)."""
    from typing import Dict, List  # noqa: F401, UP035 - TorchScript resolves the annotations here

    import torch

    class ServingDetector(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> List[Dict[str, torch.Tensor]]:  # noqa: UP006
            images = [x[i] for i in range(x.shape[0])]
            dets = self.net(images)[1]  # scripted torchvision detectors return (losses, detections)
            for d in dets:
                d["labels"] = d["labels"] - 1  # 0 is the background class inside the model
            return dets

    return ServingDetector(net)


class FasterRCNN(TorchvisionDetector):
    """Faster R-CNN with a ResNet-50 FPN backbone (torchvision)."""

    name, arch = "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"


class FasterRCNNMobileNet(TorchvisionDetector):
    """Faster R-CNN with a MobileNetV3-Large FPN backbone (torchvision): the quickest detector here on CPU."""

    name, arch = "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_fpn"


class SSD300(TorchvisionDetector):
    """SSD300 with a VGG16 backbone (torchvision); images are resized to 300x300 inside the model."""

    name, arch = "ssd300_vgg16", "ssd300_vgg16"


class MaskRCNN(TorchvisionDetector):
    """Mask R-CNN with a ResNet-50 FPN backbone (torchvision); COCO polygons/RLE -> masks."""

    name, arch = "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn"
    task = "instance-segmentation"
    data_tasks = ("instance-segmentation",)
    with_masks = True


# ---------------------------------------------------------------------------------------------
# semantic segmentation

class SegmentationHyperparameters(TorchHyperparameters):
    batch_size: int = Field(4, ge=2, le=256, description="at least 2: BatchNorm in the heads needs it")
    epochs: int = Field(10, ge=1, le=10_000)
    learning_rate: float = Field(0.01, gt=0, le=10)
    input_size: int = Field(520, ge=32, le=4096, description="images and masks are resized to input_size^2")
    aux_loss: bool = Field(False, description="train the auxiliary FCN head on layer3 (loss weight 0.5)")


class SegmentationDataset:
    """Normalised ``3 x S x S`` images and ``S x S`` int64 class-index masks (255 = ignore)."""

    def __init__(self, data: TrainData, split: str, lut: Any, size: int) -> None:
        self.content, self.items, self.lut, self.size = data.content, data.items(split), lut, size
        missing = [it.path for it in self.items if not it.mask]
        if missing:
            raise AlgorithmError(f"{split} image {missing[0]} has no mask"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                 hint="semantic segmentation needs a mask PNG per image")

    def __len__(self) -> int:
        return len(self.items)

    def mask(self, i: int, size: int | None) -> Any:
        import numpy as np
        from PIL import Image

        with Image.open(self.content.abspath(self.items[i].mask)) as m:  # type: ignore[arg-type]
            if size is not None and m.size != (size, size):
                m = m.resize((size, size), Image.Resampling.NEAREST)
            return self.lut[np.asarray(m, dtype=np.int64)]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        img = to_tensor(open_rgb(self.content.abspath(self.items[i].path)), self.size)
        return img, torch.from_numpy(self.mask(i, self.size))


def category_lut(ids: list[int]) -> Any:
    """Pixel value (category id, any uint16) -> class index; unknown ids -> IGNORE."""
    import numpy as np

    lut = np.full(65536, IGNORE, dtype=np.int64)
    for i, cid in enumerate(ids):
        lut[cid] = i
    return lut


def segmentation_evaluation(class_maps: Callable[[list[Any]], list[Any]], data: TrainData, ds: Any, split: str,
                            meta: dict[str, Any], batch_size: int) -> Evaluation:
    """Segmentation metrics of a model on ``ds`` (a dataset with ``items`` and ``mask``), in
    batches of ``batch_size`` images; ``class_maps(images)`` is the model's per-pixel class indices."""
    preds, labels = [], []
    for start in range(0, len(ds), batch_size):
        idx = range(start, min(start + batch_size, len(ds)))
        preds.extend(class_maps([open_rgb(data.content.abspath(ds.items[i].path)) for i in idx]))
        labels.extend(ds.mask(i, None) for i in idx)
    m, art = M.segmentation(preds, labels, len(meta["classes"]), ignore_index=IGNORE)
    art["labels"] = list(meta["classes"])
    return Evaluation(M.prefixed(split, m), art)


def segmentation_predict(class_maps: Callable[[list[Any]], list[Any]], meta: dict[str, Any], inputs: Any) -> list:
    """Paths / PIL images -> per image an ``(H, W)`` int array of category ids."""
    import numpy as np

    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    ids = np.asarray(meta["category_ids"], dtype=np.int64)
    return [ids[m] for m in class_maps([open_rgb(x) for x in inputs])]


class TorchvisionSegmenter(TorchAlgorithm):
    """Shared code for torchvision semantic segmentation models."""

    task = "semantic-segmentation"
    data_tasks = ("semantic-segmentation",)
    arch: str
    Hyperparameters = SegmentationHyperparameters

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        ids, names = dataset_categories(data, self.name)
        if len(ids) < 2:
            raise AlgorithmError(f"algorithm {self.name}: need at least 2 categories, found {names}")
        return {"arch": self.arch, "category_ids": ids, "classes": names, "input_size": hp.input_size,
                "aux_loss": hp.aux_loss}

    def build_model(self, meta: dict[str, Any]) -> Any:
        import torchvision

        return torchvision.models.get_model(meta["arch"], weights=None, weights_backbone=None,
                                            num_classes=len(meta["classes"]), aux_loss=meta["aux_loss"])

    def dataset(self, data: TrainData, split: str, meta: dict[str, Any]) -> SegmentationDataset:
        return SegmentationDataset(data, split, category_lut(meta["category_ids"]), meta["input_size"])

    def loader(self, data: TrainData, split: str, hp: Any, meta: dict[str, Any], *, shuffle: bool,
               generator: Any = None) -> Any:
        from torch.utils.data import DataLoader

        ds = self.dataset(data, split, meta)
        # a last batch of one image breaks BatchNorm in the ASPP pooling branch: drop it when training
        return DataLoader(ds, batch_size=hp.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=hp.num_workers, drop_last=shuffle and len(ds) % hp.batch_size == 1)

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Any, dict[str, float]]:
        import torch.nn.functional as F

        x, y = batch[0].to(device), batch[1].to(device)
        out = model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=IGNORE)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], y, ignore_index=IGNORE)
        return loss, {}

    def _class_maps(self, model: Any, images: list[Any], size: int) -> list[Any]:
        """Per image the argmax class index map at the image's own size."""
        import torch
        import torch.nn.functional as F

        device = next(model.parameters()).device
        model.eval()
        out = []
        with torch.inference_mode():
            logits = model(torch.stack([to_tensor(im, size) for im in images]).to(device))["out"]
            for im, lg in zip(images, logits):
                w, h = im.size
                up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)
                out.append(up[0].argmax(0).cpu().numpy())
        return out

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        return segmentation_evaluation(lambda images: self._class_maps(model, images, meta["input_size"]),
                                       data, self.dataset(data, split, meta), split, meta, hp.batch_size)

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> per image an ``(H, W)`` int array of category ids."""
        return segmentation_predict(lambda images: self._class_maps(model.native, images, model.meta["input_size"]),
                                    model.meta, inputs)

    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """The network's input for image paths or PIL images: an ``N x 3 x S x S`` tensor (the
        ONNX export's input and ``native_outputs``'s)."""
        import torch

        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return torch.stack([to_tensor(open_rgb(x), model.meta["input_size"]) for x in inputs])

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        import torch

        net = model.native.eval().cpu()
        with torch.inference_mode():
            return [net(self.input_batch(model, sample))["out"].numpy()]

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """ONNX with input ``input`` (N x 3 x S x S, ImageNet-normalised) and output ``logits``
        (N x K x S x S)."""
        import warnings

        import torch

        class _Out(torch.nn.Module):
            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: Any) -> Any:
                return self.net(x)["out"]

        x = self.input_batch(model, sample)[:1]
        net = _Out(model.native.eval().cpu()).eval()
        path = Path(path)

        def write(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (x,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)

        atomic_save(path, write)
        return path


class DeepLabV3(TorchvisionSegmenter):
    """DeepLabV3 with a ResNet-50 backbone (torchvision)."""

    name, arch = "deeplabv3_resnet50", "deeplabv3_resnet50"


class FCN(TorchvisionSegmenter):
    """FCN with a ResNet-50 backbone (torchvision)."""

    name, arch = "fcn_resnet50", "fcn_resnet50"


__all__ = ["FasterRCNN", "SSD300", "MaskRCNN", "DeepLabV3", "FCN"]
