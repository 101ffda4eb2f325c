"""The full retraining loop in one test, from specs alone, with real components (issue 7).

A Dataset ``base`` (scikit-learn digits 0-2 as PNGs) -> an Experiment following it (resnet18, one
tiny epoch) registers a model -> a Deployment serves it with input capture -> real HTTP predict
requests are captured -> Dataset ``captured`` versions them -> a LabelingJob, pre-annotated by
asking that Deployment (``preAnnotation.deployment``), is annotated through the Label Studio API
and completes -> a new version of ``base`` with lineage to the job -> the Experiment retrains on
it, registers a new model version, and the Deployment rolls it out. Everything goes through ``kiln apply``/``kiln plan`` (the CLI)
in a temp git repo with DVC, the local runner, the real Label Studio (session fixture) and a real
BentoML server; the servers the test starts are killed at the end.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import kill_deployment_servers, kiln, write

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("dvc")
pytest.importorskip("torch")
pytest.importorskip("bentoml")
pytest.importorskip("sklearn")

TOKEN_ENV = "KILN_TEST_LS_TOKEN"
ANNOTATORS = ["cy@example.com", "di@example.com"]
CLASSES = ["0", "1", "2"]


def spec(kind: str, name: str, body: str) -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
            + "".join(f"  {ln}\n" for ln in body.strip().splitlines()))


SPECS = {
    "specs/base.yaml": spec("Dataset", "base", """
type: image
task: classification
format: image-folder
source: {path: raw/base}
"""),
    "specs/captured.yaml": spec("Dataset", "captured", """
type: image
task: classification
format: image-folder
source: {capture: digits-api}
"""),
    "specs/exp.yaml": spec("Experiment", "digits-exp", """
dataset: {name: base, version: latest}
split: {train: 0.75, validation: 0.25}
algorithm:
  name: resnet18
  hyperparameters: {epochs: 1, input_size: 16, batch_size: 16, learning_rate: 0.05}
trigger: {onNewDatasetVersion: retrain}
register: {model: digits-net}
"""),
    "specs/deploy.yaml": spec("Deployment", "digits-api", """
model: {experiment: digits-exp}
auth: {public: true}
batching: {enabled: false}
capture: {sampleRate: 1.0, maxPerDay: 100, dataset: captured}
"""),
    "specs/relabel.yaml": spec("LabelingJob", "relabel", """
dataset: {name: captured}
task: classification
labels: ["0", "1", "2"]
annotators: [cy@example.com, di@example.com]
completion: {rule: all-annotated}
preAnnotation: {deployment: digits-api, threshold: 0.0}
output: {dataset: base}
"""),
}


def digits(n_per_class: int, offset: int) -> list[tuple[str, np.ndarray]]:
    """(class, 16x16 RGB image) of scikit-learn's bundled digits 0-2, ``offset`` items in."""
    from sklearn.datasets import load_digits

    d = load_digits(n_class=len(CLASSES))
    out = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(d.target == c)[offset:offset + n_per_class]
        for i in idx:
            g = (d.images[i] * (255 / 16)).astype(np.uint8)
            g = np.kron(g, np.ones((2, 2), dtype=np.uint8))  # 8x8 -> 16x16
            out.append((str(c), np.stack([g] * 3, axis=-1)))
    return out


def png_b64(arr: np.ndarray) -> str:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def versions(repo: Path, name: str) -> dict:
    return json.loads((repo / f"data/default/{name}.versions.json").read_text())


def get(repo: Path, kind: str, name: str) -> dict:
    return json.loads(kiln("get", kind, name, "-o", "json", cwd=repo, check=True).stdout)


