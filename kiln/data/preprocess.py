"""Preprocessing operations: one registry ``OPS`` (name -> op class with pydantic params).

Tabular ops (sklearn / pandas) are *fitted* on the training rows only, then transform every row
(validation and test included), so no statistic of the held-out rows leaks into the features.
With a ``split``, the assignment of rows to train/validation/test is decided once, before the
first op, and travels with the rows (a sort moves it along); it is written as the version's split
manifest, which training, evaluation and ``kiln infer`` read, so the rows a scaler learnt from are
the version's train rows. The fitted pipeline is saved beside the produced dataset and copied into
every model trained on it, so training, serving and batch inference apply the same transform::

    <out_dir>/.kiln/preprocess.json     {"ops": [{"name": "MinMaxScaler", "params": {...}}, ...]}
    <out_dir>/.kiln/preprocess.joblib   the fitted op objects; ``load_pipeline(out_dir).transform(df)``
    <out_dir>/.kiln/lineage.json        {"parent": "<content hash of the input>", "ops": [...],
                                         "fittedOn": {"split": "train", "rows": 142} (split data)}
    <out_dir>/.kiln/splits.json         the rows' split (``kiln.data.splits`` manifest; split data)

Image ops run on torchvision ``transforms.v2`` functionals over tv_tensors, so an image, its
``BoundingBoxes`` and its ``Mask``s move together. They are deterministic (fixed parameters) so a
dataset version is reproducible; only the flips take a probability ``p``, drawn per item from
``seed``. Instance shapes come out as RLE (polygons are rasterised); boxes of instances are
recomputed from their masks, boxes without masks are transformed and clamped, and objects that
leave the image are dropped. imgaug's augmenter names (``Fliplr``, ``Multiply``, ``Affine``,
``pillike.Equalize`` ...) are accepted with imgaug's parameter names; imgaug itself is not used
(it does not import on numpy 2).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from kiln.data.errors import DatasetFormatError
from kiln.data.formats import _masks
from kiln.data.formats import export as export_fmt
from kiln.data.formats._base import write_dataset_json
from kiln.data.formats.csv import infer_schema
from kiln.data.model import Annotation, DatasetContent, TabularData
from kiln.data.splits import split_rows


class _P(BaseModel):
    # defer_build: each op's Params is built when first used, not when a dataset step imports
    # this module (about 40 ms of every `kiln step dataset.*` start otherwise)
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Op:
    """Base: ``Params`` validates the parameters; ``kind`` is tabular or image."""

    kind: ClassVar[str] = ""
    Params: ClassVar[type[_P]] = _P

    def __init__(self, params: _P) -> None:
        self.params = params


# ------------------------------------------------------------------------------------ tabular --
class TabularOp(Op):
    """Fit on the training table, then ``transform`` any table with the same columns (serving).
    ``label`` is never touched unless named explicitly."""

    kind = "tabular"

    def fit_transform(self, df, label: str | None):
        self.fit(df, label)
        return self.transform(df)

    def fit(self, df, label: str | None) -> None:
        pass

    def transform(self, df):  # pragma: no cover - interface
        raise NotImplementedError

    def _cols(self, df, label: str | None, kinds: str = "numeric") -> list[str]:
        cols = getattr(self.params, "columns", None)
        if cols:
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise DatasetFormatError(f"op {type(self).__name__}", f"unknown column(s) {missing}; columns: {list(df.columns)}")
            return list(cols)
        if kinds == "numeric":
            return [c for c in df.columns if c != label and df[c].dtype.kind in "iuf"]
        return [c for c in df.columns if c != label and df[c].dtype.kind in "Ob"]


class _ColumnsP(_P):
    columns: list[str] | None = None


class _SklearnColumns(TabularOp):
    def _make(self):  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self, df, label):
        self.cols = self._cols(df, label)
        self.est = self._make().fit(df[self.cols])

    def transform(self, df):
        df = df.copy()
        df[self.cols] = self.est.transform(df[self.cols])
        return df


class MinMaxScalerOp(_SklearnColumns):
    class Params(_ColumnsP):
        feature_range: tuple[float, float] = (0.0, 1.0)

    def _make(self):
        from sklearn.preprocessing import MinMaxScaler

        return MinMaxScaler(feature_range=self.params.feature_range)


class StandardScalerOp(_SklearnColumns):
    Params = _ColumnsP

    def _make(self):
        from sklearn.preprocessing import StandardScaler

        return StandardScaler()


class KBinsDiscretizerOp(_SklearnColumns):
    class Params(_ColumnsP):
        n_bins: int = 5
        strategy: Literal["uniform", "quantile", "kmeans"] = "quantile"

    def _make(self):
        from sklearn.preprocessing import KBinsDiscretizer

        # quantile_method only matters for the quantile strategy; scikit-learn 1.9 refuses the old
        # "warn" placeholder for the others, so it is passed only where it means something
        extra = {"quantile_method": "averaged_inverted_cdf"} if self.params.strategy == "quantile" else {}
        return KBinsDiscretizer(n_bins=self.params.n_bins, strategy=self.params.strategy, encode="ordinal", **extra)


class SimpleImputerOp(_SklearnColumns):
    class Params(_ColumnsP):
        strategy: Literal["mean", "median", "most_frequent", "constant"] = "mean"
        fill_value: float | str | None = None

    def _make(self):
        from sklearn.impute import SimpleImputer

        return SimpleImputer(strategy=self.params.strategy, fill_value=self.params.fill_value)


class KNNImputerOp(_SklearnColumns):
    class Params(_ColumnsP):
        n_neighbors: int = 5

    def _make(self):
        from sklearn.impute import KNNImputer

        return KNNImputer(n_neighbors=self.params.n_neighbors)


class _BinP(_P):
    column: str


class QcutOp(TabularOp):
    """pandas.qcut into ``q`` quantile bins (codes); the edges are kept, open-ended for serving."""

    class Params(_BinP):
        q: int = 4

    def fit(self, df, label):
        import numpy as np
        import pandas as pd

        _, edges = pd.qcut(df[self.params.column], self.params.q, retbins=True, duplicates="drop")
        self.edges = [-np.inf, *edges[1:-1], np.inf]

    def transform(self, df):
        import pandas as pd

        df = df.copy()
        df[self.params.column] = pd.cut(df[self.params.column], self.edges, labels=False)
        return df


class CutOp(QcutOp):
    """pandas.cut into ``bins`` equal-width bins or at the given edges."""

    class Params(_BinP):
        bins: int | list[float] = 4

    def fit(self, df, label):
        import numpy as np
        import pandas as pd

        _, edges = pd.cut(df[self.params.column], self.params.bins, retbins=True)
        self.edges = [-np.inf, *edges[1:-1], np.inf]


class FactorizeOp(TabularOp):
    """pandas.factorize categorical columns to integer codes; unseen values map to -1."""

    Params = _ColumnsP

    def fit(self, df, label):
        import pandas as pd

        self.maps = {}
        for c in self._cols(df, label, kinds="categorical"):
            _, uniques = pd.factorize(df[c], sort=True)
            self.maps[c] = {v: i for i, v in enumerate(uniques.tolist())}

    def transform(self, df):
        df = df.copy()
        for c, m in self.maps.items():
            df[c] = df[c].map(m).fillna(-1).astype("int64")
        return df


class SortValuesOp(TabularOp):
    """Row order only: applied when building the dataset, a no-op at serving time."""

    class Params(_P):
        by: list[str]
        ascending: bool = True

    def fit_transform(self, df, label):
        # the index is left as it was: apply_ops follows each row's split through it
        return df.sort_values(self.params.by, ascending=self.params.ascending, kind="stable")

    def transform(self, df):
        return df


class DropColumnsOp(TabularOp):
    class Params(_P):
        columns: list[str]

    def transform(self, df):
        return df.drop(columns=[c for c in self.params.columns if c in df.columns])


# -------------------------------------------------------------------------------------- image --
class ImageOp(Op):
    """``apply(sample, rng)``: sample = {"image": Image, "boxes": BoundingBoxes|None,
    "masks": Mask|None (instances), "semantic": Mask|None}; returns the same keys."""

    kind = "image"
    geometric: ClassVar[bool] = True

    def fn(self, x, rng: random.Random):  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        out = dict(sample)
        state = rng.random()  # one draw per item, shared by every tensor of the item
        keys = ("image", "boxes", "masks", "semantic") if self.geometric else ("image",)
        for k in keys:
            if out.get(k) is not None:
                out[k] = self.fn(out[k], random.Random(state))
        return out


class FlipOp(ImageOp):
    class Params(_P):
        direction: Literal["horizontal", "vertical"] = "horizontal"
        p: float = 1.0

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        if rng.random() >= self.params.p:
            return x
        return F.horizontal_flip(x) if self.params.direction == "horizontal" else F.vertical_flip(x)


class RotateOp(ImageOp):
    class Params(_P):
        degrees: float

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.rotate(x, self.params.degrees, interpolation=F.InterpolationMode.BILINEAR)


class ShiftOp(ImageOp):
    """Translate (and optionally rotate/scale) about the centre: imgaug's Affine."""

    class Params(_P):
        x: float = 0
        y: float = 0
        rotate: float = 0
        scale: float = 1.0

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        p = self.params
        return F.affine(x, angle=p.rotate, translate=[p.x, p.y], scale=p.scale, shear=[0.0, 0.0],
                        interpolation=F.InterpolationMode.BILINEAR)


