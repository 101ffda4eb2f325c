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

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from kiln.algorithms import metrics as M
from kiln.algorithms.base import AlgorithmError, Evaluation, Hyperparameters, TrainData, TrainedModel, atomic_save
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
# a small one-stage detector that learns in a minute on a CPU

class CenterNetHyperparameters(Hyperparameters):
    # not TorchHyperparameters: AdamW has no momentum to set
    batch_size: int = Field(8, ge=1, le=256, description="images per optimiser step")
    epochs: int = Field(30, ge=1, le=10_000, description="passes over the train split")
    learning_rate: float = Field(0.005, gt=0, le=10, description="AdamW learning rate (cosine schedule)")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")
    input_size: int = Field(64, ge=16, le=1024, description="images are resized to input_size^2 (a multiple of 4)")
    width: int = Field(16, ge=4, le=256, description="channels of the first stage (the second has twice, the "
                                                     "stride-4 stage four times)")
    max_detections: int = Field(32, ge=1, le=1000, description="boxes the model outputs per image (best scores)")
    flip: bool = Field(True, description="train on horizontally flipped copies at random (half of the images)")
    threshold: float = Field(0.3, ge=0, le=1, description="score below which predict() drops a detection")


STRIDE = 4  # the heatmap's cell in input pixels: shapes of 10 px are still 2-3 cells wide


def _centernet(classes: int, width: int) -> Any:
    """The network: a stride-4 CNN (torchvision's conv-norm-activation blocks, dilated convs for
    context) and two 1x1 heads per cell: a heatmap of object centres per class (logits) and the
    box (centre offset in the cell, log width and height, in cells)."""
    from torch import nn
    from torchvision.ops import Conv2dNormActivation

    def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> Any:
        return Conv2dNormActivation(cin, cout, 3, stride=stride, dilation=dilation, activation_layer=nn.ReLU)

    w = width

    class TinyCenterNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(3, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w), conv(2 * w, 4 * w, 2),
                                      conv(4 * w, 4 * w, dilation=2), conv(4 * w, 4 * w, dilation=4),
                                      conv(4 * w, 4 * w))
            self.heat = nn.Conv2d(4 * w, classes, 1)
            self.box = nn.Conv2d(4 * w, 4, 1)
            nn.init.constant_(self.heat.bias, -2.19)  # a prior of 0.1 per cell: the focal loss starts stable

        def forward(self, x: Any) -> tuple[Any, Any]:
            f = self.body(x)
            return self.heat(f), self.box(f)

    return TinyCenterNet()


def centernet_decode(heat_logits: Any, box: Any, k: int) -> tuple[Any, Any, Any]:
    """Per image the ``k`` best cells as boxes (pixel xyxy in the input frame), scores, labels
    (0-based class indices). A cell that is not the maximum of its 3x3 neighbourhood keeps a
    thousandth of its score (CenterNet's max-pool in place of NMS): it stays below any threshold
    a user keeps, and no two candidates tie (the ONNX graph ranks them as torch does)."""
    import torch
    import torch.nn.functional as F

    heat = torch.sigmoid(heat_logits)
    peak = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * torch.where(peak == heat, 1.0, 1e-3)
    n, c, h, w = heat.shape
    scores, idx = heat.reshape(n, c * h * w).topk(min(k, c * h * w), dim=1)
    labels = torch.div(idx, h * w, rounding_mode="floor")
    cell = idx - labels * (h * w)
    ys = torch.div(cell, w, rounding_mode="floor")
    xs = cell - ys * w
    reg = box.reshape(n, 4, h * w).gather(2, cell.unsqueeze(1).expand(n, 4, cell.shape[1]))
    cx = (xs.to(reg.dtype) + 0.5 + reg[:, 0]) * STRIDE
    cy = (ys.to(reg.dtype) + 0.5 + reg[:, 1]) * STRIDE
    bw = torch.exp(reg[:, 2].clamp(max=6.0)) * STRIDE
    bh = torch.exp(reg[:, 3].clamp(max=6.0)) * STRIDE
    size = float(w * STRIDE)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2).clamp(0.0, size)
    return boxes, scores, labels


