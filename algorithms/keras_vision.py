"""TensorFlow / Keras 3 image classification: ``keras_resnet50`` (``keras.applications.ResNet50``,
``weights=None``) and ``keras_small_cnn`` (two conv blocks and a dense head, for small images).

Same contract as the PyTorch classifiers: ``train`` calls ``callbacks.report(epoch, ...)`` with
``train_loss``, ``train_accuracy`` and the ``validation_*`` classification metrics after every
epoch; TensorBoard scalars go to ``workdir/tensorboard``; checkpoints are whole Keras models (weights
and optimizer state), written atomically after each epoch, with the reports so far beside them::

    workdir/checkpoints/epoch-0003.keras
    workdir/checkpoints/epoch-0003.json   {"epoch": 3, "history": [[1, {...}], ...]}

``resume_from`` (a ``.keras`` checkpoint or the folder) reloads the model with its optimizer and
continues with ``initial_epoch``. Batches come from a ``keras.utils.PyDataset`` that decodes image
files per batch and reshuffles every epoch from ``(seed, epoch)``; Keras's own prefetching makes the
order after a resume equal only when the epoch hook runs before the first batch, so unlike the
PyTorch loop a resumed run is not promised to be bit-identical to an uninterrupted one.

``pretrained``: a local ``.weights.h5`` or ``.keras`` file; layers whose shapes differ (the class
head) are skipped. ``save`` writes ``model.keras`` and ``meta.json``; ``load`` uses Keras's safe mode
(no arbitrary code). ``export_onnx`` goes through tf2onnx (input ``input``, N x S x S x 3,
preprocessed; output the class probabilities). tf2onnx's ONNX optimizer passes run without its
"catch errors" copies (``_tf2onnx_without_graph_copies``): ResNet-50 at 32 px peaked at 6.5-7.8 GB
and took 74 s, now 4.5 GB and 26 s (tf2onnx 1.17).

Preprocessing: ResNet-50 uses ``keras.applications.resnet50.preprocess_input`` (caffe-style, so
ImageNet Keras weights fit); the small CNN scales to 0..1. Grayscale images become RGB.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from kiln._util.fs import write_json_atomic
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
    check_checkpoint_classes,
    checkpoint_due,
    latest_checkpoint_file,
    read_meta,
    write_meta,
)
from kiln.algorithms.vision import IMAGENET_MEAN, IMAGENET_STD

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
log = logging.getLogger(__name__)
_CKPT = re.compile(r"^epoch-(\d+)\.keras$")


class KerasHyperparameters(Hyperparameters):
    batch_size: int = Field(32, ge=1, le=4096)
    epochs: int = Field(10, ge=1, le=10_000)
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Adam learning rate")
    input_size: int = Field(224, ge=32, le=2048, description="images are resized to input_size x input_size")


class SmallCNNHyperparameters(KerasHyperparameters):
    input_size: int = Field(32, ge=8, le=2048, description="images are resized to input_size x input_size")
    filters: int = Field(32, ge=4, le=512, description="filters of the first conv block (the second has twice)")
    dense_units: int = Field(128, ge=8, le=8192)
    dropout: float = Field(0.25, ge=0, lt=1)


def _before_tensorflow() -> None:
    """Load Triton (torch's GPU compiler, installed with torch) before TensorFlow, when it is
    installed: with TensorFlow's LLVM loaded first, the ``import triton`` that torch does on its
    first optimizer or compile in the same process segfaults (an LLVM symbol clash). Cheap after
    the first call."""
    import contextlib

    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def _load_images(paths: list[Any], size: int) -> Any:
    import numpy as np
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.float32)
    for i, p in enumerate(paths):
        if isinstance(p, (str, Path)):
            with Image.open(p) as im:
                im = im.convert("RGB")
        else:
            im = p.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(im, dtype=np.float32)
    return out


def latest_keras_checkpoint(path: Path) -> Path:
    """``path`` itself if a file, else the highest ``epoch-NNNN.keras`` in the folder."""
    return latest_checkpoint_file(path, _CKPT, "pass a .keras checkpoint or a folder holding epoch-NNNN.keras files")


def _atomic_keras_save(model: Any, path: Path) -> None:
    """Keras insists on a ``.keras`` suffix, so the temp file is ``.<name>.tmp.keras``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class KerasClassifier(Algorithm):
    """Shared code for the Keras image classifiers."""

    task = "classification"
    data_type = "image"
    framework = "tensorflow"
    Hyperparameters = KerasHyperparameters

    # -- hooks -----------------------------------------------------------------------------------
    def build_model(self, meta: dict[str, Any], hp: Any) -> Any:
        raise NotImplementedError

    def preprocess(self, x: Any) -> Any:
        return x / 255.0

    # -- data ------------------------------------------------------------------------------------
    def _split(self, data: TrainData, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
        index = {c: i for i, c in enumerate(classes)}
        items = data.labelled_items(split)
        unknown = sorted({str(it.label) for it in items if it.label not in index})
        if unknown:
            raise AlgorithmError(f"{split} images have labels the model was not trained on: {unknown}")
        return [data.content.abspath(it.path) for it in items], [index[str(it.label)] for it in items]

    def _batches(self, paths: list[Path], targets: list[int], size: int, batch_size: int, seed: int,
                 shuffle: bool, first_epoch: int = 0) -> Any:
        _before_tensorflow()
        import keras
        import numpy as np

        algo = self

        class Batches(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__(workers=1, use_multiprocessing=False)
                self.epoch = first_epoch
                self.order = self._order()

            def _order(self) -> Any:
                if not shuffle:
                    return np.arange(len(paths))
                return np.random.default_rng((seed, self.epoch)).permutation(len(paths))

            def __len__(self) -> int:
                return math.ceil(len(paths) / batch_size)

            def __getitem__(self, i: int) -> tuple[Any, Any]:
                idx = self.order[i * batch_size:(i + 1) * batch_size]
                x = algo.preprocess(_load_images([paths[j] for j in idx], size))
                return x, np.asarray([targets[j] for j in idx], dtype=np.int64)

            def on_epoch_end(self) -> None:
                self.epoch += 1
                self.order = self._order()

        return Batches()

    # -- training --------------------------------------------------------------------------------
    def train(self, data: TrainData, hp: Any = None, *, callbacks: ReportCallback | None = None,
              workdir: Path | None = None, resume_from: Path | None = None,
              pretrained: str | Path | None = None) -> TrainedModel:
        _before_tensorflow()
        import keras

        self._check_task(data, ("classification",))
        hp = self.hyperparameters(hp)
        classes = data.classes
        if len(classes) < 2:
            raise AlgorithmError(f"algorithm {self.name}: need at least 2 classes, found {classes}")
        paths, targets = self._split(data, "train", classes)
        if not paths:
            raise AlgorithmError(f"algorithm {self.name}: the dataset has no train images")
        meta: dict[str, Any] = {"classes": classes, "input_size": hp.input_size}
        keras.utils.set_random_seed(hp.seed)
        start, history = 0, []
        if resume_from is not None:
            ckpt = latest_keras_checkpoint(Path(resume_from))
            model = self._load_keras(ckpt)
            side = ckpt.with_suffix(".json")
            info = json.loads(side.read_text()) if side.is_file() else {}
            start = int(info.get("epoch", _CKPT.match(ckpt.name).group(1) if _CKPT.match(ckpt.name) else 0))
            check_checkpoint_classes(ckpt, info.get("classes", classes), classes)
            history = [tuple(h) for h in info.get("history", [])]
        else:
            model = self.build_model(meta, hp)
            if pretrained is not None:
                self._load_pretrained(model, Path(pretrained))
            model.compile(optimizer=keras.optimizers.Adam(hp.learning_rate),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        reporter, hist_cb = self._reporter(callbacks, workdir)
        hist_cb.history.extend(history)
        has_val = data.has_split("validation")
        val = self._split(data, "validation", classes) if has_val else None
        algo = self
        best = BestWeights(callbacks, model.get_weights)  # numpy copies

        class Report(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                scores = {"train_loss": float(logs.get("loss", float("nan"))),
                          "train_accuracy": float(logs.get("accuracy", float("nan"))),
                          "train_seconds": time.perf_counter() - self.t0}
                if not math.isfinite(scores["train_loss"]):
                    raise AlgorithmError(f"algorithm {algo.name}: training diverged (loss {scores['train_loss']}) "
                                         f"at epoch {epoch + 1}", hint="lower learning_rate")
                if val is not None:
                    scores.update(algo._evaluate(self.model, val[0], val[1], "validation", meta, hp.batch_size))
                if workdir is not None and checkpoint_due(callbacks, epoch + 1, last=epoch + 1 == hp.epochs):
                    ck = Path(workdir) / "checkpoints" / f"epoch-{epoch + 1:04d}.keras"
                    info = {"epoch": epoch + 1, "classes": classes,
                            "history": [list(h) for h in hist_cb.history] + [[epoch + 1, scores]]}
                    write_json_atomic(ck.with_suffix(".json"), info, indent=None, sort_keys=False)
                    _atomic_keras_save(self.model, ck)
                reporter.report(epoch + 1, scores)
                best.offer(epoch + 1, scores)

        try:
            if start < hp.epochs:
                model.fit(self._batches(paths, targets, hp.input_size, hp.batch_size, hp.seed, True, start),
                          epochs=hp.epochs, initial_epoch=start, callbacks=[Report()], verbose=0)
        finally:
            reporter.close()
        meta["checkpoint"] = best.finish(hp.epochs, model.set_weights)
        return TrainedModel(self.name, model, hp.model_dump(), meta, hist_cb.history)

    def _load_pretrained(self, model: Any, path: Path) -> None:
        if not path.is_file():
            raise AlgorithmError(f"pretrained weights {path} do not exist",
                                 hint="pretrained is a local .weights.h5 or .keras file; kiln never downloads weights")
        import warnings

        try:
            with warnings.catch_warnings():  # Keras warns once per skipped layer (the head): expected
                warnings.simplefilter("ignore")
                model.load_weights(str(path), skip_mismatch=True)
        except Exception as e:  # noqa: BLE001 - any reader failure is the same user problem
            raise AlgorithmError(f"pretrained weights {path} cannot be read: {e}",
                                 hint="save them with model.save_weights('x.weights.h5')") from None

    def _load_keras(self, path: Path) -> Any:
        _before_tensorflow()
        import keras

        try:
            return keras.models.load_model(str(path), safe_mode=True)
        except Exception as e:  # noqa: BLE001
            raise AlgorithmError(f"{path}: cannot load the Keras model: {e}") from None

    # -- evaluation / inference --------------------------------------------------------------------
    def _probabilities(self, net: Any, paths: list[Any], size: int, batch_size: int) -> Any:
        import numpy as np

        if not paths:
            return np.zeros((0, 0), dtype=np.float32)
        out = [np.asarray(net(self.preprocess(_load_images(paths[s:s + batch_size], size)), training=False))
               for s in range(0, len(paths), batch_size)]
        return np.concatenate(out)

    def _evaluate(self, net: Any, paths: list[Path], targets: list[int], split: str, meta: dict[str, Any],
                  batch_size: int) -> dict[str, float]:
        import numpy as np

        prob = self._probabilities(net, paths, meta["input_size"], batch_size)
        preds = prob.argmax(1).tolist()
        m, _ = M.classification(targets, preds, list(range(len(meta["classes"]))))
        m["loss"] = float(-np.mean(np.log(np.clip(prob[np.arange(len(targets)), targets], 1e-12, 1.0))))
        return M.prefixed(split, m)

    def evaluate(self, model: TrainedModel, data: TrainData, split: str = "test") -> Evaluation:
        if not data.has_split(split):
            raise AlgorithmError(f"dataset has no {split!r} images to evaluate on")
        paths, targets = self._split(data, split, model.meta["classes"])
        prob = self._probabilities(model.native, paths, model.meta["input_size"], 64)
        m, art = M.classification(targets, prob.argmax(1).tolist(), list(range(len(model.meta["classes"]))))
        import numpy as np

        m["loss"] = float(-np.mean(np.log(np.clip(prob[np.arange(len(targets)), targets], 1e-12, 1.0))))
        art["labels"] = list(model.meta["classes"])
        return Evaluation(M.prefixed(split, m), art)

    def probabilities(self, model: TrainedModel, inputs: Any) -> Any:
        """Paths / PIL images -> ``N x K`` class probabilities (numpy)."""
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return self._probabilities(model.native, list(inputs), model.meta["input_size"], 64)

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        """Paths / PIL images -> ``[{"label", "score"}]`` (top-1 probability)."""
        prob = self.probabilities(model, inputs)
        return [{"label": model.meta["classes"][int(p.argmax())], "score": float(p.max())} for p in prob]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, model: TrainedModel, path: Path) -> Path:
        path = Path(path)
        _atomic_keras_save(model.native, path / "model.keras")
        write_meta(path, {"algorithm": self.name, "hyperparameters": model.hyperparameters, **model.meta})
        return path

    def load(self, path: Path) -> TrainedModel:
        meta = read_meta(Path(path), self.name)
        hp = meta.pop("hyperparameters")
        meta.pop("algorithm")
        return TrainedModel(self.name, self._load_keras(Path(path) / "model.keras"), hp, meta)

    # -- ONNX ------------------------------------------------------------------------------------
    def input_batch(self, model: TrainedModel, inputs: Any) -> Any:
        """The ONNX file's input for image paths or PIL images: what the serving layer sends every
        image model, ``N x 3 x S x S`` pixels / 255 normalised by the ImageNet mean and std (the
        exported graph turns it back into this network's own input)."""
        import numpy as np

        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        x = _load_images(list(inputs), model.meta["input_size"]) / 255.0
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        import numpy as np

        if not isinstance(sample, (list, tuple)):
            sample = [sample]
        x = self.preprocess(_load_images(list(sample), model.meta["input_size"]))
        return [np.asarray(model.native(x, training=False))]

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """tf2onnx: input ``input`` (N x 3 x S x S, ImageNet-normalised, as the serving layer sends
        every image model: ``input_batch``), output ``probabilities``. The graph turns the input
        back into pixels, NHWC, and applies this network's own preprocessing: a Keras network's
        NHWC input served the NCHW batches and failed every request."""
        _before_tensorflow()
        import tensorflow as tf
        import tf2onnx

        s = model.meta["input_size"]
        net = model.native

        @tf.function(input_signature=[tf.TensorSpec((None, 3, s, s), tf.float32, name="input")])
        def serve(x: Any) -> Any:
            # constants made inside the function: captured ones become graph inputs in tf2onnx
            mean = tf.constant(IMAGENET_MEAN, tf.float32, shape=(1, 3, 1, 1))
            std = tf.constant(IMAGENET_STD, tf.float32, shape=(1, 3, 1, 1))
            pixels = tf.transpose((x * std + mean) * 255.0, [0, 2, 3, 1])
            return {"probabilities": net(self.preprocess(pixels), training=False)}

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            try:
                with _tf2onnx_without_graph_copies():
                    tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17,
                                                  output_path=str(tmp))
            except Exception as exc:  # noqa: BLE001 - an optimizer pass failed: tf2onnx's own way, which skips it
                log.warning("tf2onnx failed without its per-pass graph copies (%s: %s); converting again with them "
                            "(several GB more memory)", type(exc).__name__, str(exc)[:200])
                tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17,
                                              output_path=str(tmp))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


@contextlib.contextmanager
def _tf2onnx_without_graph_copies() -> Iterator[None]:
    """tf2onnx's ONNX optimizer deep-copies the whole graph, weights included, before each of its
    ~12 passes and each of their rounds, so that a failing pass can be skipped
    (``optimizer.optimize_graph(catch_errors=True)``, its default for models under 2 GB). On
    ResNet-50 those copies were 5 of the export's 7.8 GB peak and 50 of its 74 s. Its switch is an
    environment variable, set here for the call only; a pass that fails then raises, and the
    caller converts again the default way."""
    from tf2onnx import constants

    key = constants.ENV_TF2ONNX_CATCH_ERRORS
    before = os.environ.get(key)
    os.environ[key] = "FALSE"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


class KerasResNet50(KerasClassifier):
    """ResNet-50 image classifier (Keras ``applications.ResNet50``, TensorFlow)."""

    name = "keras_resnet50"

    def build_model(self, meta: dict[str, Any], hp: Any) -> Any:
        _before_tensorflow()
        import keras

        s = meta["input_size"]
        return keras.applications.ResNet50(weights=None, input_shape=(s, s, 3), classes=len(meta["classes"]))

    def preprocess(self, x: Any) -> Any:
        _before_tensorflow()
        import keras

        # numpy batches are copied (preprocess_input works in place); graph tensors are not arrays
        return keras.applications.resnet50.preprocess_input(x.copy() if hasattr(x, "copy") else x)


class KerasSmallCNN(KerasClassifier):
    """Small CNN image classifier (Keras, TensorFlow): two conv blocks, a dense layer, dropout."""

    name = "keras_small_cnn"
    Hyperparameters = SmallCNNHyperparameters

    def build_model(self, meta: dict[str, Any], hp: Any) -> Any:
        _before_tensorflow()
        import keras
        from keras import layers

        s, f = meta["input_size"], hp.filters
        return keras.Sequential([
            keras.Input((s, s, 3), name="input"),
            layers.Conv2D(f, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(2 * f, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(hp.dense_units, activation="relu"),
            layers.Dropout(hp.dropout),
            layers.Dense(len(meta["classes"]), activation="softmax"),
        ], name="small_cnn")
