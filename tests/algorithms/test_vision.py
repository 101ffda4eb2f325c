"""torchvision image classification on digits (scikit-learn's bundled 8x8 digits as an image folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from kiln.algorithms.base import AlgorithmError, HistoryCallback, Pruned, ReportCallback  # noqa: E402
from kiln.algorithms.registry import get_algorithm  # noqa: E402
from tests.algorithms.conftest import digits_data  # noqa: E402

SMALL = {"train": 160, "validation": 40, "test": 40}
FAST = {"epochs": 1, "input_size": 32, "batch_size": 32, "learning_rate": 0.05}


def test_resnet18_one_epoch_on_a_digits_subset(digits_root: Path, tmp_path: Path) -> None:
    data = digits_data(digits_root, SMALL)
    algo = get_algorithm("resnet18")
    hist = HistoryCallback()
    model = algo.train(data, FAST, callbacks=hist, workdir=tmp_path)
    (step, m), = hist.history
    assert step == 1
    assert {"train_loss", "train_accuracy", "validation_accuracy", "validation_f1", "validation_loss"} <= set(m)
    assert (tmp_path / "checkpoints" / "epoch-0001.pt").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ev = algo.evaluate(model, data, "test")
    assert 0.0 <= ev["test_accuracy"] <= 1.0 and len(ev.artifacts["confusion_matrix"]) == 10
    assert ev.artifacts["labels"] == [str(i) for i in range(10)]

    # save / load gives the same predictions on image files
    paths = [data.content.abspath(it.path) for it in data.items("test")[:5]]
    algo.save(model, tmp_path / "saved")
    again = algo.load(tmp_path / "saved")
    assert [p["label"] for p in algo.predict(again, paths)] == [p["label"] for p in algo.predict(model, paths)]
    assert all(0 <= p["score"] <= 1 for p in algo.predict(model, paths))

    # ONNX export of the classifier matches the PyTorch logits
    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    report = export_and_check(algo, model, tmp_path / "m.onnx", paths, tolerance=1e-3)
    assert report is not None and report.passed and report.samples == 5


def test_pretrained_local_weights_with_a_different_head(digits_root: Path, tmp_path: Path) -> None:
    import torchvision

    donor = torchvision.models.resnet18(weights=None, num_classes=7)
    torch.nn.init.constant_(donor.conv1.weight, 0.01)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    data = digits_data(digits_root, {"train": 20, "validation": 10, "test": 10})
    algo = get_algorithm("resnet18")
    model = algo.train(data, {**FAST, "learning_rate": 1e-9, "momentum": 0.0, "weight_decay": 0.0},
                       pretrained=tmp_path / "donor.pt")
    assert model.meta["pretrained_skipped"] == ["fc.bias", "fc.weight"]  # 7 classes there, 10 here
    assert torch.allclose(model.native.conv1.weight, torch.full_like(model.native.conv1.weight, 0.01), atol=1e-6)
    with pytest.raises(AlgorithmError, match="never downloads"):
        algo.train(data, FAST, pretrained=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(AlgorithmError, match="cannot be read"):
        algo.train(data, FAST, pretrained=tmp_path / "junk.pt")


def test_pruning_stops_after_the_reported_epoch(digits_root: Path, tmp_path: Path) -> None:
    class PruneAt1(ReportCallback):
        def report(self, step: int, metrics: dict[str, float]) -> None:
            if step == 1:
                raise Pruned(step)

    data = digits_data(digits_root, {"train": 32, "validation": 8})
    with pytest.raises(Pruned):
        get_algorithm("resnet18").train(data, {**FAST, "epochs": 3}, callbacks=PruneAt1(), workdir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001.pt"]


_RUN = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from kiln.algorithms.base import HistoryCallback
    from kiln.algorithms.registry import get_algorithm
    from tests.algorithms.conftest import digits_data

    mode, root, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    class Seen(HistoryCallback):
        def report(self, step, metrics):
            super().report(step, metrics)
            print("epoch", step, flush=True)
            if mode == "kill" and step == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # like an OOM kill or a lost node

    data = digits_data(root, {"train": 48, "validation": 16})
    hp = {"epochs": 4, "input_size": 32, "batch_size": 16, "learning_rate": 0.05}
    seen = Seen()
    model = get_algorithm("resnet18").train(data, hp, callbacks=seen, workdir=work,
                                            resume_from=work / "checkpoints" if mode == "resume" else None)
    torch.save(model.native.state_dict(), work / "weights.pt")
    (work / "history.json").write_text(json.dumps([s for s, _ in model.history]))
""")


