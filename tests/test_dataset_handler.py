"""Datasets applied for real: `kiln apply` in temp git repos runs the Dataset workflow on the local
runner (fetch -> validate -> preprocess -> split -> version) with real DVC; `kiln data` reads it."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, kiln, write

pytest.importorskip("dvc")
np = pytest.importorskip("numpy")


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def ds(name: str, spec: str, workspace: str | None = None) -> str:
    meta = f"{{name: {name}" + (f", workspace: {workspace}" if workspace else "") + "}"
    return f"apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {meta}\nspec:\n" + \
        "".join(f"  {line}\n" for line in spec.strip().splitlines())


def versions_log(repo: Path, name: str, ws: str = "default") -> dict:
    return json.loads((repo / "data" / ws / f"{name}.versions.json").read_text())


def status(repo: Path) -> dict[str, dict]:
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    return {f"{r['workspace']}/{r['name']}": r for r in rows}


def run_started(repo: Path, wf: str) -> str:
    return json.loads((repo / ".kiln/runs" / wf / "workflow.json").read_text())["status"]["startedAt"]


WINE = """
type: tabular
task: classification
format: csv
source: {sample: wine}
label: target
splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 7}
preprocessing:
  - {op: StandardScaler}
versioning: {commit: auto}
"""


def test_version_lifecycle_apply_twice_same_data_one_op_change(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    write(repo, {"specs/wine.yaml": ds("wine", WINE)})
    first = kiln("apply", cwd=repo)
    assert first.returncode == 0, first.stdout + first.stderr
    log = versions_log(repo, "wine")
    assert len(log["versions"]) == 1
    v1 = log["versions"][0]
    assert v1["files"] == 5 and v1["per_class_counts"] == {"0": 59, "1": 71, "2": 48}
    assert v1["lineage"]["ops"] == [{"op": "StandardScaler", "columns": None, "params": {}}]
    assert v1["lineage"]["parent"] is None and v1["lineage"]["source"] == "sample:wine"
    folder = repo / "data/default/wine"
    # fitted transform and split manifest are versioned with the data
    assert (folder / ".kiln/preprocess.joblib").is_file()
    manifest = json.loads((folder / ".kiln/splits.json").read_text())
    assert manifest["seed"] == 7 and manifest["stratified"] is True
    assert sorted(set(manifest["items"].values())) == ["test", "train", "validation"]
    # the scaler was fitted on the train rows the manifest names, not on validation/test (no leak)
    import numpy as np

    from kiln.data import load

    table = load(folder).table.frame
    feats = [c for c in table.columns if c != "target"]
    train = sorted(int(k) for k, s in manifest["items"].items() if s == "train")
    held_out = sorted(int(k) for k, s in manifest["items"].items() if s != "train")
    assert len(train) == 124 and np.allclose(table.iloc[train][feats].mean(), 0, atol=1e-9)
    assert np.allclose(table.iloc[train][feats].std(ddof=0), 1, atol=1e-9)
    assert not np.allclose(table.iloc[held_out][feats].mean(), 0, atol=1e-3)
    # commit: auto committed the .dvc file and the log, naming dataset and version
    msg = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout
    assert msg.strip() == f"kiln: dataset default/wine v1 ({v1['id'][:12]})"
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "data/default/wine.dvc" in tracked and "data/default/wine.versions.json" in tracked
    assert not any(t.startswith("data/default/wine/") for t in tracked)
    # the staging copies are gone once versioned
    assert not (repo / ".kiln/workspaces/default/datasets/wine/staging").exists()
    st = status(repo)["default/wine"]
    assert st["info"].startswith(f"v1 {v1['id'][:12]} 5 files")
    rec = json.loads(kiln("get", "dataset", "wine", "-o", "json", cwd=repo, check=True).stdout)
    assert rec["extra"]["classes"] == {"0": 59, "1": 71, "2": 48}
    assert {"kind": "dvc", "id": "data/default/wine", "version": v1["id"]} in rec["inventory"]

    # unchanged spec: nothing runs, no workflow task, no version
    started = run_started(repo, "kiln-data-wine")
    second = kiln("apply", cwd=repo, check=True)
    assert "0 action(s)" in second.stdout and "unchanged, skipping" in second.stdout
    assert run_started(repo, "kiln-data-wine") == started
    assert len(versions_log(repo, "wine")["versions"]) == 1

    # a description is metadata (#25): recorded, nothing runs
    (repo / "specs/wine.yaml").write_text(ds("wine", WINE + "description: the wine sample\n"))
    kiln("apply", cwd=repo, check=True)
    assert run_started(repo, "kiln-data-wine") == started
    # a re-run change with identical data (the same bytes, copied to another path): the
    # workflow runs, DVC's hash says: same version
    from kiln.data.samples import materialize_sample
    materialize_sample("wine", repo / "raw/wine-copy")
    csvs = [p.relative_to(repo).as_posix() for p in (repo / "raw/wine-copy").rglob("*.csv")]
    assert len(csvs) == 1, csvs
    (repo / "specs/wine.yaml").write_text(ds("wine", WINE.replace("source: {sample: wine}", f"source: {{path: {csvs[0]}}}")
                                         + "description: the wine sample\n"))
    kiln("apply", cwd=repo, check=True)
    assert run_started(repo, "kiln-data-wine") != started
    log = versions_log(repo, "wine")
    assert [v["id"] for v in log["versions"]] == [v1["id"]] and log["current"] == v1["id"]

    # one op changed: exactly one new version, its parent the previous one
    (repo / "specs/wine.yaml").write_text(ds("wine", WINE.replace("StandardScaler", "MinMaxScaler")))
    kiln("apply", cwd=repo, check=True)
    log = versions_log(repo, "wine")
    assert len(log["versions"]) == 2
    v2 = log["versions"][1]
    assert log["current"] == v2["id"] and v2["lineage"]["parent"] == v1["id"]
    assert v2["lineage"]["ops"][0]["op"] == "MinMaxScaler"

    listed = json.loads(kiln("data", "versions", "wine", "-o", "json", cwd=repo, check=True).stdout)
    assert [(v["number"], v["id"], v["current"]) for v in listed] == [("v1", v1["id"], False), ("v2", v2["id"], True)]
    table = kiln("data", "versions", "wine", cwd=repo, check=True).stdout
    assert "MinMaxScaler" in table and "*  v2" in table
    diff = kiln("data", "diff", "wine", "v1", v2["id"][:8], cwd=repo, check=True).stdout
    assert "changed: 4" in diff and "data.csv" in diff and "class counts: unchanged" in diff
    bad = kiln("data", "diff", "wine", "v1", "v9", cwd=repo)
    assert bad.returncode == 1 and "has no version v9; it has v1..v2" in bad.stderr and "Traceback" not in bad.stderr
    # export an old version; its table is the first version's
    kiln("data", "export", "wine", str(tmp_path / "out"), "--version", "v1", cwd=repo, check=True)
    from kiln.data import load

    h = load(tmp_path / "out", label="target").content_hash()
    assert h == v1["lineage"]["contentHash"]


def make_bad_sources(repo: Path) -> dict[str, str]:
    """One broken dataset per kind of problem; returns name -> what its error must name."""
    from tests.data.conftest import make_coco, make_image_folder, make_segmentation_json, save

    corrupt = make_image_folder(repo / "raw/corrupt", n=1)
    bad = corrupt / "train/red/train_red_0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    coco = make_coco(repo / "raw/coco")
    (coco / "validation/img1.png").unlink()
    seg = make_segmentation_json(repo / "raw/seg")
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0] = 7
    save(mask, seg / "train/annotations/0001.png")
    # free text (a date column is featurised since #24): many distinct values of several words
    words = ["great", "slow", "delivery", "broken", "box", "love", "it", "would", "buy", "again"]
    (repo / "raw/sales").mkdir(parents=True)
    (repo / "raw/sales/sales.csv").write_text("review,y\n" + "".join(
        f"{' '.join(words[(i + k) % 10] for k in range(6 + i % 3))} #{i},{i % 2}\n" for i in range(40)))
    with zipfile.ZipFile(repo / "raw/evil.zip", "w") as zf:
        zf.writestr("../../escape.txt", "x")
    specs = {
        "corrupt": "type: image\ntask: classification\nsource: {path: raw/corrupt}",
        "coco": "type: image\ntask: detection\nformat: coco\nsource: {path: raw/coco}",
        "seg": "type: image\ntask: semantic-segmentation\nsource: {path: raw/seg}",
        "sales": "type: tabular\ntask: classification\nsource: {path: raw/sales/sales.csv}",
        "evil": "type: image\ntask: classification\nsource: {archive: raw/evil.zip}",
    }
    write(repo, {f"specs/{n}.yaml": ds(n, s) for n, s in specs.items()})
    return {
        "corrupt": "validate: raw/corrupt/train/red/train_red_0.png: corrupt or undecodable image",
        "coco": "validate: raw/coco/validation/_annotations.coco.json:",
        "seg": "validate: raw/seg/train/annotations/0001.png:",
        "sales": "validate: raw/sales/sales.csv: column 'review' holds free text",
        "evil": "fetch: raw/evil.zip: member '../../escape.txt' would be written outside the target folder",
    }


def test_fitted_preprocessing_learns_from_the_versions_train_rows_only(tmp_path: Path) -> None:
    """No statistic of validation/test rows in the features: the stored scaler is the one fitted
    on the train rows alone, also when a later op reorders the rows and when the spec names no
    split (training's default split is decided and recorded with the version)."""
    import joblib

    from kiln.data import load
    from kiln.data.samples import materialize_sample
    from kiln.data.splits import split_rows

    repo = git_repo(tmp_path / "repo")
    sorted_spec = WINE.replace("  - {op: StandardScaler}", "  - {op: StandardScaler}\n  - {op: sort_values, params: {by: [alcohol]}}")
    write(repo, {"specs/sorted.yaml": ds("wine-sorted", sorted_spec),
                 "specs/nosplit.yaml": ds("wine-nosplit", WINE.replace("splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 7}\n", ""))})
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    raw = load(materialize_sample("wine", tmp_path / "raw"), label="target").table
    feats = [c for c in raw.frame.columns if c != "target"]
    for name, ratios, seed in (("wine-sorted", {"train": 0.7, "validation": 0.15, "test": 0.15}, 7),
                               ("wine-nosplit", {"train": 0.8, "validation": 0.1, "test": 0.1}, 0)):
        folder = repo / "data/default" / name
        # the train rows of the source, as the split rule assigns them before any op
        want, _ = split_rows(raw.frame, "target", ratios, seed, True, raw.columns)
        raw_train = raw.frame.iloc[sorted(int(k) for k, s in want.items() if s == "train")][feats]
        scaler = joblib.load(folder / ".kiln/preprocess.joblib").ops[0].est
        assert np.allclose(scaler.mean_, raw_train.mean()) and np.allclose(scaler.scale_, raw_train.std(ddof=0))
        assert not np.allclose(scaler.mean_, raw.frame[feats].mean())  # all rows' statistics differ
        # the version's recorded split is that assignment: its train rows are the standardised ones
        manifest = json.loads((folder / ".kiln/splits.json").read_text())
        table = load(folder, label="target").table.frame
        rows = {s: sorted(int(k) for k, v in manifest["items"].items() if v == s) for s in ("train", "test")}
        assert len(rows["train"]) == len(raw_train)
        assert np.allclose(table.iloc[rows["train"]][feats].mean(), 0, atol=1e-9)
        assert np.abs(table.iloc[rows["test"]][feats].mean()).max() > 0.1  # held out: not centred on itself
        v = versions_log(repo, name)["versions"][0]
        assert v["lineage"]["fittedOn"] == {"split": "train", "rows": len(raw_train)}
    assert load(repo / "data/default/wine-sorted", label="target").table.frame["alcohol"].is_monotonic_increasing


def test_bad_data_fails_with_one_line_naming_the_file_and_no_version(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    expected = make_bad_sources(repo)
    t0 = time.monotonic()
    p = kiln("apply", cwd=repo)
    elapsed = time.monotonic() - t0
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    st = status(repo)
    for name, start in expected.items():
        row = st[f"default/{name}"]
        assert row["ready"] == "False" and row["reason"] == "Failed"
        assert row["message"].startswith(start), (name, row["message"])
        assert "\n" not in row["message"]
        assert f"x Dataset/{name}: {start}" in p.stdout
    assert "class id 7" in st["default/seg"]["message"]
    assert "'img1.png'" in st["default/coco"]["message"]
    assert not (tmp_path / "escape.txt").exists() and not (repo.parent / "escape.txt").exists()
    assert not (repo / "data").exists()  # no version, not even an empty folder
    # bad input is not retried (fetch has retries with a 5 s backoff for transient failures)
    assert elapsed < 5 * 15


def test_capture_source_is_not_applicable_yet_with_a_clear_message(tmp_path: Path) -> None:
    """Plan says why digits-captured cannot be applied (apply: test_example_datasets_apply)."""
    import shutil

    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    plan = kiln("plan", cwd=tmp_path, check=True).stdout
    line = next(ln for ln in plan.splitlines() if "Dataset/vision/digits-captured" in ln)
    assert "[source.capture 'digits-classifier': Deployment 'digits-classifier' has captured nothing yet" in line
    assert "Not yet applicable (source not available yet): Dataset/vision/digits-captured" in plan
    assert "Dataset/vision/digits " in plan and "no Dataset handler" not in plan
    js = json.loads(kiln("plan", "--format", "json", cwd=tmp_path, check=True).stdout)
    cap = next(c for c in js["changes"] if c["ref"] == "Dataset/vision/digits-captured")
    assert cap["handler"] == "not available yet" and "has captured nothing yet" in cap["reason"]


IMAGES = """
type: image
task: classification
source: {path: raw/shapes}
splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 1}
preprocessing:
  - {op: flip, params: {direction: horizontal}}
"""


def test_kill_9_mid_apply_then_apply_again_no_duplicate_version(tmp_path: Path) -> None:
    from tests.data.conftest import make_image_folder

    repo = git_repo(tmp_path / "repo")
    make_image_folder(repo / "raw/shapes", n=4, splits=("train",))
    write(repo, {"specs/shapes.yaml": ds("shapes", IMAGES)})
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", "apply"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    staging = repo / ".kiln/workspaces/default/datasets/shapes/staging"
    deadline = time.time() + 90
    # the preprocess task imports torch: kill the controller while it runs
    while not list(staging.glob("*/validated.json")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rec = json.loads(kiln("get", "dataset", "shapes", "-o", "json", cwd=repo, check=True).stdout)
    assert rec["generation"] == 0
    assert {c["type"]: c["status"] for c in rec["conditions"]}.get("Ready") != "True"
    again = kiln("apply", cwd=repo, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    log = versions_log(repo, "shapes")
    assert len(log["versions"]) == 1 and log["current"] == log["versions"][0]["id"]
    assert log["versions"][0]["per_class_counts"] == {"blue": 4, "green": 4, "red": 4}
    wf = json.loads((repo / ".kiln/runs/kiln-data-shapes/workflow.json").read_text())
    ran = {n["displayName"] for n in wf["status"]["nodes"].values() if n["type"] == "Pod"}
    assert {"fetch(0)", "validate", "version(0)"} <= ran
    third = kiln("apply", cwd=repo, check=True)
    assert "0 action(s)" in third.stdout
    assert len(versions_log(repo, "shapes")["versions"]) == 1
    # what is checked out is that version: the images, flipped, in split folders
    files = sorted(p.relative_to(repo / "data/default/shapes").as_posix()
                   for p in (repo / "data/default/shapes").rglob("*.png"))
    assert len(files) == 12 and {f.split("/")[0] for f in files} == {"train", "validation", "test"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["image-folder", "coco", "csv"])
def test_format_roundtrip_import_version_export_reimport(tmp_path: Path, fmt: str) -> None:
    from tests.data.conftest import make_coco, make_image_folder

    repo = git_repo(tmp_path / "repo")
    if fmt == "image-folder":
        make_image_folder(repo / "raw/src", n=2)
        spec = "type: image\ntask: classification\nformat: image-folder\nsource: {path: raw/src}"
    elif fmt == "coco":
        make_coco(repo / "raw/src", n=2, segmentation=True)
        spec = "type: image\ntask: instance-segmentation\nformat: coco\nsource: {path: raw/src}"
    else:
        (repo / "raw/src").mkdir(parents=True)
        (repo / "raw/src/t.csv").write_text("a,colour,y\n1.5,red,0\n2.0,blue,1\n3.5,red,1\n0.5,green,0\n")
        spec = "type: tabular\ntask: classification\nformat: csv\nsource: {path: raw/src}"
    write(repo, {"specs/a.yaml": ds("first", spec)})
    kiln("apply", cwd=repo, check=True)
    kiln("data", "export", "first", "raw/exported", "--format", fmt, cwd=repo, check=True)
    write(repo, {"specs/b.yaml": ds("second", spec.replace("raw/src", "raw/exported"))})
    kiln("apply", cwd=repo, check=True)
    a, b = versions_log(repo, "first")["versions"], versions_log(repo, "second")["versions"]
    assert a[0]["lineage"]["contentHash"] == b[0]["lineage"]["contentHash"]
    assert a[0]["per_class_counts"] == b[0]["per_class_counts"] and a[0]["per_class_counts"]


@pytest.mark.slow
def test_sources_archive_url_file_url_and_derived_dataset(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    from tests.data.conftest import make_image_folder

    repo = git_repo(tmp_path / "repo")
    src = make_image_folder(tmp_path / "shapes", n=2)
    served = tmp_path / "www"
    served.mkdir()
    with zipfile.ZipFile(served / "shapes.zip", "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, f"shapes/{p.relative_to(src).as_posix()}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shapes.zip"
        base = "type: image\ntask: classification\n"
        write(repo, {
            # an archive outside the repository, file:// and loopback HTTP need the operator's consent
            "kiln.yaml": "datasets: {allowFileUrls: true, allowPrivateNetworks: true}\n",
            "specs/zip.yaml": ds("zipped", base + f"source: {{archive: {served / 'shapes.zip'}}}"),
            "specs/http.yaml": ds("http", base + f"source: {{url: '{url}'}}"),
            "specs/file.yaml": ds("fileurl", base + f"source: {{url: 'file://{src}'}}"),
            "specs/derived.yaml": ds("derived", base + "source: {dataset: {name: zipped, version: v1}}\n"
                                     "splits: {train: 0.5, validation: 0.5, test: 0.0}"),
            "specs/missing.yaml": ds("missing", base + f"source: {{url: '{url}.nope'}}"),
        })
        p = kiln("apply", cwd=repo, timeout=300)
    finally:
        server.shutdown()
    assert p.returncode == 1, p.stdout + p.stderr
    st = status(repo)
    assert st["default/missing"]["message"].startswith(f"fetch: {url}.nope: download failed: HTTP 404")
    ids = {n: versions_log(repo, n)["versions"][0] for n in ("zipped", "http", "fileurl", "derived")}
    # same files from three places: the same DVC version id
    assert ids["zipped"]["id"] == ids["http"]["id"] == ids["fileurl"]["id"]
    d = ids["derived"]
    assert d["lineage"]["derivedFrom"] == {"dataset": "default/zipped", "version": ids["zipped"]["id"]}
    assert d["per_class_counts"] == ids["zipped"]["per_class_counts"]
    assert d["id"] != ids["zipped"]["id"]  # re-split: train/validation folders


def test_prune_stops_tracking_keeps_history(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    write(repo, {"specs/iris.yaml": ds("iris", "type: tabular\ntask: classification\nsource: {sample: iris}\n"
                                               "versioning: {commit: auto}")})
    kiln("apply", cwd=repo, check=True)
    assert (repo / "data/default/iris.dvc").is_file()
    (repo / "specs/iris.yaml").unlink()
    out = kiln("apply", "--prune", cwd=repo, check=True).stdout
    assert "stop tracking data/default/iris" in out
    assert not (repo / "data/default/iris.dvc").exists() and not (repo / "data/default/iris").exists()
    assert (repo / "data/default/iris.versions.json").is_file()  # history stays; objects stay in the remote
    assert any((repo / ".kiln/dvc-remote").rglob("*.dir"))
    msg = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout
    assert msg.strip() == "kiln: stop tracking dataset default/iris"
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "data/default/iris.dvc" not in tracked


def test_bad_input_exit_code_is_not_retried_by_the_rendered_workflow() -> None:
    from kiln.controller import render, steps

    assert render.PERMANENT_EXIT == steps.PERMANENT_EXIT
    p = kiln("render", "Dataset/wine", "--what", "workflow", cwd=ROOT, check=True)
    import yaml

    wf = yaml.safe_load(p.stdout)
    fetch = next(t for t in wf["spec"]["templates"] if t["name"] == "fetch")
    assert fetch["retryStrategy"]["expression"] == f"asInt(lastRetry.exitCode) != {steps.PERMANENT_EXIT}"


def test_changed_source_files_plan_a_new_version_and_derived_datasets_follow(tmp_path: Path) -> None:
    """An unchanged spec whose source folder changed (or whose parent dataset got a new version)
    is planned as an update, and apply makes exactly one new version; then the plan is clean."""
    from tests.data.conftest import make_image_folder

    repo = git_repo(tmp_path / "repo")
    make_image_folder(repo / "raw" / "shapes", n=2)
    base = "type: image\ntask: classification\n"
    write(repo, {"specs/shapes.yaml": ds("shapes", base + "source: {path: raw/shapes}"),
                 "specs/derived.yaml": ds("derived", base + "source: {dataset: {name: shapes}}\n"
                                          "splits: {train: 0.5, validation: 0.5, test: 0.0}")})
    assert kiln("apply", cwd=repo, timeout=300).returncode == 0
    assert kiln("plan", "--detailed-exitcode", cwd=repo).returncode == 0
    v1 = versions_log(repo, "shapes")["versions"][0]

    new = sorted((repo / "raw" / "shapes").rglob("*.png"))[0]
    shutil.copyfile(new, new.with_name("extra-copy.png"))  # one more item of that class
    p = kiln("plan", "--detailed-exitcode", cwd=repo)
    assert p.returncode == 2, p.stdout
    assert "Dataset/shapes" in p.stdout and "source path raw/shapes changed" in p.stdout
    applied = kiln("apply", cwd=repo, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    log = versions_log(repo, "shapes")["versions"]
    assert len(log) == 2 and sum(log[1]["per_class_counts"].values()) == sum(v1["per_class_counts"].values()) + 1
    # the derived dataset follows its parent (version: latest): the plan was made before shapes
    # had v2, yet the same apply re-derives it once shapes has its new version
    assert "Dataset/derived: dataset shapes has a new version v2" in applied.stdout, applied.stdout
    derived = versions_log(repo, "derived")["versions"]
    assert derived[-1]["lineage"]["derivedFrom"]["version"] == log[1]["id"]
    assert kiln("plan", "--detailed-exitcode", cwd=repo).returncode == 0


@pytest.mark.slow
def test_seed_segmentation_layouts_apply_with_class_counts_per_split_and_user_paths(tmp_path: Path) -> None:
    """EasyMaker's test/train.json and id2lable.json, AI Studio's implicit background 0, and a spec
    that says there is none: versions count classes per split; the refusal names the user's files."""
    from tests.data.conftest import seed_easymaker_segmentation, seed_studio

    repo = git_repo(tmp_path / "repo")
    em = seed_easymaker_segmentation(repo / "raw/em")
    studio = seed_studio(repo / "raw/studio", "semantic")
    seed_studio(repo / "raw/strict", "semantic")
    seg = "type: image\ntask: semantic-segmentation\n"
    write(repo, {"specs/em.yaml": ds("em", seg + "source: {path: raw/em}"),
                 "specs/studio.yaml": ds("studio", seg + "format: studio\nsource: {path: raw/studio}\n"
                                         "splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}"),
                 "specs/strict.yaml": ds("strict", seg + "background: none\nsource: {path: raw/strict}")})
    p = kiln("apply", cwd=repo)
    assert p.returncode == 1, p.stdout + p.stderr
    msg = status(repo)["default/strict"]["message"]
    assert msg.startswith("validate: raw/strict/labels/0001.png: mask contains class id 0 not in meta.json "
                          "categories"), msg
    assert "staging" not in msg and "id2label" not in msg and "\n" not in msg
    v = versions_log(repo, "em")["versions"][0]
    assert v["per_split_class_counts"] == em["classes"]  # the 2 test items are there, counted
    out = kiln("data", "versions", "em", cwd=repo, check=True).stdout
    test_line = next(ln for ln in out.splitlines() if ln.strip().startswith("test:"))
    assert "unlabeled:2" in test_line, out
    v = versions_log(repo, "studio")["versions"][0]
    assert set(v["per_split_class_counts"]) == {"train", "validation", "test"}
    assert v["per_class_counts"] == studio["classes"]["unsplit"] and v["per_class_counts"]["background"] == 5


def test_captured_images_are_unlabelled_items_not_a_class_per_day(tmp_path: Path) -> None:
    """A deployment's captured images (kiln.bento.capture's <day>/<id>.png) become a dataset
    whose day folder is no class: no class counts until they are labelled."""
    import base64
    import io
    from types import SimpleNamespace

    from PIL import Image

    from kiln.bento.capture import Capture
    from kiln.config import load_config
    from kiln.controller.dataset_steps import _fetch_capture
    from kiln.controller.deployment_steps import capture_dir
    from kiln.data import load

    repo = git_repo(tmp_path / "repo")
    config = load_config(repo)
    cap = Capture(capture_dir(config, "default", "api"), sample_rate=1.0, max_per_day=10)
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(buf, "PNG")
        cap.offer({"data": base64.b64encode(buf.getvalue()).decode()}, [{"label": "cat", "score": 0.9}])
    cap.close()
    out = tmp_path / "source"
    summary = _fetch_capture(SimpleNamespace(workspace="default", config=config), "api", out)
    assert summary["captured"] == 3
    content = load(out, "image-folder", "classification")
    assert len(content.items) == 3 and all(it.label is None for it in content.items)
    assert content.class_counts() == {} and content.categories == {}
    pre = [json.loads(ln) for ln in (out / ".kiln/pre-annotations.jsonl").read_text().splitlines()]
    assert sorted(p["file"] for p in pre) == sorted(it.path for it in content.items)


def test_background_is_validated_at_its_line(tmp_path: Path) -> None:
    from kiln.loader import load_specs
    from kiln.validate import validate

    write(tmp_path, {"specs/a.yaml": ds("a", "type: image\ntask: detection\nbackground: 0\nsource: {path: raw}"),
                     "specs/b.yaml": ds("b", "type: image\ntask: semantic-segmentation\nbackground: none\n"
                                        "source: {path: raw}")})
    issues = [i.format() for i in validate(load_specs(tmp_path / "specs"))]
    assert len(issues) == 1 and re.match(r"specs/a\.yaml:7:\d+ +spec\.background .*semantic-segmentation masks",
                                         issues[0].replace(str(tmp_path) + "/", "")), issues