class CropOp(ImageOp):
    class Params(_P):
        top: int
        left: int
        height: int
        width: int

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        p = self.params
        return F.crop(x, p.top, p.left, p.height, p.width)


class ResizeOp(ImageOp):
    class Params(_P):
        height: int
        width: int

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.resize(x, [self.params.height, self.params.width])


class _Photometric(ImageOp):
    geometric = False


class BrightnessOp(_Photometric):
    class Params(_P):
        factor: float

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.adjust_brightness(x, self.params.factor)


class ContrastOp(_Photometric):
    class Params(_P):
        factor: float

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.adjust_contrast(x, self.params.factor) if x.shape[-3] in (1, 3) else x


class GammaOp(_Photometric):
    class Params(_P):
        gamma: float

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.adjust_gamma(x, self.params.gamma)


class GrayscaleOp(_Photometric):
    class Params(_P):
        num_output_channels: Literal[1, 3] = 3

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        if x.shape[-3] == 1:
            return x
        return F.rgb_to_grayscale(x, num_output_channels=self.params.num_output_channels)


class EqualizeOp(_Photometric):
    Params = _P

    def fn(self, x, rng):
        import torchvision.transforms.v2.functional as F

        return F.equalize(x)


OPS: dict[str, type[Op]] = {
    # tabular
    "MinMaxScaler": MinMaxScalerOp,
    "StandardScaler": StandardScalerOp,
    "qcut": QcutOp,
    "cut": CutOp,
    "KBinsDiscretizer": KBinsDiscretizerOp,
    "factorize": FactorizeOp,
    "SimpleImputer": SimpleImputerOp,
    "KNNImputer": KNNImputerOp,
    "sort_values": SortValuesOp,
    "drop_columns": DropColumnsOp,
    # image
    "flip": FlipOp,
    "rotate": RotateOp,
    "brightness": BrightnessOp,
    "contrast": ContrastOp,
    "gamma": GammaOp,
    "shift": ShiftOp,
    "grayscale": GrayscaleOp,
    "crop": CropOp,
    "resize": ResizeOp,
    "equalize": EqualizeOp,
}


