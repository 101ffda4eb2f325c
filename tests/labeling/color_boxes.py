"""A deterministic detection "model" for tests: finds the axis-aligned rectangles of known pure
colours in an image (connected pixels of one colour -> their bounding box). Its predict output has
the one shape every kiln.algorithms detector's predict gives, ``[{"label", "category_id", "score",
"box": [x1, y1, x2, y2]}]`` per image, which is what the LabelingJob's mapping consumes.

Scores are deterministic: 0.9 for a box at least 8 px wide, else 0.3 (below the usual threshold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.algorithms.base import Algorithm, TrainedModel, read_meta, write_meta

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


class ColorBoxes(Algorithm):
    name = "test_color_boxes"
    task = "detection"
    data_type = "image"
    framework = "other"

    def train(self, data: Any, hp: Any = None, **kwargs: Any) -> TrainedModel:
        """Nothing to learn: the colours are the model."""
        return TrainedModel(self.name, None, {}, {"colors": COLORS})

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        import numpy as np
        from PIL import Image

        out = []
        for path in inputs:
            img = np.asarray(Image.open(path).convert("RGB")).astype(int)
            res: list[dict[str, Any]] = []
            for cid, (name, rgb) in enumerate(model.meta["colors"].items(), start=1):
                mask = np.all(img == np.array(rgb), axis=2)
                if not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                res.append({"label": name, "category_id": cid, "score": 0.9 if x2 - x1 >= 8 else 0.3,
                            "box": [float(x1), float(y1), float(x2), float(y2)]})
            out.append(res)
        return out

    def save(self, model: TrainedModel, path: Path) -> Path:
        write_meta(Path(path), {"algorithm": self.name, "hyperparameters": {}, **model.meta})
        return Path(path)

    def load(self, path: Path) -> TrainedModel:
        meta = read_meta(Path(path), self.name)
        meta.pop("algorithm")
        hp = meta.pop("hyperparameters")
        return TrainedModel(self.name, None, hp, meta)
