"""Loading the prepared dataset version as the algorithms consume it (``TrainData``): used by
training, evaluation, export and ``kiln infer``. Kept apart from the prepare-data step so that
these do not import the dataset versioning code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.algorithms.base import TrainData


def load_train_data(repo: Path, data: dict[str, Any], split: dict[str, float] | None = None) -> Any:
    # kiln.data.formats builds its pydantic models on import (0.3-0.4 s on a 2-core machine): the
    # create-study, select and register steps import this module but seldom load data
    from kiln.data.formats import load

    root = repo / data["path"]
    options: dict[str, Any] = {"label": data["label"]} if data.get("type") == "tabular" and data.get("label") else {}
    if data.get("type") == "tabular" and data.get("problem") in ("classification", "regression"):
        options["target"] = data["problem"]  # a regression target is never split on as if it were classes
    content = load(root, data["format"], data["task"], verify=False, **options)
    manifest = read_json(root / ".kiln" / "splits.json")
    row_splits = None
    if split is None and content.task == "tabular" and manifest and manifest.get("items"):
        row_splits = {int(k): v for k, v in manifest["items"].items()}
    ratios = None
    if split is not None:
        ratios = split
        if content.task != "tabular":  # re-split images: forget the folder layout's splits
            content = content.model_copy(update={"items": [it.model_copy(update={"split": None})
                                                           for it in content.items]})
    return TrainData(content, row_splits, ratios=ratios, seed=int((manifest or {}).get("seed", 0)))