def server(repo: Path) -> dict:
    return json.loads((repo / ".kiln/deployments/default/digits-api/server.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retraining_loop_from_specs(label_studio) -> None:
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.deployment_steps import post
    from kiln.labeling.client import LabelingClient, choice_region

    fx = label_studio
    repo = git_repo(fx.repos / "loop")
    env = {TOKEN_ENV: fx.token}
    (repo / "kiln.yaml").write_text(
        f"labelStudio: {{url: '{fx.url}', tokenEnv: {TOKEN_ENV}, documentRoot: '{fx.document_root}'}}\n")
    write(repo, SPECS)
    for k, (label, arr) in enumerate(digits(12, 0)):
        (repo / "raw/base" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(repo / "raw/base" / label / f"b{k:03d}.png")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "specs and base images"], cwd=repo, check=True)
    timings: dict[str, float] = {}
    logs: list[str] = []  # every apply's output, for the failure message

    def apply(stage: str, want_rc: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        out = kiln("apply", cwd=repo, env=env, timeout=600)
        timings[stage] = timings.get(stage, 0) + time.monotonic() - t0
        logs.append(f"--- kiln apply ({stage}): rc {out.returncode}\n{out.stdout}{out.stderr}")
        assert out.returncode in want_rc, f"{stage}: rc {out.returncode}\n{out.stdout}\n{out.stderr}"
        assert "Traceback" not in out.stdout + out.stderr
        return out

    try:
        # 1-3: base v1, the experiment trains and registers v1, the deployment serves it; the
        # capture dataset and the job wait for traffic (exit 2: not everything could be applied)
        first = apply("1 base v1 + train + serve", (2,))
        assert "Dataset/captured: not applied: source.capture 'digits-api'" in first.stdout, first.stdout
        base = versions(repo, "base")
        assert len(base["versions"]) == 1
        v1_id = base["current"]
        reg = Registry(default_home(repo))
        assert reg.versions("digits-net") == [1]
        served = server(repo)
        assert served["model"] == "digits-net" and served["version"] == 1

        # 3: real HTTP predict requests with images; every one is captured (sampleRate 1)
        t0 = time.monotonic()
        queries = digits(2, 30)  # 6 images the model never saw
        for _, arr in queries:
            code, body = post(served["url"], {"instances": [{"data": png_b64(arr)}]}, None)
            assert code == 200 and body["predictions"][0][0]["label"] in CLASSES, body
        index = repo / ".kiln/deployments/default/digits-api/capture/index.jsonl"
        deadline = time.monotonic() + 10
        while (not index.is_file() or len(index.read_text().splitlines()) < len(queries)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        captured = [json.loads(ln) for ln in index.read_text().splitlines()]
        assert len(captured) == len(queries) and all(c["file"] and c["version"] == 1 for c in captured)
        timings["3 predict + capture"] = time.monotonic() - t0

        # 4-5: the capture becomes a dataset version; the job is created on it, pre-annotated
        apply("4 captured v1 + labelling job")
        cap = versions(repo, "captured")
        assert len(cap["versions"]) == 1
        job = get(repo, "labelingjob", "relabel")["extra"]
        assert job["dataset"] == "default/captured@v1" and job["items"] == len(queries), job
        assert job["preAnnotation"]["withPredictions"] == len(queries)
        # the deployment answered them (its model v1), and its capture skipped those requests
        assert len(index.read_text().splitlines()) == len(queries)
        assert not job["completion"]["complete"]

        # 5: annotate every task through the API as its annotator
        t0 = time.monotonic()
        admin = LabelingClient(fx.url, fx.token)
        uid = admin.users()
        pid = job["project"]
        ids = admin.existing_keys(pid)
        assert len(ids) == len(queries)
        truth = {}
        for c, (label, _) in zip(captured, queries):
            truth[c["file"]] = label
        owner = {k: who for who, (lo, hi) in job["assignment"].items() for k in range(lo, hi + 1)}
        for n, key in enumerate(sorted(ids), start=1):
            label = next(v for f, v in truth.items() if key.endswith(Path(f).name) or f.endswith(key))
            admin.annotate(ids[key], [choice_region(label)], user_id=uid[owner[n]])
        timings["5 annotate (API)"] = time.monotonic() - t0

        # 5-6: completion -> export -> base v2 -> retrain -> new model -> rollout; as the
        # controller would: apply until the plan is clean (a few rounds at most)
        rounds = 0
        while True:
            rounds += 1
            apply("6 complete + retrain + rollout")
            t0 = time.monotonic()
            p = kiln("plan", "--detailed-exitcode", cwd=repo, env=env)
            timings["6 plan"] = timings.get("6 plan", 0) + time.monotonic() - t0
            if p.returncode == 0:
                break
            assert p.returncode == 2 and rounds < 4, p.stdout + p.stderr
        job = get(repo, "labelingjob", "relabel")["extra"]
        assert job["completion"]["complete"] and job["output"]["dataset"] == "default/base"
        base = versions(repo, "base")
        assert len(base["versions"]) == 2
        v2 = base["versions"][1]
        assert base["current"] == v2["id"] != v1_id and v2["lineage"]["parent"] == v1_id
        assert v2["lineage"]["labelingJob"]["job"] == "LabelingJob/default/relabel"
        assert v2["lineage"]["derivedFrom"] == {"dataset": "default/captured", "version": cap["current"]}
        # the labelled captured items are added to base: v2 = v1's images + 2 new ones per class
        v1_counts = base["versions"][0]["per_class_counts"]
        assert v2["per_class_counts"] == {c: v1_counts[c] + 2 for c in CLASSES}, v2["per_class_counts"]
        assert v2["lineage"]["addedTo"] == {"dataset": "default/base", "version": v1_id, "items": len(queries)}

        # the new model version was trained on base v2, and the deployment serves it
        got = sorted(reg.versions("digits-net"))
        assert got == [1, 2], "\n".join(logs)
        assert reg.describe("digits-net", 2)["labels"]["dataset_version"] == v2["id"]
        assert reg.describe("digits-net", 1)["labels"]["dataset_version"] == v1_id
        exp = get(repo, "experiment", "digits-exp")["extra"]
        assert exp["inputVersions"] == {"default/base": v2["id"]}, exp
        assert exp["dataset"]["number"] == "v2" and exp["registered"]["version"] == 2
        new = server(repo)
        assert new["version"] == 2 and new["pid"] != served["pid"]
        code, body = post(new["url"], {"instances": [{"data": png_b64(queries[0][1])}]}, None)
        assert code == 200 and body["predictions"][0][0]["label"] in CLASSES
        # the server itself says which version answered: its capture record of that request
        deadline = time.monotonic() + 10
        while len(index.read_text().splitlines()) <= len(queries) and time.monotonic() < deadline:
            time.sleep(0.1)
        last = json.loads(index.read_text().splitlines()[-1])
        assert len(index.read_text().splitlines()) == len(queries) + 1  # no smoke-test image in it
        assert (last["model"], last["version"]) == ("digits-net", 2)
        print(f"\nretraining loop: {rounds} apply round(s) after annotating")
        for text in logs:
            print("\n".join(ln for ln in text.splitlines() if ln.startswith(("---", "~", "+", "!", "Apply"))
                            or ln.strip().startswith("+ ")))
    finally:
        kill_deployment_servers(repo)
        for stage, s in timings.items():
            print(f"  {stage}: {s:.1f}s")