class CenterNetDataset:
    """Images resized to ``S x S`` and normalised as the serving layer does (``to_tensor``), with
    their boxes (xyxy, labels 0-based) scaled to that frame; ``flips[i]`` mirrors image ``i``."""

    def __init__(self, data: TrainData, split: str, label_of: dict[int, int], size: int,
                 flips: Any = None) -> None:
        self.content, self.items, self.label_of, self.size, self.flips = (data.content, data.items(split), label_of,
                                                                         size, flips)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        import torch

        it = self.items[i]
        im = open_rgb(self.content.abspath(it.path))
        w, h = im.size
        sx, sy = self.size / w, self.size / h
        x = to_tensor(im, self.size)
        found = [(a, b) for a, b, _ in annotation_boxes(it.annotations, self.label_of, w, h)]
        t = torch.tensor([[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for _, b in found],
                         dtype=torch.float32).reshape(-1, 4)
        labels = [self.label_of[a.category_id] for a, _ in found]
        if self.flips is not None and bool(self.flips[i]):
            x = x.flip(2)
            t = torch.stack([self.size - t[:, 2], t[:, 1], self.size - t[:, 0], t[:, 3]], dim=1)
        return x, {"boxes": t, "labels": torch.tensor(labels, dtype=torch.int64), "size": (w, h)}


def centernet_targets(targets: list[dict[str, Any]], classes: int, h: int, w: int) -> tuple[Any, Any, Any]:
    """Training targets on the ``h x w`` cell grid: per class a Gaussian peak (1 at each object's
    centre cell, its spread from the box size), the box regression at centre cells, their mask."""
    import torch

    n = len(targets)
    heat = torch.zeros(n, classes, h, w)
    reg = torch.zeros(n, 4, h, w)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i, t in enumerate(targets):
        for (x0, y0, x1, y1), lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            bw, bh = max(x1 - x0, 1.0) / STRIDE, max(y1 - y0, 1.0) / STRIDE
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sx, sy = max(bw / 6, 0.5), max(bh / 6, 0.5)
            g = torch.exp(-((gx - ix) ** 2 / (2 * sx * sx) + (gy - iy) ** 2 / (2 * sy * sy)))
            heat[i, lab] = torch.maximum(heat[i, lab], g)
            reg[i, :, iy, ix] = torch.tensor([cx - ix - 0.5, cy - iy - 0.5, math.log(bw), math.log(bh)])
            mask[i, iy, ix] = True
    return heat, reg, mask


def _collate_centernet(batch: list[Any]) -> tuple[Any, list[dict[str, Any]]]:
    import torch

    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class TinyCenterNet(TorchAlgorithm):
    """A small one-stage detector (CenterNet-style heatmap head on a stride-4 CNN, torchvision ops):
    learns drawn or simple objects from scratch in about a minute on a CPU."""

    name = "tiny_centernet"
    task = "detection"
    data_tasks: tuple[str, ...] = ("detection", "instance-segmentation")
    Hyperparameters = CenterNetHyperparameters

    def make_meta(self, data: TrainData, hp: Any) -> dict[str, Any]:
        if hp.input_size % STRIDE:
            raise AlgorithmError(f"algorithm {self.name}: input_size {hp.input_size} is not a multiple of {STRIDE}",
                                 hint=f"use {hp.input_size // STRIDE * STRIDE or STRIDE * 4}")
        ids, names = dataset_categories(data, self.name)
        return {"category_ids": ids, "classes": names, "input_size": hp.input_size, "width": hp.width,
                "max_detections": hp.max_detections}

    def build_model(self, meta: dict[str, Any]) -> Any:
        return _centernet(len(meta["classes"]), int(meta["width"]))

    def optimizer(self, params: list[Any], hp: Any) -> Any:
        import torch

        return torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)

    def dataset(self, data: TrainData, split: str, meta: dict[str, Any], flips: Any = None) -> CenterNetDataset:
        return CenterNetDataset(data, split, {c: i for i, c in enumerate(meta["category_ids"])},
                                int(meta["input_size"]), flips)

    def loader(self, data: TrainData, split: str, hp: Any, meta: dict[str, Any], *, shuffle: bool,
               generator: Any = None) -> Any:
        import torch
        from torch.utils.data import DataLoader

        flips = None
        if shuffle and hp.flip:  # drawn from the epoch's generator: a resumed run flips the same images
            flips = torch.rand(len(data.items(split)), generator=generator) < 0.5
        return DataLoader(self.dataset(data, split, meta, flips), batch_size=hp.batch_size, shuffle=shuffle,
                          generator=generator, num_workers=hp.num_workers, collate_fn=_collate_centernet)

    def batch_loss(self, model: Any, batch: Any, device: Any) -> tuple[Any, dict[str, float]]:
        import torch
        import torch.nn.functional as F

        x, targets = batch
        heat_logits, box = model(x.to(device))
        n, c, h, w = heat_logits.shape
        heat, reg, mask = (t.to(device) for t in centernet_targets(targets, c, h, w))
        # CenterNet's focal loss: the centre cells are positives, their neighbours are negatives
        # weighted down by (1 - Gaussian)^4
        pos = heat.eq(1.0)
        num_pos = max(float(pos.sum()), 1.0)
        p = torch.sigmoid(heat_logits)
        log_p, log_not_p = F.logsigmoid(heat_logits), F.logsigmoid(-heat_logits)
        pos_loss = ((1 - p) ** 2 * log_p)[pos].sum()
        neg_loss = ((1 - heat) ** 4 * p ** 2 * log_not_p)[~pos].sum()
        focal = -(pos_loss + neg_loss) / num_pos
        sel = mask.unsqueeze(1).expand_as(box)
        box_loss = F.l1_loss(box[sel], reg[sel], reduction="sum") / num_pos
        return focal + box_loss, {}

    # -- evaluation --------------------------------------------------------------------------------
    def _detect(self, model: Any, x: Any, k: int) -> tuple[Any, Any, Any]:
        import torch

        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            heat, box = model(x.to(device))
            return tuple(t.cpu() for t in centernet_decode(heat, box, k))  # type: ignore[return-value]

    def evaluate_native(self, model: Any, data: TrainData, split: str, meta: dict[str, Any], hp: Any) -> Evaluation:
        import torch

        ids, size = meta["category_ids"], int(meta["input_size"])
        ds = self.dataset(data, split, meta)
        gt: dict[str, Any] = {"images": [], "annotations": [],
                              "categories": [{"id": c, "name": n} for c, n in zip(ids, meta["classes"])]}
        dets: list[dict[str, Any]] = []
        for start in range(0, len(ds), max(1, hp.batch_size)):
            batch = [ds[i] for i in range(start, min(start + max(1, hp.batch_size), len(ds)))]
            boxes, scores, labels = self._detect(model, torch.stack([b[0] for b in batch]), meta["max_detections"])
            for j, (_, target) in enumerate(batch):
                iid = start + j + 1
                w, h = target["size"]
                sx, sy = w / size, h / size
                gt["images"].append({"id": iid, "width": w, "height": h})
                for (x0, y0, x1, y1), lab in zip(target["boxes"].tolist(), target["labels"].tolist()):
                    bw, bh = (x1 - x0) * sx, (y1 - y0) * sy
                    gt["annotations"].append({"image_id": iid, "category_id": ids[lab], "iscrowd": 0,
                                              "bbox": [x0 * sx, y0 * sy, bw, bh], "area": bw * bh})
                for (x0, y0, x1, y1), s, lab in zip(boxes[j].tolist(), scores[j].tolist(), labels[j].tolist()):
                    if s >= 0.01:  # below: the max-pool's suppressed cells (a thousandth of their score) and noise
                        dets.append({"image_id": iid, "category_id": ids[lab], "score": s,
                                     "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy]})
        return Evaluation(M.prefixed(split, M.coco(gt, dets, "bbox")), {"labels": list(meta["classes"])})

    # -- inference ---------------------------------------------------------------------------------
    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """``N x 3 x S x S``, resized and normalised as the serving layer does (the ONNX input)."""
        import torch

        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return torch.stack([to_tensor(open_rgb(x), int(model.meta["input_size"])) for x in inputs])

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> per image a list of ``{"label", "category_id", "score", "box"}``
        (pixel xyxy in the image's own frame), best first, above ``threshold``."""
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        images = [open_rgb(x) for x in inputs]
        thr = float(model.hyperparameters.get("threshold", 0.3))
        ids, names, size = model.meta["category_ids"], model.meta["classes"], int(model.meta["input_size"])
        boxes, scores, labels = self._detect(model.native, self.input_batch(model, images), model.meta["max_detections"])
        out = []
        for im, b, s, lab in zip(images, boxes.tolist(), scores.tolist(), labels.tolist()):
            sx, sy = im.size[0] / size, im.size[1] / size
            out.append([{"label": names[k], "category_id": ids[k], "score": float(sc),
                         "box": [x0 * sx, y0 * sy, x1 * sx, y1 * sy]}
                        for (x0, y0, x1, y1), sc, k in zip(b, s, lab) if sc >= thr])
        return out

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        boxes, scores, labels = self._detect(model.native.eval().cpu(), self.input_batch(model, sample),
                                             model.meta["max_detections"])
        return [boxes.numpy(), scores.numpy(), labels.numpy()]

    def decoding(self, model: TrainedModel) -> Any:
        """The network with its decoding: ``N x 3 x S x S`` -> boxes, scores, labels (N x K each)."""
        import torch

        k = int(model.meta["max_detections"])

        class Decoded(torch.nn.Module):
            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: Any) -> Any:
                heat, box = self.net(x)
                return centernet_decode(heat, box, k)

        return Decoded(model.native.eval().cpu()).eval()

    def export_torchscript(self, model: TrainedModel, path: Path) -> dict[str, Any]:
        """TorchScript (traced at the model's input size) answering ``{"boxes", "scores",
        "labels"}`` of ``N x K`` tensors: the serving layer's torch runtime reads batched detections."""
        import torch

        class AsDict(torch.nn.Module):
            def __init__(self, decoded: Any) -> None:
                super().__init__()
                self.decoded = decoded

            def forward(self, x: Any) -> Any:
                boxes, scores, labels = self.decoded(x)
                return {"boxes": boxes, "scores": scores, "labels": labels}

        s = int(model.meta["input_size"])
        with warnings.catch_warnings():  # the tracer's notes on the grid size: fixed by input_size, as meant
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(AsDict(self.decoding(model)).eval(), torch.zeros(1, 3, s, s), strict=False)
        atomic_save(Path(path), lambda tmp: traced.save(tmp))
        return {}  # image size, normalisation, labels and threshold: the defaults from the meta

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """ONNX with input ``input`` (N x 3 x S x S, ImageNet-normalised) and outputs ``boxes``
        (N x K x 4, pixel xyxy in the S x S frame), ``scores`` (N x K), ``labels`` (N x K, 0-based
        class indices): the decoding is in the graph, so the serving layer batches it."""
        import torch

        x = self.input_batch(model, sample)[:1]
        net = self.decoding(model)
        names = ["boxes", "scores", "labels"]

        def write(tmp: str) -> None:
            with warnings.catch_warnings():  # dynamo=False is deliberate: one file, no onnxscript
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the grid size is fixed, as meant
                torch.onnx.export(net, (x,), tmp, dynamo=False, input_names=["input"], output_names=names,
                                  dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                                  opset_version=17)

        atomic_save(Path(path), write)
        return Path(path)


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


__all__ = ["FasterRCNN", "SSD300", "MaskRCNN", "TinyCenterNet", "DeepLabV3", "FCN"]
