from __future__ import annotations

import json

from kiln.data import export, load
from kiln.data.samples import materialize_sample
from kiln.data.splits import assign_splits, write_manifest

from .conftest import make_coco


def test_stratified_deterministic_image_split(tmp_path):
    materialize_sample("digits", tmp_path / "digits")
    c = load(tmp_path / "digits", verify=False)
    a, m1 = assign_splits(c, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    _, m2 = assign_splits(c, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    _, m3 = assign_splits(c, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=4)
    assert m1 == m2 and m1["items"] != m3["items"] and m1["stratified"]
    counts = a.split_counts()
    assert counts == {"train": 1437, "validation": 180, "test": 180}
    # stratified: every digit appears in every split in proportion
    for split in ("validation", "test"):
        per = {}
        for it in a.items:
            if it.split == split:
                per[it.label] = per.get(it.label, 0) + 1
        assert set(per) == {str(d) for d in range(10)} and max(per.values()) - min(per.values()) <= 2
    export(a, tmp_path / "split")
    assert load(tmp_path / "split").split_counts() == counts
    p = write_manifest(tmp_path / "manifest.json", m1)
    assert json.loads(p.read_text())["items"]["0/0000.png"] in ("train", "validation", "test")


def test_tabular_and_small_class_fallback(tmp_path):
    materialize_sample("iris", tmp_path / "iris")
    _, m = assign_splits(load(tmp_path / "iris"), {"train": 0.7, "test": 0.3})
    assert m["stratified"] and list(m["items"].values()).count("test") == 45
    c = load(make_coco(tmp_path / "coco", n=2))  # 4 images: too few to stratify
    a, m = assign_splits(c, {"train": 0.5, "validation": 0.25, "test": 0.25})
    assert not m["stratified"] and sorted(a.split_counts().values()) == [1, 1, 2]
