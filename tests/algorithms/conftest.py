"""Sample datasets (scikit-learn's bundled data, materialised through kiln.data) for algorithm tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sklearn")


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samples")


def _tabular(samples_dir: Path, name: str):
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load
    from kiln.data.samples import materialize_sample

    root = samples_dir / name
    if not (root / "data.csv").exists():
        materialize_sample(name, root)
    return TrainData(load(root, task="tabular"))


@pytest.fixture(scope="session")
def wine(samples_dir: Path):
    return _tabular(samples_dir, "wine")


@pytest.fixture(scope="session")
def breast_cancer(samples_dir: Path):
    return _tabular(samples_dir, "breast_cancer")


@pytest.fixture(scope="session")
def diabetes(samples_dir: Path):
    return _tabular(samples_dir, "diabetes")


@pytest.fixture(scope="session")
def digits_root(samples_dir: Path) -> Path:
    from kiln.data.samples import materialize_sample

    root = samples_dir / "digits"
    if not root.exists():
        materialize_sample("digits", root)
    return root


def digits_data(root: Path, per_split: dict[str, int] | None = None):
    """Digits as TrainData (80/10/10 stratified split), optionally cut to the first N per split."""
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    td = TrainData(load(root, task="classification"))
    if per_split:
        rank: dict[tuple[str | None, str | None], int] = {}
        keyed = []
        for it in td.content.items:  # interleave the classes, so a small cut holds all ten
            r = rank[(it.split, it.label)] = rank.get((it.split, it.label), -1) + 1
            keyed.append(((r, it.label), it))
        kept, seen = [], {}
        for _, it in sorted(keyed, key=lambda p: p[0]):
            if seen.get(it.split, 0) < per_split.get(it.split, 0):
                kept.append(it)
                seen[it.split] = seen.get(it.split, 0) + 1
        td = TrainData(td.content.model_copy(update={"items": kept}))
    return td