def _imgaug_px(v: Any) -> tuple[float, float]:
    if isinstance(v, dict):
        return float(v.get("x", 0)), float(v.get("y", 0))
    if isinstance(v, (int, float)):
        return float(v), float(v)
    raise ValueError(f"expected a number or {{'x': .., 'y': ..}}, got {v!r}")


def _imgaug_size(v: Any) -> dict[str, int]:
    """imgaug's Resize ``size``: an int, {"height", "width"}, or a pair, which imgaug reads as a
    range to sample from: only a degenerate range ([32, 32]) is reproducible, so only that is taken."""
    if isinstance(v, int):
        return {"height": v, "width": v}
    if isinstance(v, dict):
        return {"height": v["height"], "width": v["width"]}
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        if v[0] != v[1]:
            raise ValueError(f"size {list(v)} is a random range in imgaug; a dataset version must be "
                             "reproducible: give one int or {'height': H, 'width': W}")
        return {"height": v[0], "width": v[0]}
    raise ValueError(f"size must be an int, [n, n] or {{'height': H, 'width': W}}, got {v!r}")


def _imgaug_crop(p: dict[str, Any]) -> dict[str, Any]:
    px = p.pop("px")
    t, r, b, l = (px,) * 4 if isinstance(px, int) else tuple(px)
    return {"_crop_sides": (t, r, b, l)}


