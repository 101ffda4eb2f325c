"""#14: a trial's model and its reported metrics come from one checkpoint: the report best by the
objective (``keep_best``, the default of ``register.checkpoint``) or the last one. The objective
here is the learning rate, which the cosine schedule lowers every epoch, so epoch 1 is best by
construction and differs from the last: the returned weights must be epoch 1's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kiln.algorithms.base import BestWeights, ReportCallback  # noqa: E402
from kiln.algorithms.registry import get_algorithm  # noqa: E402
from tests.algorithms.conftest import digits_data  # noqa: E402

HP = {"epochs": 3, "input_size": 8, "batch_size": 16, "learning_rate": 0.05}


class Objective(ReportCallback):
    def __init__(self, keep_best: tuple[str, str] | None) -> None:
        self.keep_best = keep_best


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.mark.parametrize("keep_best", [("learning_rate", "maximize"), None])
def test_the_returned_weights_are_the_chosen_epochs(digits_root: Path, tmp_path: Path, keep_best) -> None:
    data = digits_data(digits_root, {"train": 32, "validation": 8})
    algo = get_algorithm("resnet18")
    model = algo.train(data, HP, callbacks=Objective(keep_best), workdir=tmp_path)
    ckpts = {int(p.stem.split("-")[1]): torch.load(p, weights_only=True)["model"]
             for p in (tmp_path / "checkpoints").glob("epoch-*.pt")}
    assert set(ckpts) == {1, 2, 3}
    state = model.native.state_dict()
    if keep_best:
        lr1 = model.history[0][1]["learning_rate"]
        assert model.meta["checkpoint"] == {"kind": "best", "step": 1, "metric": "learning_rate", "value": lr1}
        assert _same(ckpts[1], state) and not _same(ckpts[3], state)
    else:
        assert model.meta["checkpoint"] == {"kind": "last", "step": 3}
        assert _same(ckpts[3], state)


def test_an_objective_never_reported_keeps_the_last_and_says_why() -> None:
    seen = []
    best = BestWeights(Objective(("validation_accuracy", "maximize")), lambda: len(seen))
    best.offer(1, {"train_loss": 0.3})
    assert best.finish(2, seen.append) == {"kind": "last", "step": 2,
                                           "note": "validation_accuracy was never reported during training"}
    assert seen == []
    best = BestWeights(Objective(("validation_loss", "minimize")), lambda: f"weights@{len(seen)}")
    best.offer(1, {"validation_loss": 0.5})
    seen.append("x")
    best.offer(2, {"validation_loss": 0.7})
    best.offer(3, {"validation_loss": float("nan")})  # a diverged evaluation is never the best
    assert best.finish(3, seen.append)["step"] == 1 and seen[-1] == "weights@0"
