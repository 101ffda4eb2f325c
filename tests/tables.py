"""Tiny generated tables as people have them (strings with spaces, missing values, label first),
shared by the featurisation, serving and experiment tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def penguins_frame(n: int = 240, *, regression: bool = False, seed: int = 0) -> Any:
    """A penguins-like table: a string column whose values hold spaces and symbols, a many-valued
    string column (ordinal), a boolean, NaN in numbers and strings, the label first."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream Island", "Torgersen & Co"], n).astype(object)
    bill = rng.normal(44, 5, n) + np.where(island == "Biscoe", 6.0, 0.0)
    site = np.array([f"site {i}" for i in rng.integers(0, 30, n)], dtype=object)
    flag = rng.random(n) > 0.5
    label = (bill + np.where(island == "Biscoe", 5.0, 0.0) + rng.normal(0, 1, n)) if regression else \
        np.where(island == "Biscoe", "Adelie penguin", "Gentoo")
    bill[::9] = np.nan
    island[3::11] = None
    return pd.DataFrame({"species": label, "island": island, "bill length": bill, "site": site, "male": flag})


def penguins(n: int = 240, *, regression: bool = False, seed: int = 0) -> Any:
    """``penguins_frame`` as the algorithms' ``TrainData`` (split 80/10/10)."""
    from kiln.algorithms.base import TrainData
    from kiln.data.model import DatasetContent, TabularData

    df = penguins_frame(n, regression=regression, seed=seed)
    cols = {"species": "numeric" if regression else "categorical", "island": "categorical",
            "bill length": "numeric", "site": "categorical", "male": "categorical"}
    return TrainData(DatasetContent(task="tabular", table=TabularData(columns=cols, label="species", frame=df)))
