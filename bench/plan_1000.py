"""Benchmark: a no-change `kiln plan` over 1,000 specs vs only parsing the same YAML files.

Both sides run as fresh processes (interpreter start included on both), best of N runs, in the
same run of this script, so the ratio is stable on a noisy machine. Targets: plan <= 1.0 s and
<= 3x the parse-only baseline.

    python bench/plan_1000.py [--specs 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DATASET = """\
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {{name: data-{i}, workspace: ws-{w}, labels: {{team: t{w}}}}}
spec:
  type: tabular
  task: classification
  format: csv
  source: {{path: data/{i}.csv}}
  splits: {{train: 0.8, validation: 0.1, test: 0.1, seed: {i}}}
  preprocessing:
    - {{op: SimpleImputer, params: {{strategy: mean}}}}
    - {{op: StandardScaler}}
"""
EXPERIMENT = """\
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {{name: exp-{i}, workspace: ws-{w}}}
spec:
  mode: hpo
  dataset: {{name: data-{d}, version: latest}}
  algorithm:
    name: random_forest
    hyperparameters: {{n_estimators: 100}}
    searchSpace:
      max_depth: {{type: int, low: 2, high: 12}}
      min_samples_leaf: {{type: int, low: 1, high: 8}}
  hpo: {{maxTrials: 20, parallelTrials: 2}}
  objective: {{metric: validation_accuracy, direction: maximize, goal: 0.95}}
  resources: {{preset: small}}
  register: {{model: model-{i}, aliases: [production], keepVersions: 3, export: [onnx]}}
"""
DEPLOYMENT = """\
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {{name: svc-{i}, workspace: ws-{w}}}
spec:
  model: {{name: model-{e}, alias: production}}
  runtime: onnx
  batching: {{maxBatchSize: 16, maxLatencyMs: 5}}
  resources: {{preset: small}}
"""
WORKSPACE = """\
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {{name: ws-{w}}}
spec:
  members: [{{user: a{w}@example.com, role: admin}}, {{user: b{w}@example.com, role: developer}}]
  presets: [{{name: small, cpu: "2", memory: 4Gi}}]
  quotas: {{cpu: "64", memory: 256Gi}}
"""


def generate(root: Path, n: int) -> None:
    """n spec files: 10 workspaces, then datasets, experiments and deployments in equal parts."""
    specs = root / "specs"
    specs.mkdir(parents=True)
    w_count = 10
    for w in range(w_count):
        (specs / f"ws-{w}.yaml").write_text(WORKSPACE.format(w=w))
    rest = n - w_count
    per = rest // 3
    data = root / "data"  # the datasets' source files: validate checks that they exist
    data.mkdir()
    for i in range(per):
        w = i % w_count
        (data / f"{i}.csv").write_text("x1,x2,label\n0.5,1,a\n0.7,2,b\n")
        (specs / f"data-{i}.yaml").write_text(DATASET.format(i=i, w=w))
        (specs / f"exp-{i}.yaml").write_text(EXPERIMENT.format(i=i, w=w, d=i))
    for i in range(rest - 2 * per):
        e = i % per
        (specs / f"svc-{i}.yaml").write_text(DEPLOYMENT.format(i=i, w=e % w_count, e=e))


def record_as_applied(root: Path) -> None:
    """Write the state an apply would leave, so that the plan has nothing to do."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import dataclasses

    from kiln.config import load_config
    from kiln.controller.plan import input_versions
    from kiln.controller.project import load_valid, open_state
    from kiln.state import ObjectRecord

    cfg = load_config(root)
    specs = load_valid(cfg)
    store = open_state(cfg)
    with store.transaction():
        for s in specs.specs:
            rec = ObjectRecord(key=s.key, source=s.location()).applied(s.doc, s.spec_hash)
            rec = rec.with_condition("Ready", "True", "Succeeded", "applied")
            # what apply records besides the spec: the source files' fingerprint it read
            rec = dataclasses.replace(rec, extra={**rec.extra, "inputVersions": input_versions(cfg, s)})
            store.put(rec)
    store.close()


def best(cmd: list[str], cwd: Path, repeat: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeat):
        before()
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode not in (0,):
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return min(times)


PARSE_ONLY = textwrap.dedent("""
    import os, sys, yaml
    n = 0
    for d, _, files in os.walk("specs"):
        for f in files:
            if f.endswith((".yaml", ".yml")):
                with open(os.path.join(d, f)) as fh:
                    n += sum(1 for _ in yaml.load_all(fh.read(), Loader=yaml.CSafeLoader))
    print(n)
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, args.specs)
        record_as_applied(root)
        cmd = [sys.executable, "-m", "kiln.cli", "plan", "--detailed-exitcode"]
        import os
        import shutil

        # the parse cache lives in the user's cache folder (kiln.loader.spec_cache_dir): a private one here
        os.environ["KILN_SPEC_CACHE_DIR"] = str(root / "spec-cache")
        cold = best(cmd, root, args.repeat, lambda: shutil.rmtree(root / "spec-cache", ignore_errors=True))
        best(cmd, root, 1)  # fill the parse cache
        plan = best(cmd, root, args.repeat)
        parse = best([sys.executable, "-c", PARSE_ONLY], root, args.repeat)
        python = best([sys.executable, "-c", "pass"], root, args.repeat)
    print(f"specs: {args.specs}, best of {args.repeat}")
    print(f"kiln plan (no changes):       {plan:.3f} s   target <= 1.0 s  {'OK' if plan <= 1.0 else 'MISSED'}")
    print(f"parse only (PyYAML C loader): {parse:.3f} s")
    print(f"ratio plan / parse:           {plan / parse:.2f}x  target <= 3x  {'OK' if plan / parse <= 3 else 'MISSED'}")
    print(f"cold plan (empty parse cache, every file parsed and validated): {cold:.3f} s, "
          f"{cold / parse:.2f}x parse-only")
    print(f"(bare interpreter start:      {python:.3f} s, included in both)")


if __name__ == "__main__":
    main()
