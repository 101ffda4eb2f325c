"""``kiln infer --as-version`` onto an existing dataset adds, never removes (issue 25).

A real repository (git + DVC, the local runner): Dataset ``imgs`` (drawn circles and squares)
gets a v2 of 24 images, an Experiment trains resnet18 one tiny epoch on Dataset ``fresh`` and
registers ``shapes``, and ``kiln infer shapes fresh --as-version imgs`` writes imgs v3 = v2's 24
images + the 12 predicted ones; ``kiln data diff`` shows additions only; a later version made
from the source keeps them. ``--replace`` is the explicit way to make a version of the
predictions alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import kiln, write

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("dvc")
pytest.importorskip("torch")
pytest.importorskip("bentoml")

CLASSES = ("circle", "square")


def spec(kind: str, name: str, body: str) -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
            + "".join(f"  {ln}\n" for ln in body.strip().splitlines()))


def draw(folder: Path, n_per_class: int, seed: int) -> None:
    """``n_per_class`` 16x16 images of each class: a filled circle or square, random place and size."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            im = Image.new("RGB", (16, 16), (0, 0, 0))
            r = int(rng.integers(3, 6))
            x, y = (int(v) for v in rng.integers(r, 16 - r, size=2))
            d = ImageDraw.Draw(im)
            (d.ellipse if c == "circle" else d.rectangle)([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
            im.save(folder / c / f"s{seed}-{k:02d}.png")


def versions(repo: Path, name: str) -> dict:
    return json.loads((repo / f"data/default/{name}.versions.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("asversion")
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    write(root, {
        "specs/imgs.yaml": spec("Dataset", "imgs", "type: image\ntask: classification\nformat: image-folder\n"
                                                  "source: {path: raw/imgs}"),
        "specs/fresh.yaml": spec("Dataset", "fresh", "type: image\ntask: classification\nformat: image-folder\n"
                                                    "source: {path: raw/fresh}"),
        "specs/exp.yaml": spec("Experiment", "shapes-exp", """
dataset: {name: fresh}
split: {train: 0.75, validation: 0.25}
algorithm:
  name: resnet18
  hyperparameters: {epochs: 1, input_size: 16, batch_size: 16, learning_rate: 0.05}
register: {model: shapes}
"""),
    })
    draw(root / "raw/imgs", 6, seed=1)
    draw(root / "raw/fresh", 6, seed=3)
    kiln("apply", cwd=root, check=True, timeout=300)  # imgs v1 (12), fresh v1 (12), shapes v1
    draw(root / "raw/imgs", 6, seed=2)
    kiln("apply", cwd=root, check=True, timeout=300)  # imgs v2 (24)
    assert [v["files"] for v in versions(root, "imgs")["versions"]] == [12, 24]
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_as_version_onto_an_existing_dataset_adds_the_items(repo: Path, tmp_path: Path) -> None:
    p = kiln("infer", "shapes", "fresh", "--out", str(tmp_path / "pred"), "--as-version", "imgs", cwd=repo,
             timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert "dataset default/imgs v3" in p.stdout and "12 item(s), added to v2" in p.stdout, p.stdout
    log = versions(repo, "imgs")
    v2, v3 = log["versions"][1], log["versions"][2]
    assert log["current"] == v3["id"] and v3["files"] == 36
    preds = [json.loads(ln) for ln in (tmp_path / "pred/predictions.jsonl").read_text().splitlines()]
    predicted = {c: sum(p["prediction"][0]["label"] == c for p in preds) for c in CLASSES}
    # every class keeps its v2 images and gains the images predicted as it
    assert v3["per_class_counts"] == {c: v2["per_class_counts"][c] + predicted[c] for c in CLASSES if
                                      v2["per_class_counts"].get(c, 0) + predicted[c]}
    assert v3["lineage"]["parent"] == v2["id"]
    assert v3["lineage"]["addedTo"] == {"dataset": "default/imgs", "version": v2["id"], "items": 12}
    assert v3["lineage"]["derivedFrom"]["dataset"] == "default/fresh"
    diff = json.loads(kiln("data", "diff", "imgs", "v2", "v3", "-o", "json", cwd=repo, check=True).stdout)
    assert len(diff["added"]) == 12 and diff["removed"] == [] and diff["changed"] == [], diff
    assert all(d["to"] >= d["from"] for d in diff["classes"].values()), diff

    # the source gets 6 more images: the next version from the source keeps the 12 added ones
    draw(repo / "raw/imgs", 3, seed=4)
    kiln("apply", cwd=repo, check=True, timeout=300)
    v4 = versions(repo, "imgs")["versions"][3]
    assert v4["files"] == 42 and v4["lineage"]["carried"]["from"] == v3["id"], v4["lineage"]
    assert v4["lineage"]["carried"]["items"] == 12
    diff = json.loads(kiln("data", "diff", "imgs", "v3", "v4", "-o", "json", cwd=repo, check=True).stdout)
    assert len(diff["added"]) == 6 and diff["removed"] == [] and diff["changed"] == [], diff

    # --replace: the explicit way to drop the current items
    p = kiln("infer", "shapes", "fresh", "--out", str(tmp_path / "pred2"), "--as-version", "imgs", "--replace",
             cwd=repo, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "12 item(s), replacing v4" in p.stdout, p.stdout
    v5 = versions(repo, "imgs")["versions"][-1]
    assert v5["files"] == 12 and v5["lineage"]["replaced"] == v4["id"]
    diff = json.loads(kiln("data", "diff", "imgs", "v4", "v5", "-o", "json", cwd=repo, check=True).stdout)
    assert not [f for f in diff["added"] if "/s1-" in f or "/s2-" in f or "/s4-" in f], diff  # no source item left
    assert len(diff["removed"]) >= 30, diff


def test_replace_without_as_version_is_refused(tmp_path: Path) -> None:
    p = kiln("infer", "shapes", "fresh", "--replace", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "--replace applies to --as-version only" in p.stderr and "add --as-version" in p.stderr, p.stderr
