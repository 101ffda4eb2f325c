"""Unlabelled images in a classification dataset (beside the class folders, or captured inputs not
labelled yet) are items of the dataset but nothing to train or score on."""

import numpy as np
from PIL import Image

from kiln.algorithms.base import TrainData
from kiln.algorithms.registry import get_algorithm
from kiln.data.formats import load


def test_classification_training_sees_only_labelled_items(tmp_path):
    root = tmp_path / "src"
    for i, cls in enumerate(["cat", "cat", "dog", "dog"]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "2026-12-07_a1.png")
    content = load(root)
    for it in content.items:
        it.split = "train"
    td = TrainData(content)
    assert len(td.items("train")) == 5
    assert [it.label for it in td.labelled_items("train")] == ["cat", "cat", "dog", "dog"]
    assert td.classes == ["cat", "dog"]
    # the torchvision classifier's training set: four images, not a None label
    algo = get_algorithm("resnet18")
    ds = algo.dataset(td, "train", {"arch": "resnet18", "classes": td.classes, "input_size": 8})
    assert len(ds) == 4