# imgaug augmenter name -> (kiln op, parameter adapter). Ranges/stochastic parameters are refused
# (a dataset version must be reproducible); flips keep imgaug's p.
IMGAUG_ALIASES: dict[str, tuple[str, Any]] = {
    "Fliplr": ("flip", lambda p: {"direction": "horizontal", "p": p.get("p", 1.0)}),
    "Flipud": ("flip", lambda p: {"direction": "vertical", "p": p.get("p", 1.0)}),
    "Rotate": ("rotate", lambda p: {"degrees": p["rotate"]}),
    "Multiply": ("brightness", lambda p: {"factor": p["mul"]}),
    "GammaContrast": ("gamma", lambda p: {"gamma": p["gamma"]}),
    "Affine": ("shift", lambda p: dict(zip(("x", "y"), _imgaug_px(p.get("translate_px", 0))),
                                       rotate=p.get("rotate", 0), scale=p.get("scale", 1.0))),
    "Grayscale": ("grayscale", lambda p: {}),
    "Crop": ("crop", _imgaug_crop),
    "Resize": ("resize", lambda p: _imgaug_size(p["size"])),
    "pillike.Equalize": ("equalize", lambda p: {}),
}


# The parameters each imgaug name takes (those its adapter above reads): any other is refused,
# since imgaug's others (translate_percent, shear, alpha ...) would be silently ignored here.
IMGAUG_PARAMS: dict[str, tuple[str, ...]] = {
    "Fliplr": ("p",), "Flipud": ("p",), "Rotate": ("rotate",), "Multiply": ("mul",),
    "GammaContrast": ("gamma",), "Affine": ("translate_px", "rotate", "scale"), "Grayscale": (),
    "Crop": ("px",), "Resize": ("size",), "pillike.Equalize": (),
}
IMGAUG_REQUIRED = {"Rotate": "rotate", "Multiply": "mul", "GammaContrast": "gamma", "Crop": "px", "Resize": "size"}


def op_problems(name: str, params: dict[str, Any] | None) -> list[tuple[list[str | int], str, str | None]]:
    """Every problem of one op's parameters, as (path below ``params``, message, hint), without
    building or running anything: what ``make_op`` would refuse, for ``kiln validate``."""
    from kiln._util.suggest import did_you_mean

    params = dict(params or {})
    if name in IMGAUG_ALIASES:
        known = IMGAUG_PARAMS[name]
        out: list[tuple[list[str | int], str, str | None]] = [
            ([k], f"{name} takes no parameter {k!r}",
             did_you_mean(k, known) or (f"{name} takes {', '.join(known)}" if known else f"{name} takes none"))
            for k in params if k not in known]
        if name in IMGAUG_REQUIRED and IMGAUG_REQUIRED[name] not in params and not out:
            out.append(([IMGAUG_REQUIRED[name]], f"{name} needs parameter {IMGAUG_REQUIRED[name]!r}",
                        f"add it to params; {name} takes {', '.join(known)}"))
        if out:
            return out
        try:
            make_op(name, params)
        except DatasetFormatError as exc:
            return [([], exc.problem, f"{name} takes {', '.join(known)}" if known else None)]
        return []
    cls = OPS.get(name)
    if cls is None or cls.Params is _P and not params:
        return []  # unknown names are the spec's own error (kiln.api.dataset)
    try:
        cls.Params(**params)
    except ValidationError as e:
        model_fields = cls.Params.model_fields
        takes = f"{name} takes " + (", ".join(
            k + ("" if f.is_required() else f" (default {f.default!r})") for k, f in model_fields.items()) or "none")
        errors = e.errors(include_url=False)
        missing = [str(err["loc"][0]) for err in errors if err["type"] == "missing"]
        extra = [err for err in errors if err["type"] == "extra_forbidden"]
        out = []
        for err in errors:
            loc: list[str | int] = list(err["loc"])
            if err["type"] == "extra_forbidden":
                # one unknown name beside one missing one: surely that one, misspelt
                guess = did_you_mean(loc[-1], model_fields) or (
                    f"did you mean {missing[0]!r}?" if len(missing) == 1 and len(extra) == 1 else None)
                out.append((loc, f"{name} takes no parameter {loc[-1]!r}", guess or takes))
            elif err["type"] == "missing":
                if len(missing) == 1 and len(extra) == 1:
                    continue  # said by the misspelt one's hint
                out.append((loc, f"{name} needs parameter {loc[0]!r}", f"add it to params; {takes}"))
            else:
                out.append((loc, f"{err['msg'][0].lower()}{err['msg'][1:]}, got {err.get('input')!r}", takes))
        return out
    return []