def _run(mode: str, root: Path, work: Path) -> subprocess.CompletedProcess[str]:
    # every run in a fresh interpreter of its own: the comparison below is between equal processes, not
    # between a subprocess and this one, whose thread pools and kernels earlier tests may have changed
    return subprocess.run([sys.executable, "-c", _RUN, mode, str(root), str(work)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=600)


def test_killed_training_resumes_from_the_last_checkpoint(digits_root: Path, tmp_path: Path) -> None:
    import json

    work = tmp_path / "run"
    proc = _run("kill", digits_root, work)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split() == ["epoch", "1", "epoch", "2"]
    ckpts = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert ckpts == ["epoch-0001.pt", "epoch-0002.pt"]  # no temp file left behind

    proc = _run("resume", digits_root, work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["epoch", "3", "epoch", "4"]  # continued, did not restart
    assert json.loads((work / "history.json").read_text()) == [1, 2, 3, 4]  # history carried over

    # deterministic: the resumed run ends with the weights an uninterrupted run reaches
    straight = tmp_path / "straight"
    proc = _run("straight", digits_root, straight)
    assert proc.returncode == 0, proc.stderr
    resumed_w, straight_w = torch.load(work / "weights.pt"), torch.load(straight / "weights.pt")
    assert resumed_w.keys() == straight_w.keys()
    for k, a in resumed_w.items():
        assert torch.allclose(a.float(), straight_w[k].float(), atol=1e-5), k

    data = digits_data(digits_root, {"train": 48, "validation": 16})
    with pytest.raises(AlgorithmError, match="no checkpoint"):
        get_algorithm("resnet18").train(data, {"epochs": 1}, resume_from=tmp_path / "nothing-here")


@pytest.mark.slow
def test_resnet18_from_scratch_reaches_95_percent_on_digits(digits_root: Path, tmp_path: Path) -> None:
    data = digits_data(digits_root)
    algo = get_algorithm("resnet18")
    t0 = time.perf_counter()
    model = algo.train(data, {"epochs": 8, "input_size": 32, "batch_size": 64, "learning_rate": 0.1,
                              "weight_decay": 5e-4, "num_workers": 0}, workdir=tmp_path)
    ev = algo.evaluate(model, data, "test")
    elapsed = time.perf_counter() - t0
    print(f"\nresnet18 digits: test_accuracy={ev['test_accuracy']:.4f} in {elapsed:.0f}s "
          f"(cpu threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})")
    assert ev["test_accuracy"] >= 0.95


def test_checkpoint_every_n_epochs_and_always_the_last(digits_root: Path, tmp_path: Path) -> None:
    """An Experiment's ``checkpoint: {every: 2}`` reaches the training loop through the callback."""
    from kiln.algorithms.base import CallbackList, checkpoint_due

    class Every2(HistoryCallback):
        checkpoint_every = 2

    data = digits_data(digits_root, {"train": 48, "validation": 16})
    get_algorithm("resnet18").train(data, {**FAST, "epochs": 3, "batch_size": 16}, callbacks=Every2(), workdir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    # the rule itself: the loop's unit must match; a list takes the least frequent request
    steps = Every2()
    steps.checkpoint_unit = "step"
    assert [n for n in range(1, 7) if checkpoint_due(steps, n, last=n == 6, unit="step")] == [2, 4, 6]
    assert [n for n in range(1, 5) if checkpoint_due(steps, n, last=False)] == [1, 2, 3, 4]  # epochs: every one
    assert [n for n in range(1, 8) if checkpoint_due(None, n, last=False, unit="step", default=3)] == [3, 6]
    assert CallbackList([HistoryCallback(), Every2()]).checkpoint_every == 2
