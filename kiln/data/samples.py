"""Built-in sample datasets from scikit-learn's bundled data (no downloads).

- ``iris``, ``wine``, ``breast_cancer`` (classification) and ``diabetes`` (regression) as one
  ``data.csv`` with the target as the last column (``target``);
- ``digits`` as an unsplit image folder: ``<out>/<digit>/<index>.png``, the 8x8 images scaled
  to 0..255 and upscaled to 32x32 grayscale.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.data.errors import DatasetFormatError

SAMPLES = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
}


def materialize_sample(name: str, out_dir: str | os.PathLike[str], *, size: int = 32) -> Path:
    """Write sample ``name`` under ``out_dir``; return ``out_dir``."""
    import sklearn.datasets as skd

    if name not in SAMPLES:
        raise DatasetFormatError(name, f"unknown sample dataset; valid: {', '.join(SAMPLES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bunch = getattr(skd, SAMPLES[name])()
    if name == "digits":
        import numpy as np
        from PIL import Image

        for i, (img, y) in enumerate(zip(bunch.images, bunch.target)):
            arr = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
            d = out / str(int(y))
            d.mkdir(exist_ok=True)
            Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(d / f"{i:04d}.png")
        return out
    import pandas as pd

    # sklearn's feature names contain spaces and parentheses; CSV headers may, values may not
    frame = pd.DataFrame(bunch.data, columns=[str(c).replace(" ", "_") for c in bunch.feature_names])
    frame["target"] = bunch.target
    tmp = out / ".data.csv.tmp"
    frame.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, out / "data.csv")
    return out