def make_op(name: str, params: dict[str, Any] | None = None) -> Op:
    """Build an op by kiln or imgaug name; unknown names and bad params are one-line errors."""
    params = dict(params or {})
    if name in IMGAUG_ALIASES:
        target, adapt = IMGAUG_ALIASES[name]
        unknown = sorted(set(params) - set(IMGAUG_PARAMS[name]))
        if unknown:
            raise DatasetFormatError(f"op {name}", f"unknown parameter(s) {unknown}; {name} takes "
                                     f"{', '.join(IMGAUG_PARAMS[name]) or 'none'}")
        try:
            params = adapt(params)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetFormatError(f"op {name}", f"bad imgaug parameters {params}: {e}") from None
        name = target
    if name not in OPS:
        valid = sorted(OPS) + sorted(IMGAUG_ALIASES)
        raise DatasetFormatError(f"op {name}", f"unknown preprocessing op; valid: {', '.join(valid)}")
    cls = OPS[name]
    crop_sides = params.pop("_crop_sides", None)
    if crop_sides is not None:
        op = cls.__new__(cls)
        op.params = None  # type: ignore[assignment]  # resolved per image (sides depend on its size)
        op.crop_sides = crop_sides  # type: ignore[attr-defined]
        return op
    try:
        return cls(cls.Params(**params))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        raise DatasetFormatError(f"op {name}", f"{where}: {first['msg']}") from None


