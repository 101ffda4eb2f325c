"""Loading the prepared dataset version as the algorithms consume it (``TrainData``): used by
training, evaluation, export and ``kiln infer``. Kept apart from the prepare-data step so that
these do not import the dataset versioning code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.algorithms.base import TrainData

# tables loaded by ``preload_train_data``: the AutoML candidates task reads and splits the table
# once, and each candidate's forked child inherits it instead of parsing the CSV again
_PRELOADED: dict[tuple[str, str, str], TrainData] = {}


def _key(repo: Path, data: dict[str, Any], split: dict[str, float] | None) -> tuple[str, str, str]:
    return (str(repo / data["path"]), str(data.get("version")), repr(sorted((split or {}).items())))


def preload_train_data(repo: Path, data: dict[str, Any], split: dict[str, float] | None = None) -> TrainData:
    """Load the dataset version and keep it for this process's later ``load_train_data`` calls
    (and its forked children's). Only a process that trains several models on one table asks
    for this: a TrainData is shared, so a caller must not modify its frames."""
    key = _key(repo, data, split)
    if key not in _PRELOADED:
        _PRELOADED[key] = load_train_data(repo, data, split)
    return _PRELOADED[key]


def load_train_data(repo: Path, data: dict[str, Any], split: dict[str, float] | None = None) -> Any:
    if _PRELOADED and (td := _PRELOADED.get(_key(repo, data, split))) is not None:
        return td
    # kiln.data.formats builds its pydantic models on import (0.3-0.4 s on a 2-core machine): the
    # create-study, select and register steps import this module but seldom load data
    from kiln.data.formats import load
    from kiln.data.model import TARGETS

    root = repo / data["path"]
    options: dict[str, Any] = {"label": data["label"]} if data.get("type") == "tabular" and data.get("label") else {}
    if data.get("type") == "tabular" and data.get("problem") in TARGETS:
        # a regression target is never split on as if it were classes; an unsupervised table
        # (clustering, dimension-reduction) has no label unless named: every column is a feature
        options["target"] = data["problem"]
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
