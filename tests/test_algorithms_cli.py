"""`kiln algorithms list|describe` and docs/algorithms.md, all read from the catalogue."""

from __future__ import annotations

import json
import subprocess
import sys

from kiln.algorithms.catalogue import CATALOGUE
from kiln.algorithms.cli import markdown
from tests.helpers import ROOT, kiln


def test_list_all_and_by_task(tmp_path) -> None:
    p = kiln("algorithms", "list", cwd=tmp_path, check=True)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "DATA", "FRAMEWORK", "ONNX", "RUNTIMES"]
    assert [ln.split()[0] for ln in lines[1:]] == list(CATALOGUE)
    p = kiln("algorithms", "list", "--task", "detection", "-o", "json", cwd=tmp_path, check=True)
    got = json.loads(p.stdout)
    assert [a["name"] for a in got] == ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                                        "ssd300_vgg16", "tiny_centernet", "easymaker-object-detection"]
    detr = got[-1]
    assert detr["onnx"] is False and detr["runtimes"] == ["native"]
    assert {"name": "threshold", "type": "float", "default": 0.5, "ge": 0, "le": 1} == {
        k: v for k, v in next(h for h in detr["hyperparameters"] if h["name"] == "threshold").items() if k != "help"}
    bad = kiln("algorithms", "list", "--task", "detecton", cwd=tmp_path)
    assert bad.returncode != 0 and "detection" in bad.stderr and "Traceback" not in bad.stderr


def test_describe_shows_hyperparameters_metrics_export_and_runtimes(tmp_path) -> None:
    out = kiln("algorithms", "describe", "easymaker-image-classification", cwd=tmp_path, check=True).stdout
    assert "ONNX export: yes; serving runtimes: native, onnx" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("per_device_train_batch_size"))
    assert row.split()[:4] == ["per_device_train_batch_size", "int", "16", ">="]  # EasyMaker: 16, [2, inf)
    assert "validation_accuracy" in out.splitlines()[-1]


def test_describe_unknown_name_exits_1_with_did_you_mean(tmp_path) -> None:
    p = kiln("algorithms", "describe", "random_forrest", cwd=tmp_path)
    assert p.returncode == 1
    assert "unknown algorithm 'random_forrest'" in p.stderr and "did you mean 'random_forest'?" in p.stderr
    assert "Traceback" not in p.stderr


def test_algorithms_commands_import_no_ml_library(tmp_path) -> None:
    code = ("import sys; from kiln.cli import main; main(['algorithms', 'describe', 'resnet18']); "
            "print([m for m in ('torch', 'sklearn', 'transformers', 'tensorflow', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def test_committed_docs_are_current() -> None:
    committed = (ROOT / "docs" / "algorithms.md").read_text()
    assert committed == markdown(list(CATALOGUE.values())), (
        "docs/algorithms.md is stale: run `kiln algorithms list -o markdown > docs/algorithms.md`")