def _parse(ops: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for o in ops:
        if isinstance(o, str):
            out.append((o, {}))
        elif isinstance(o, (tuple, list)):
            out.append((o[0], dict(o[1] if len(o) > 1 else {})))
        elif isinstance(o, dict) and "name" in o:
            out.append((o["name"], dict(o.get("params") or {})))
        elif isinstance(o, dict) and len(o) == 1:
            (k, v), = o.items()
            out.append((k, dict(v or {})))
        else:
            raise DatasetFormatError("ops", f"cannot read op {o!r}; use {{'name': ..., 'params': {{...}}}}")
    return out


class Pipeline:
    """Fitted tabular ops, in order. Saved with the dataset; applied again at serving time."""

    def __init__(self, ops: list[TabularOp], label: str | None) -> None:
        self.ops, self.label = ops, label

    def transform(self, df):
        for op in self.ops:
            df = op.transform(df)
        return df


def load_pipeline(dataset_dir: str | os.PathLike[str]) -> Pipeline:
    import joblib

    f = Path(dataset_dir) / ".kiln" / "preprocess.joblib"
    if not f.is_file():
        raise DatasetFormatError(f, "no fitted preprocessing saved with this dataset")
    return joblib.load(f)


# ------------------------------------------------------------------------------------ apply_ops --
def apply_ops(content: DatasetContent, root: str | os.PathLike[str] | None, ops: list[Any],
              out_dir: str | os.PathLike[str], *, seed: int = 0, format: str | None = None,
              split: dict[str, Any] | None = None) -> DatasetContent:
    """Apply ``ops`` to a dataset and write the result to ``out_dir`` (in ``format``, default the
    source format). Returns the new content with ``lineage`` = parent content hash + ops.
    ``split`` ({"ratios", "seed", "stratify"}, and "items": the input rows' assignment when an
    earlier op decided it): fit tabular ops on the train rows only; the rows' assignment, moved
    with them through any reordering, is written to ``<out_dir>/.kiln/splits.json``."""

    root = Path(root) if root is not None else content.root
    content = content.model_copy(update={"root": root})
    parsed = _parse(ops)
    built = [make_op(n, p) for n, p in parsed]
    want = "tabular" if content.task == "tabular" else "image"
    for (n, _), op in zip(parsed, built):
        if op.kind != want:
            raise DatasetFormatError(f"op {n}", f"is a {op.kind} op; this dataset is {content.task}")
    lineage: dict[str, Any] = {"parent": content.content_hash(), "ops": [
        {"name": n, "params": (op.params.model_dump(mode="json") if op.params is not None else p)}
        for (n, p), op in zip(parsed, built)]}
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DatasetFormatError(out, "output folder is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".kiln-ops-", dir=out.parent))
    manifest = None
    try:
        if want == "tabular":
            new, pipeline, manifest = _apply_tabular(content, built, stage, split)
            if manifest is not None:
                lineage["fittedOn"] = {"split": "train",
                                       "rows": sum(1 for v in manifest["items"].values() if v == "train")}
        else:
            new, pipeline = _apply_images(content, built, stage, seed), None
        new.lineage = lineage
        result = export_fmt(new, stage / "export", format or content.format)
        kdir = stage / "export" / ".kiln"
        write_dataset_json(kdir / "lineage.json", lineage)
        if manifest is not None:
            write_dataset_json(kdir / "splits.json", manifest)
        if pipeline is not None:
            import joblib

            write_dataset_json(kdir / "preprocess.json", {"ops": lineage["ops"]})
            joblib.dump(pipeline, kdir / "preprocess.joblib")
        if out.exists():
            out.rmdir()
        os.replace(stage / "export", out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result.root = out
    result.lineage = lineage
    return result


def learns(name: str) -> bool:
    """Whether the op named ``name`` (a table's) is fitted on the train rows, so that the
    version's split is part of what it learnt."""
    cls = OPS.get(name)
    return cls is not None and issubclass(cls, TabularOp) and _fits(cls.__new__(cls))


def _fits(op: Op) -> bool:
    """Whether the op learns from the data (a scaler) rather than just rewriting it (a sort)."""
    cls = type(op)
    return cls.fit is not TabularOp.fit and cls.fit_transform is TabularOp.fit_transform  # type: ignore[attr-defined]


def _apply_tabular(content: DatasetContent, ops: list[Op], stage: Path, split: dict[str, Any] | None = None):
    """Run the ops; with ``split``, fitted ops learn from the rows assigned ``train``. The
    assignment is decided once (by the first op, on the rows as they came in) and each row keeps
    its split through reordering (the pandas index is the row's identity while an op runs), so the
    rows a scaler learnt from are exactly the train rows of the version, whatever the op order."""
    assert content.table is not None and content.table.frame is not None
    df, label = content.table.frame.reset_index(drop=True), content.table.label
    manifest: dict[str, Any] | None = None
    if split is not None:
        m: dict[str, Any] = {k: split[k] for k in ("seed", "ratios") if k in split}
        manifest = m
        if split.get("items") is not None:
            items, m["stratified"] = split["items"], split.get("stratified")
        else:
            items, m["stratified"] = split_rows(df, label, split["ratios"], split.get("seed", 0),
                                                split.get("stratify", True), content.table.columns,
                                                target=content.table.target)
        if sorted(items, key=int) != [str(i) for i in range(len(df))]:
            raise DatasetFormatError("splits.json", f"assigns {len(items)} rows, the table has {len(df)}")
        rows = [items[str(i)] for i in range(len(df))]
    for op in ops:
        if manifest is not None and _fits(op):
            op.fit(df[[r == "train" for r in rows]], label)  # type: ignore[attr-defined]
            df = op.transform(df)  # type: ignore[attr-defined]
        else:
            df = op.fit_transform(df, label)  # type: ignore[attr-defined]
        if manifest is not None:
            rows = [rows[i] for i in df.index]
        df = df.reset_index(drop=True)
    if manifest is not None:
        manifest["items"] = {str(i): r for i, r in enumerate(rows)}
    table = TabularData(columns=infer_schema(df, Path(content.table.source or "data.csv"), label),
                        label=label if label in df.columns else None, frame=df, source=content.table.source,
                        target=content.table.target)
    new = content.model_copy(update={"table": table, "root": stage})
    return new, Pipeline(ops, label), manifest  # type: ignore[arg-type]


def _apply_images(content: DatasetContent, ops: list[Op], stage: Path, seed: int) -> DatasetContent:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.ops import masks_to_boxes


    files = stage / "files"
    new_items = []
    for it in content.items:
        rng = random.Random(f"{seed}:{it.path}")
        with Image.open(content.abspath(it.path)) as im:
            mode = "L" if im.mode in ("L", "I", "I;16") else "RGB"
            arr = np.array(im.convert(mode))  # writable copy for torch
        h, w = arr.shape[:2]
        img = tv_tensors.Image(torch.from_numpy(arr if arr.ndim == 3 else arr[..., None]).permute(2, 0, 1).contiguous())
        sample: dict[str, Any] = {"image": img, "boxes": None, "masks": None, "semantic": None}
        anns = it.annotations
        has_shapes = bool(anns) and all(a.rle or a.polygons for a in anns)
        if anns and has_shapes:
            ms = [_masks.decode(a.rle) if a.rle else _masks.decode(_masks.polygons_to_rle(a.polygons or [], h, w)) for a in anns]
            sample["masks"] = tv_tensors.Mask(torch.from_numpy(np.stack(ms)).bool())
        elif anns:
            sample["boxes"] = tv_tensors.BoundingBoxes(
                torch.tensor([a.bbox for a in anns], dtype=torch.float32), format="XYWH", canvas_size=(h, w))
        if it.mask:
            with Image.open(content.abspath(it.mask)) as mim:
                sample["semantic"] = tv_tensors.Mask(torch.from_numpy(np.asarray(mim).astype(np.int64))[None])
        for op in ops:
            if getattr(op, "crop_sides", None) is not None:  # imgaug Crop(px=...): sides -> box
                t, r, b, l = op.crop_sides  # type: ignore[attr-defined]
                H, W = sample["image"].shape[-2:]
                op = CropOp(CropOp.Params(top=t, left=l, height=H - t - b, width=W - l - r))
            sample = op.apply(sample, rng)  # type: ignore[attr-defined]
        out_img = sample["image"].permute(1, 2, 0).numpy()
        nh, nw = out_img.shape[:2]
        dst = files / it.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(out_img[..., 0] if out_img.shape[2] == 1 else out_img).save(dst)
        new_anns = []
        if sample["masks"] is not None:
            m = sample["masks"]
            keep = m.flatten(1).any(1)
            boxes = masks_to_boxes(m[keep]) if keep.any() else torch.zeros((0, 4))
            kept = [a for a, k in zip(anns, keep.tolist()) if k]
            for a, mk, bx in zip(kept, m[keep], boxes):
                x0, y0, x1, y1 = bx.tolist()
                # masks_to_boxes gives inclusive pixel corners
                new_anns.append(Annotation(category_id=a.category_id, rle=_masks.encode(mk.numpy()),
                                           bbox=[x0, y0, x1 - x0 + 1, y1 - y0 + 1], iscrowd=a.iscrowd))
        elif sample["boxes"] is not None:
            import torchvision.transforms.v2.functional as F

            bx = F.clamp_bounding_boxes(sample["boxes"])
            for a, b in zip(anns, bx.tolist()):
                if b[2] > 0.5 and b[3] > 0.5:
                    new_anns.append(Annotation(category_id=a.category_id, bbox=[round(v, 3) for v in b], iscrowd=a.iscrowd))
        new_mask = None
        if sample["semantic"] is not None:
            new_mask = it.mask
            assert new_mask is not None  # a semantic mask was loaded from it
            mdst = files / new_mask
            mdst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample["semantic"][0].numpy().astype(np.uint8), mode="L").save(mdst)
        new_items.append(it.model_copy(update={"annotations": new_anns, "mask": new_mask, "width": nw, "height": nh}))
    return content.model_copy(update={"items": new_items, "root": files})
