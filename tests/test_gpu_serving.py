"""GPU serving (#28): a deployment asking for a GPU serves on onnxruntime's CUDA provider (torch on
``cuda``) when one is present, on the CPU with a warning when not; the device is in ``/metrics``
and the deployment's status. Real onnxruntime sessions on a tiny generated ONNX model; the CUDA
branch is checked where onnxruntime has a usable CUDA provider (bench/gpu_check.sh on a GPU machine)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from kiln.bento.runtime import load_engine, onnx_providers  # noqa: E402

SERVING = {"framework": "onnx", "file": "model.onnx", "task": "regression", "input": "tabular", "features": ["a", "b"]}


def _linear() -> object:
    """y = 2a + 3b as an ONNX graph (MatMul over an N x 2 input)."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    onnx.save(_linear(), str(d / "model.onnx"))
    (d / "kiln-serving.json").write_text(json.dumps(SERVING))
    return d


def _has_cuda() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_providers_put_cuda_first_only_when_asked_for_and_built_in() -> None:
    assert onnx_providers(True, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert onnx_providers(False, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers(True, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_gpu_deployment_serves_where_it_can_and_warns_on_the_cpu(tmp_path: Path, caplog) -> None:
    d = _model_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kiln.bento.runtime"):
        eng = load_engine(d, name="lin", version=1, gpu=True)
    warned = [r.getMessage() for r in caplog.records if r.name == "kiln.bento.runtime"]
    if _has_cuda() and eng.device == "cuda":
        assert warned == []
    else:
        assert eng.device == "cpu"
        assert len(warned) == 1 and "lin asks for a GPU but serves on the CPU" in warned[0]
        assert "CUDAExecutionProvider" in warned[0]
    x, _ = eng.decode({"a": 1.0, "b": 2.0}, 0)
    assert eng.format(eng.predict([x])[0], None) == pytest.approx(8.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kiln.bento.runtime"):
        cpu = load_engine(d, name="lin", version=1)
    assert cpu.device == "cpu" and not [r for r in caplog.records if r.name == "kiln.bento.runtime"]


@pytest.mark.slow
def test_the_server_reports_its_device_in_metrics(tmp_path: Path) -> None:
    """A real BentoML server for a deployment asking for a GPU: ``/metrics`` names the device
    (the CPU here, with the warning in its log) and rollout's reader finds it there."""
    import httpx

    from kiln.bento.config import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer
    from kiln.controller.deployment_steps import serving_device

    repo = tmp_path / "repo"
    repo.mkdir()
    Registry(default_home(repo)).register("lin", _linear(), "onnx", serving=SERVING)
    srv = ManagedServer(ServeConfig(deployment="lin", model="lin", version=1, public=True, gpu=1), repo)
    try:
        srv.start()
        srv.wait_ready(120)
        r = httpx.post(f"{srv.url}/predict", json={"instances": [{"a": 1, "b": 1}]}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0] == pytest.approx(5.0)
        device = serving_device(srv.url)
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        assert f'kiln_model_device{{device="{device}"}}' in metrics
        if not _has_cuda():
            assert device == "cpu"
            assert "asks for a GPU but serves on the CPU" in srv.log_file.read_text()
    finally:
        srv.stop()
