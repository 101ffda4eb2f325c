"""The fitted tabular preprocessing in numpy (kiln.bento.rowprep) against the pandas path it
replaces at serving: every op kiln fits, real fitted pipelines, the same engine decoding the same
rows both ways."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kiln.bento.rowprep import compile_rows
from kiln.bento.runtime import Engine, InstanceError, ServingConfig
from kiln.data.preprocess import Pipeline, make_op

pd = pytest.importorskip("pandas")


def _fit(df, ops: list, label: str | None = None) -> Pipeline:
    """Fit the ops in order on ``df`` as kiln.data.preprocess._apply_tabular does."""
    built = [make_op(*o) if isinstance(o, tuple) else make_op(o) for o in ops]
    for op in built:
        df = op.fit_transform(df, label)
    return Pipeline(built, label)  # type: ignore[arg-type]


def _table(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(5, 2, n), "b": rng.exponential(3, n), "c": rng.uniform(-1, 1, n),
                       "d": rng.integers(0, 50, n).astype(float),
                       "s": rng.choice(["red", "green", "blue"], n), "y": rng.integers(0, 2, n)})
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    return df


def _engine(pipe: Pipeline, features: list[str], schema: dict | None = None) -> Engine:
    cfg = ServingConfig(framework="onnx", input="tabular", features=features, preprocess="preprocess", schema=schema)
    strings = {f for f, c in ((schema or {}).get("columns") or {}).items() if c["type"] == "string"}
    return Engine(cfg=cfg, run=lambda x: x, model_dir=Path("."), pipeline=pipe,
                  rowprep=compile_rows(pipe, features, strings))


def _both(eng: Engine, row: dict, i: int = 0):
    """(numpy path, pandas path) of one row: arrays, or the InstanceError each raised."""
    out = []
    for fn in (eng._decode_compiled, eng._decode_raw_row):
        try:
            out.append(fn(dict(row), i))
        except InstanceError as e:
            out.append(e)
    return out


OPS = [("SimpleImputer", {"columns": ["a"], "strategy": "median"}),
       ("StandardScaler", {"columns": ["a", "b"]}),
       ("MinMaxScaler", {"columns": ["c"], "feature_range": (-2.0, 2.0)}),
       ("qcut", {"column": "b", "q": 4}), ("cut", {"column": "c", "bins": 3}),
       ("KBinsDiscretizer", {"columns": ["d"], "n_bins": 4}),
       "factorize", ("sort_values", {"by": ["d"]}), ("drop_columns", {"columns": ["unused"]})]


def test_every_compiled_op_equals_the_pandas_path() -> None:
    df = _table()
    pipe = _fit(df, OPS, label="y")
    feats = ["a", "b", "c", "d", "s"]
    eng = _engine(pipe, feats)
    assert eng.rowprep is not None and len(eng.rowprep.steps) == 6
    rng = np.random.default_rng(1)
    rows = [{"a": float(rng.normal(5, 4)), "b": float(rng.exponential(5)), "c": float(rng.uniform(-2, 2)),
             "d": int(rng.integers(-5, 60)), "s": str(rng.choice(["red", "blue", "purple"]))} for _ in range(300)]
    rows += [{"a": None, "b": 0, "c": 1.0, "d": 3, "s": None},             # missing: imputed / code -1
             {"a": "7.5", "b": "", "c": -1, "d": 49, "s": "green"}]        # numbers as strings, '' missing
    for i, row in enumerate(rows[:-1]):
        fast, slow = _both(eng, row, i)
        assert fast.dtype == np.float32 and np.array_equal(fast, slow, equal_nan=True), (row, fast, slow)
    fast = eng._decode_compiled(rows[-1], 0)  # pandas scales the object column of strings too
    assert fast[0] == np.float32((7.5 - pipe.ops[1].est.mean_[0]) / pipe.ops[1].est.scale_[0])
    assert math.isnan(fast[1]) and fast[4] == pipe.ops[6].maps["s"]["green"]


def test_bad_values_are_400s_naming_the_field() -> None:
    eng = _engine(_fit(_table(), OPS, label="y"), ["a", "b", "c", "d", "s"])
    row = {"a": 1.0, "b": 2.0, "c": 0.5, "d": 3, "s": "red"}
    with pytest.raises(InstanceError, match=r"instances\[2\]\.b: expected a number, got str 'lots'"):
        eng.decode({**row, "b": "lots"}, 2)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.c: missing; the model needs a, b, c, d, s"):
        eng.decode({k: v for k, v in row.items() if k != "c"}, 0)
    with pytest.raises(InstanceError, match=r"instances\[0\]: preprocessing failed: KBinsDiscretizer cannot bin"):
        eng.decode({**row, "d": None}, 0)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.a: .* out of range"):
        eng.decode({**row, "a": 10 ** 400}, 0)
    mm = _engine(_fit(_table(), [("MinMaxScaler", {"columns": ["c"], "feature_range": (-2.0, 2.0)})]), ["c"])
    with pytest.raises(InstanceError, match=r"instances\[0\]\.c: 3e\+38 is out of range for the model's 32-bit floats after"):
        mm.decode({"c": 3e38}, 0)  # a float32 itself, doubled by the fitted scaler
    assert eng.decode([1.0, 2.0, 0.5, 3, "red"], 0)[0].tolist() == eng.decode(row, 0)[0].tolist()
    with pytest.raises(InstanceError, match=r"instances\[1\]: a row as a list has 5 values, in this order: a, b, c, d, s; got 4"):
        eng.decode([1.0, 2.0, 0.5, 3], 1)


def test_string_columns_pass_through_typed() -> None:
    """A string column no op reads goes to the model as a string (its featurisation encodes it)."""
    df = _table()
    pipe = _fit(df.drop(columns=["s"]).assign(t=df["s"]), [("StandardScaler", {"columns": ["a", "b"]})], label="y")
    schema = {"columns": {"a": {"type": "number"}, "b": {"type": "number"}, "t": {"type": "string"}}}
    eng = _engine(pipe, ["a", "b", "t"], schema)
    assert eng.cfg.typed and eng.rowprep is not None
    for row in ({"a": 1.5, "b": None, "t": "red"}, {"a": "2", "b": 4.0, "t": None}, {"a": 3.0, "b": 1.0, "t": "x"}):
        fast, slow = _both(eng, row)
        assert len(fast) == 3 and fast[2] == slow[2] and np.allclose(fast[:2], slow[:2], equal_nan=True)
    # a number in a string column as pandas reads it from a CSV ('7'; the DataFrame row made it 7.0)
    assert eng.decode({"a": 3.0, "b": 1.0, "t": 7}, 0)[0][2] == "7"


def test_ops_without_a_numpy_form_keep_the_pandas_path() -> None:
    df = _table()
    knn = _fit(df, [("KNNImputer", {"columns": ["a", "b"]})], label="y")
    assert compile_rows(knn, ["a", "b", "c"], set()) is None
    # a column an op reads before it is factorized cannot be coded when the value is read
    late = _fit(df, [("SimpleImputer", {"columns": ["s"], "strategy": "most_frequent"}), "factorize"], label="y")
    assert compile_rows(late, ["d", "s"], set()) is None
    assert compile_rows(_fit(df, ["factorize"], label="y"), ["d", "s"], set()) is not None
    dropped = _fit(df, [("StandardScaler", {"columns": ["a", "b"]}), ("drop_columns", {"columns": ["b"]})], label="y")
    assert compile_rows(dropped, ["a", "b"], set()) is None
    eng = _engine(knn, ["a", "b", "c"])
    assert eng.rowprep is None and eng.decode({"a": 1.0, "b": None, "c": 0.0}, 0)[0].shape == (3,)
