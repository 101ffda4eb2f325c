"""Against a real Label Studio server (session fixture ``label_studio``): a detection job end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.labeling import server
from kiln.labeling.client import ImportItem, LabelingClient, LabelStudioUnavailable, Prediction, box_region
from kiln.labeling.export import completion, to_content

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
W, H = 64, 48


def draw_dataset(root: Path, n: int = 42) -> dict[str, list[tuple[str, list[int]]]]:
    """n PNGs with 1-2 coloured rectangles each; returns key -> [(class, [x, y, w, h] pixels)]."""
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        img = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        boxes = []
        for k in range(1 + i % 2):
            name = list(COLORS)[(i + k) % 3]
            w, h = int(rng.integers(6, 16)), int(rng.integers(6, 14))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            img[y:y + h, x:x + w] = COLORS[name]
            boxes.append((name, [x, y, w, h]))
        key = f"{i:04d}.png"
        Image.fromarray(img).save(root / key)
        truth[key] = boxes
    return truth


@pytest.fixture(scope="module")
def job(label_studio):
    admin = LabelingClient(label_studio.url, label_studio.token, document_root=label_studio.document_root)
    ds = label_studio.document_root / "datasets" / "shapes"
    truth = draw_dataset(ds)
    users = {u: admin.ensure_user(u) for u in ("cy@example.com", "di@example.com", "ed@example.com",
                                                "bo@example.com")}
    ref = admin.ensure_project("vision/shapes-boxes", title="shapes-boxes", task="detection",
                               classes=list(COLORS), instructions="Box every coloured rectangle.")
    admin.ensure_local_storage(ref.id, ds)
    items = []
    for i, (key, boxes) in enumerate(sorted(truth.items())):
        # a "model" that is off by one pixel; every third item is below the threshold
        result = [box_region(c, x + 1, y, w, h, W, H) for c, (x, y, w, h) in boxes]
        items.append(ImportItem(key=key, path=ds / key,
                                prediction=Prediction(result, score=0.3 if i % 3 == 0 else 0.9,
                                                      model_version="shapes-v1")))
    report = admin.import_items(ref.id, items, annotators=["cy@example.com", "di@example.com", "ed@example.com"],
                                threshold=0.5, task="detection")
    return {"admin": admin, "ds": ds, "truth": truth, "users": users, "ref": ref, "items": items,
            "report": report, "fixture": label_studio}


def test_import_with_predictions_and_even_split(job) -> None:
    admin, ref, report = job["admin"], job["ref"], job["report"]
    assert ref.created and report.new == 42 and report.existing == 0
    assert (report.with_predictions, report.below_threshold) == (28, 14)
    assert report.assignment == {"cy@example.com": (1, 14), "di@example.com": (15, 28), "ed@example.com": (29, 42)}
    tasks = admin.export_tasks(ref.id)
    assert len(tasks) == 42
    by_key = {t["data"]["kiln_key"]: t for t in tasks}
    first = by_key["0002.png"]
    assert first["data"]["image"] == "/data/local-files/?d=datasets/shapes/0002.png"
    (pred,) = admin.ls.predictions.list(task=first["id"])
    assert (pred.model_version, pred.score) == ("shapes-v1", 0.9)
    assert pred.result[0]["value"]["x"] == pytest.approx((job["truth"]["0002.png"][0][1][0] + 1) * 100 / W)
    # score 0.3 < threshold 0.5: left unlabelled
    assert list(admin.ls.predictions.list(task=by_key["0001.png"]["id"])) == []
    # the image is served from the dataset folder through the local-files storage (no copy)
    import urllib.request
    req = urllib.request.Request(admin.url + first["data"]["image"],
                                 headers={"Authorization": f"Token {job['fixture'].token}"})
    with urllib.request.urlopen(req) as r:
        assert r.read() == (job["ds"] / "0002.png").read_bytes()


def test_views_per_annotator_show_their_range(job) -> None:
    admin, ref = job["admin"], job["ref"]
    views = admin.ensure_annotator_views(ref.id, ["cy@example.com", "di@example.com", "ed@example.com"])
    assert admin.ensure_annotator_views(ref.id, ["cy@example.com"]) == {"cy@example.com": views["cy@example.com"]}
    keys = sorted(job["truth"])
    for user, (lo, hi) in job["report"].assignment.items():
        assert sorted(admin.view_task_keys(ref.id, views[user])) == keys[lo - 1:hi]


def test_reimport_is_a_noop(job) -> None:
    admin, ref = job["admin"], job["ref"]
    again = admin.import_items(ref.id, job["items"], annotators=["cy@example.com"], task="detection")
    assert (again.new, again.existing) == (0, 42)
    assert len(admin.existing_keys(ref.id)) == 42
    same = admin.ensure_project("vision/shapes-boxes", title="shapes-boxes", task="detection",
                                classes=list(COLORS), instructions="Box every coloured rectangle.")
    assert (same.id, same.created, same.drift.drifted) == (ref.id, False, False)


def test_annotate_review_complete_export_coco(job, tmp_path: Path) -> None:
    admin, ref, truth, users, fx = job["admin"], job["ref"], job["truth"], job["users"], job["fixture"]
    # two annotators, each with their own token (as the UI would act for them)
    as_user = {u: LabelingClient(fx.url, server.user_token(fx.state_dir, u)) for u in ("cy@example.com",
                                                                                      "di@example.com")}
    assert as_user["cy@example.com"].user_id == users["cy@example.com"]
    ids = admin.existing_keys(ref.id)
    keys = sorted(truth)
    for n, key in enumerate(keys, start=1):
        who = "di@example.com" if 15 <= n <= 28 else "cy@example.com"  # cy also does ed's range
        if key == "0020.png":
            as_user[who].annotate(ids[key], [], cancelled=True)  # skipped: no shape in it
            continue
        result = [box_region(c, x, y, w, h, W, H) for c, (x, y, w, h) in truth[key]]
        as_user[who].annotate(ids[key], result)
    assert admin.mark_deleted(ref.id, ["0042.png"]) == 1

    tasks = admin.export_tasks(ref.id)
    assert completion(tasks, "all-annotated").as_dict() == {
        "complete": True, "rule": "all-annotated", "done": 41, "total": 41, "reason": "41/41 items annotated or skipped"}
    reviewer = users["bo@example.com"]
    assert not completion(tasks, "reviewed", reviewer_ids=[reviewer]).complete
    assert completion(tasks, "min-count", min_count=40).complete
    for key in keys[:-1]:
        admin.accept(ids[key], reviewer)
    tasks = admin.export_tasks(ref.id)
    assert completion(tasks, "reviewed", reviewer_ids=[reviewer]).complete

    prog = admin.progress(ref.id)
    assert prog.per_annotator["cy@example.com"] == {"assigned": 14, "annotated": 27, "skipped": 0}
    assert prog.per_annotator["di@example.com"] == {"assigned": 14, "annotated": 13, "skipped": 1}
    assert prog.per_annotator["ed@example.com"]["annotated"] == 0
    want_counts: dict[str, int] = {}
    for key in keys[:-1]:
        if key != "0020.png":
            for c, _ in truth[key]:
                want_counts[c] = want_counts.get(c, 0) + 1
    assert prog.per_class == want_counts

    conv = to_content(tasks, task="detection", classes=list(COLORS), root=job["ds"], reviewer_ids=[reviewer])
    assert (conv.skipped, conv.deleted) == (["0020.png"], ["0042.png"])
    from kiln.data import formats

    out = tmp_path / "coco"
    formats.export(conv.content, out, "coco")
    coco = json.loads((out / "_annotations.coco.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    assert len(images) == 40 and all((im["width"], im["height"]) == (W, H) for im in images.values())
    got: dict[str, list] = {}
    for a in coco["annotations"]:
        got.setdefault(images[a["image_id"]]["file_name"], []).append((cats[a["category_id"]], a["bbox"]))
    want = {k: v for k, v in truth.items() if k not in ("0020.png", "0042.png")}
    assert sorted(got) == sorted(want)
    for key, boxes in want.items():
        g = sorted(got[key])
        assert [c for c, _ in g] == sorted(c for c, _ in boxes)
        for (_, gb), (_, wb) in zip(g, sorted(boxes)):
            assert gb == pytest.approx(wb, abs=1e-9)  # percent -> pixels is exact
    reloaded = formats.load(out, "coco")
    assert reloaded.class_counts() == want_counts


def test_drift_is_reported_and_corrected(label_studio) -> None:
    admin = LabelingClient(label_studio.url, label_studio.token)
    ref = admin.ensure_project("vision/drift", title="drift check", task="detection", classes=["cat", "dog"])
    # someone renames a class in the Label Studio UI
    from kiln.labeling.configs import label_config
    admin.ls.projects.update(ref.id, label_config=label_config("detection", ["kitten", "dog"]))
    p = admin.find_project("vision/drift")
    d = admin.drift(p, "detection", ["cat", "dog"])
    assert (d.missing, d.extra, d.renamed) == (["cat"], ["kitten"], [("cat", "kitten")])
    assert "class 'cat' renamed to 'kitten'" in d.describe()
    fixed = admin.ensure_project("vision/drift", title="drift check", task="detection", classes=["cat", "dog"])
    assert fixed.id == ref.id and fixed.drift.renamed == [("cat", "kitten")]
    assert not admin.drift(admin.find_project("vision/drift"), "detection", ["cat", "dog"]).drifted


def test_unreachable_server_and_bad_token(label_studio) -> None:
    port = server.free_port()
    with pytest.raises(LabelStudioUnavailable) as e:
        LabelingClient(f"http://127.0.0.1:{port}", "x")
    assert f"http://127.0.0.1:{port} is unreachable" in e.value.message and "kiln labelstudio start" in e.value.hint
    with pytest.raises(LabelStudioUnavailable) as e:
        LabelingClient(label_studio.url, "0" * 40)
    assert "refused the API token (HTTP 401)" in e.value.message and label_studio.url in e.value.message
    assert "kiln labelstudio token" in e.value.hint
    assert label_studio.token not in str(e.value)
