"""ONNX export checks: run the exported file with onnxruntime and compare it with the native model.

``Algorithm.export_onnx`` writes the file; ``check_parity`` is the gate before a model is
registered as ONNX (AI Studio's "format conversion"): every output the native model gives must
match the ONNX output at the same position within ``tolerance`` (absolute, on float outputs;
integer/label outputs must match exactly). A mismatch raises ``ParityError`` with the numbers,
and so does a check that compared nothing (no samples, or a detector that found no object in
them: Faster R-CNN's check once "passed on 0 samples", #25): parity is shown, never assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.algorithms.base import AlgorithmError, TrainedModel


class ParityError(AlgorithmError):
    """The ONNX file computes something else than the native model."""


@dataclass
class ParityReport:
    onnx_path: Path
    samples: int                 # inputs fed to both models (rows, images)
    outputs: list[str]
    max_abs_diff: list[float] = field(default_factory=list)
    mismatches: list[int] = field(default_factory=list)  # elements outside tolerance, per output
    tolerance: float = 1e-4
    compared: int = 0            # output values compared, all outputs together

    @property
    def passed(self) -> bool:
        return self.samples > 0 and self.compared > 0 and not any(self.mismatches)

    def summary(self) -> str:
        parts = [f"{n}: max |diff| {d:.3g}, {m} mismatched" for n, d, m in
                 zip(self.outputs, self.max_abs_diff, self.mismatches)]
        return (f"{self.onnx_path.name} on {self.samples} samples, {self.compared} values compared "
                f"(tol {self.tolerance}): " + "; ".join(parts))


def _onnx_inputs(session: Any, samples: Any) -> dict[str, Any]:
    import numpy as np

    inputs = session.get_inputs()
    if isinstance(samples, dict):
        # per-column inputs by position: skl2onnx renames columns it cannot use as input names
        return {i.name: v for i, v in zip(inputs, samples.values())}
    arr = samples.numpy() if hasattr(samples, "numpy") else np.asarray(samples)
    kind = inputs[0].type
    if "float" in kind and "double" not in kind:
        arr = arr.astype(np.float32)
    elif "double" in kind:
        arr = arr.astype(np.float64)
    return {inputs[0].name: arr}


def check_parity(native_fn: Callable[[Any], Any], onnx_path: str | Path, samples: Any, tolerance: float = 1e-4,
                 *, onnx_samples: Any = None, raise_on_failure: bool = True) -> ParityReport:
    """Compare ``native_fn(samples)`` (an array or list of arrays) with the ONNX outputs at the
    same positions. ``onnx_samples`` overrides what the ONNX model is fed (default: ``samples``)."""
    import numpy as np
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise ParityError(f"{path}: ONNX file does not exist", hint="export the model first")
    # the inputs as the native model takes them (rows, image paths); the ONNX feed may be one
    # image's tensor, whose first axis is its channels
    n = len(samples) if hasattr(samples, "__len__") else 1
    if n == 0:
        if raise_on_failure:
            raise ParityError(f"{path}: ONNX parity on 0 samples shows nothing",
                              hint="check it on the dataset's rows or images (its test or validation split)")
        return ParityReport(path, 0, [], tolerance=tolerance)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, _onnx_inputs(sess, samples if onnx_samples is None else onnx_samples))
    native = native_fn(samples)
    if not isinstance(native, (list, tuple)):
        native = [native]
    names = [o.name for o in sess.get_outputs()]
    if len(native) > len(got):
        raise ParityError(f"{path}: native model gives {len(native)} outputs, ONNX only {len(got)}")
    report = ParityReport(path, n, names[: len(native)], tolerance=tolerance)
    for want, have in zip(native, got):
        want = np.asarray(want.detach().cpu().numpy() if hasattr(want, "detach") else want)
        have = np.asarray(have)
        if want.size == have.size and want.shape != have.shape:
            have = have.reshape(want.shape)
        report.compared += int(want.size)
        if want.shape != have.shape:
            report.max_abs_diff.append(float("inf"))
            report.mismatches.append(max(want.size, have.size))
            continue
        if want.dtype.kind in "iub" or have.dtype.kind in "iub":
            diff = np.abs(want.astype(np.int64) - have.astype(np.int64))
            report.mismatches.append(int((diff != 0).sum()))
        else:
            diff = np.abs(want.astype(np.float64) - have.astype(np.float64))
            report.mismatches.append(int((diff > tolerance + tolerance * np.abs(want)).sum()))
        report.max_abs_diff.append(float(diff.max()) if diff.size else 0.0)
    if raise_on_failure and not report.compared:
        raise ParityError(f"ONNX parity compared nothing: {report.summary()}; the native model gave no output "
                          f"values on {report.samples} samples, so the file is not shown to compute the same",
                          hint="check on samples the model answers (a detector that finds no object in them: "
                               "train it further or lower its score threshold), or drop the ONNX export")
    if raise_on_failure and not report.passed:
        raise ParityError(f"ONNX output differs from the native model: {report.summary()}",
                          hint="do not register this ONNX file; report the model type as not exportable")
    return report


def export_and_check(algorithm: Any, model: TrainedModel, path: str | Path, sample: Any,
                     tolerance: float = 1e-4) -> ParityReport | None:
    """``export_onnx`` then ``check_parity`` against ``algorithm.native_outputs``; None if not exportable."""
    out = algorithm.export_onnx(model, Path(path), sample)
    if out is None:
        return None
    if hasattr(algorithm, "parity_sample"):  # tables: plus missing values and unseen categories
        sample = algorithm.parity_sample(model, sample)
    onnx_samples = None
    if hasattr(algorithm, "onnx_feed"):
        onnx_samples = algorithm.onnx_feed(model, sample)
    elif hasattr(algorithm, "input_batch"):  # image models: ONNX takes the preprocessed tensor / array
        batch = algorithm.input_batch(model, sample)
        onnx_samples = batch.numpy() if hasattr(batch, "numpy") else batch
    elif hasattr(algorithm, "features"):
        import numpy as np

        onnx_samples = np.asarray(algorithm.features(model.meta, sample))  # cast to the input's type in check_parity
    return check_parity(lambda s: algorithm.native_outputs(model, s), out, sample, tolerance,
                        onnx_samples=onnx_samples)
