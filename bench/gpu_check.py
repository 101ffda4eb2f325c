"""The GPU machine check (#28): one training on one GPU, an ONNX deployment answering on the GPU,
and serving throughput GPU against CPU, in one run of a few minutes, through kiln itself
(``kiln apply`` of specs in a temporary repository: the digits sample, resnet18, ONNX deployments).

Prints one line per measurement and a summary; exits 0 with one line when the machine has no GPU
(nothing to measure), 1 when a step fails.

    bench/gpu_check.sh [--epochs 3] [--seconds 15] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KILN = [sys.executable, "-m", "kiln.cli"]


def gpu_present() -> str | None:
    """Why there is no GPU to check, or None when torch sees one."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if smi.returncode != 0 or "GPU" not in smi.stdout:
        return f"nvidia-smi -L lists no GPU ({(smi.stderr or smi.stdout).strip()[:120]})"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def specs(epochs: int, enabled: bool = True) -> str:
    exp = """---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {{name: digits-{dev}}}
spec:
  dataset: {{name: digits}}
  algorithm: {{name: resnet18, hyperparameters: {{epochs: {epochs}, batch_size: 64, device: {dev}}}}}
  objective: {{metric: validation_accuracy, direction: maximize}}
  register: {{model: digits-{dev}, export: [onnx]}}
"""
    dep = """---
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {{name: serve-{dev}}}
spec:
  model: {{experiment: digits-cuda}}
  runtime: onnx
  resources: {{gpu: {gpu}}}
  auth: {{public: true}}
  batching: {{enabled: true, maxBatchSize: 64, maxLatencyMs: 5}}
  enabled: {enabled}
"""
    return (
        """apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: digits}
spec:
  type: image
  task: classification
  format: image-folder
  source: {sample: digits}
  splits: {train: 0.8, validation: 0.1, test: 0.1, seed: 42}
  preprocessing: [{op: Resize, params: {size: [32, 32]}}]
"""
        + "".join(exp.format(dev=d, epochs=epochs) for d in ("cuda", "cpu"))
        + "".join(dep.format(dev=d, gpu=g, enabled=str(enabled).lower()) for d, g in (("cuda", 1), ("cpu", 0)))
    )


def kiln(repo: Path, *args: str, timeout: float = 1800) -> str:
    p = subprocess.run([*KILN, *args], cwd=repo, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"gpu_check: kiln {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def status(repo: Path, ref: str) -> dict[str, object]:
    """The ``Status:`` block of ``kiln describe`` (one JSON value per key)."""
    out, block = {}, False
    for line in kiln(repo, "describe", ref).splitlines():
        if line.startswith("Status:"):
            block = True
        elif block and line.startswith("  ") and ": " in line:
            k, v = line.strip().split(": ", 1)
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        elif block:
            break
    return out


def body(n: int) -> bytes:
    from PIL import Image
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:n]
    inst = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray((im * 255 / 16).astype("uint8")).resize((32, 32)).save(buf, "PNG")
        inst.append({"data": base64.b64encode(buf.getvalue()).decode()})
    return json.dumps({"instances": inst}).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0, help="load per server and round")
    ap.add_argument("--instances", type=int, default=32, help="images per request")
    ap.add_argument("--keep", action="store_true", help="keep the temporary repository")
    ap.add_argument(
        "--cpu-rehearsal",
        action="store_true",
        help="no GPU needed: train both on the CPU, to check the script itself on any machine",
    )
    a = ap.parse_args()
    why = None if a.cpu_rehearsal else gpu_present()
    if why:
        print(f"gpu_check: no GPU on this machine ({why}); nothing measured")
        return 0
    import onnxruntime as ort
    import torch

    print(
        f"gpu_check: {torch.cuda.get_device_name(0) if not a.cpu_rehearsal else 'CPU rehearsal'}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}"
    )
    repo = Path(tempfile.mkdtemp(prefix="kiln-gpu-check-"))
    try:
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        (repo / "specs").mkdir()
        text = specs(a.epochs)
        (repo / "specs" / "all.yaml").write_text(text.replace("device: cuda", "device: cpu") if a.cpu_rehearsal else text)
        t0 = time.perf_counter()
        # one training at a time: the CPU one must not share the cores with the GPU one's loader
        (repo / "kiln.yaml").write_text("concurrency: 1\n")
        out = kiln(repo, "apply")
        kiln(repo, "apply")  # the deployments, if the plan held them until the model existed
        took = {
            m.group(1): float(m.group(2)) for m in re.finditer(r"^  Experiment/digits-(\w+): created in ([\d.]+)s$", out, re.M)
        }
        for dev in ("cuda", "cpu"):
            st = status(repo, f"Experiment/digits-{dev}")
            print(
                f"train resnet18 on {dev}: {took.get(dev, float('nan')):.1f} s for {a.epochs} epochs "
                f"(~{took.get(dev, float('nan')) / a.epochs:.1f} s/epoch incl. start-up), best {st.get('best')}"
            )
        urls = {}
        for dev in ("cuda", "cpu"):
            st = status(repo, f"Deployment/serve-{dev}")
            urls[dev] = str(st.get("url"))
            print(f"deployment serve-{dev}: {st.get('url')} device={st.get('device')}")
            if dev == "cuda" and st.get("device") != "cuda":
                print(
                    "gpu_check: the GPU deployment serves on the CPU: onnxruntime has no usable "
                    "CUDAExecutionProvider here (install onnxruntime-gpu matching the CUDA version)"
                )
        from kiln.bento.loadgen import run

        payload = body(a.instances)
        res: dict[str, list[float]] = {"cuda": [], "cpu": []}
        for _ in range(2):  # interleaved rounds: a busy neighbour hits both alike
            for dev in ("cuda", "cpu"):
                r = asyncio.run(run(f"{urls[dev]}/predict", payload, concurrency=8, requests=10**7, seconds=a.seconds))
                if r["good_non200"] or r["errors"]:
                    print(f"gpu_check: serve-{dev} answered {r['codes']} errors={r['errors']}")
                    return 1
                res[dev].append(r["rps"])
                print(
                    f"serve-{dev}: {r['rps']} req/s ({r['rps'] * a.instances:.0f} images/s) p50 {r['p50_ms']} ms "
                    f"p99 {r['p99_ms']} ms"
                )
        best = {d: max(v) for d, v in res.items()}
        print(
            f"summary: train {took.get('cuda', 0):.1f} s GPU vs {took.get('cpu', 0):.1f} s CPU; serving "
            f"{best['cuda']} vs {best['cpu']} req/s ({best['cuda'] / max(best['cpu'], 1e-9):.2f}x); "
            f"total {time.perf_counter() - t0:.0f} s"
        )
        return 0
    finally:
        (repo / "specs" / "all.yaml").write_text(specs(a.epochs, enabled=False))
        subprocess.run([*KILN, "apply"], cwd=repo, capture_output=True, timeout=300)  # stops the servers
        if not a.keep:
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
