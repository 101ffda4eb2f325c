"""Label Studio JSON export -> kiln's dataset representation, and the completion rules.

kiln converts the JSON export itself rather than using Label Studio's COCO export, whose quirks
(COMPONENTS.md) would lose information: one ``image`` entry per *annotation* (duplicates when a task has
two), relative ``file_name``s, and YOLO keeps one annotation per task. From the JSON export:

- RectangleLabels: ``x, y, width, height`` are percent of ``original_width/height``; pixels are
  ``x / 100 * original_width`` etc., kept as floats (no rounding, so a box drawn at pixel 10 stays 10.0).
- PolygonLabels: ``points`` in percent -> one flat ``[x1, y1, x2, y2, ...]`` pixel polygon per region,
  its box the polygon's extent.
- BrushLabels: Label Studio's own RLE (not COCO's) -> decoded with ``label_studio_sdk.converter.brush``
  -> one mask PNG of category ids per image (semantic segmentation; 0 = background).
- Choices -> ``Item.label`` (image-folder classification).

Which annotation counts for a task (``final_annotation``): cancelled ones ("skipped") never; a
reviewer's annotation wins over annotators' (that *is* the review: see below); otherwise the most
recently updated one. A task whose annotations were all skipped is left out of the labelled dataset and
reported as skipped.

Deleted items: the source platform only *marks* a deleted image until the job is completed. kiln marks
them with ``kiln_deleted: true`` in the task data (``LabelingClient.mark_deleted``); they are left out of
progress, completion and the exported dataset, and stay visible in Label Studio until then.

Review: open-source Label Studio has no review workflow (Enterprise only). kiln defines a task as
*reviewed* when a user listed as a reviewer has a submitted (not cancelled) annotation on it; the
reviewer accepts an annotator's work by submitting it (``LabelingClient.accept`` copies the annotator's
result under the reviewer's name) or corrects it by submitting a changed one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln._util.fs import replacing
from kiln.data.model import Annotation, DatasetContent, Item
from kiln.errors import ConfigError
from kiln.labeling.configs import task_kind

KEY_FIELD = "kiln_key"  # stable item key: the image path relative to the dataset root (or a row id)
SPLIT_FIELD = "kiln_split"
DELETED_FIELD = "kiln_deleted"

COMPLETION_RULES = ("all-annotated", "reviewed", "min-count")


def _ts(a: dict[str, Any]) -> tuple[str, int]:
    return (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0))


def _uid(v: Any) -> Any:
    return v.get("id") if isinstance(v, dict) else v


def final_annotation(anns: Sequence[dict[str, Any]], reviewer_ids: Iterable[int] = ()) -> dict[str, Any] | None:
    """The annotation that counts for a task (see module doc); None if none was submitted."""
    live = [a for a in anns if not a.get("was_cancelled")]
    if not live:
        return None
    reviewers = set(reviewer_ids)
    by_reviewer = [a for a in live if _uid(a.get("completed_by")) in reviewers]
    return max(by_reviewer or live, key=_ts)


@dataclass
class Conversion:
    content: DatasetContent
    skipped: list[str] = field(default_factory=list)  # item keys whose annotations were all skipped
    unlabelled: list[str] = field(default_factory=list)  # item keys nobody annotated yet
    deleted: list[str] = field(default_factory=list)


def to_content(tasks: Iterable[dict[str, Any]], *, task: str, classes: Sequence[str], root: Path,
               reviewer_ids: Iterable[int] = (), mask_dir: Path | None = None,
               include_unlabelled: bool = False) -> Conversion:
    """Convert exported tasks to a ``DatasetContent`` whose item paths resolve under ``root``.

    Categories get ids 1..N in the order of ``classes`` (0 is background in semantic masks).
    ``mask_dir`` is where semantic-segmentation masks are written (required for that task).
    """
    name, kind = task_kind(task)
    if name.startswith("tabular"):
        raise ConfigError("tabular labeling jobs export rows (to_rows), not images")
    cat_id = {c: i for i, c in enumerate(classes, start=1)}
    categories = {i: c for c, i in cat_id.items()}
    if name == "semantic-segmentation":
        categories = {0: "background", **categories}
        if mask_dir is None:
            raise ConfigError("semantic-segmentation export needs a mask_dir to write masks to")
    reviewer_ids = list(reviewer_ids)
    items: list[Item] = []
    conv = Conversion(content=DatasetContent(task=name, root=Path(root), format=None, categories=categories))
    for t in tasks:
        data = t.get("data", {})
        key = data.get(KEY_FIELD)
        if key is None:
            continue  # a task added by hand in the UI, not one of the dataset's items
        if data.get(DELETED_FIELD):
            conv.deleted.append(key)
            continue
        anns = t.get("annotations", [])
        final = final_annotation(anns, reviewer_ids)
        if final is None:
            (conv.skipped if anns else conv.unlabelled).append(key)
            if not include_unlabelled or anns:
                continue
        it = Item(path=key, split=data.get(SPLIT_FIELD))
        for r in (final or {}).get("result", []):
            _apply(it, r, name, cat_id, key)
        if name == "semantic-segmentation" and final is not None:
            _write_mask(it, final.get("result", []), cat_id, Path(root), Path(mask_dir or "."), key)
        items.append(it)
    conv.content.items = items
    return conv


def _labels(v: dict[str, Any], key: str) -> list[str]:
    for k in ("rectanglelabels", "polygonlabels", "brushlabels", "choices", "labels"):
        if k in v:
            return list(v[k])
    raise ConfigError(f"task {key}: a region without labels ({sorted(v)})")


def _cat(cat_id: dict[str, int], label: str, key: str) -> int:
    try:
        return cat_id[label]
    except KeyError:
        raise ConfigError(f"task {key}: label {label!r} is not one of the job's classes {list(cat_id)}",
                          hint="the class was renamed in Label Studio; run ensure_project or add it to the spec"
                          ) from None


def _apply(it: Item, r: dict[str, Any], task: str, cat_id: dict[str, int], key: str) -> None:
    v = r.get("value", {})
    rtype = r.get("type")
    w, h = r.get("original_width"), r.get("original_height")
    if w and h:
        it.width, it.height = int(w), int(h)
    if rtype == "choices":
        it.label = _labels(v, key)[0]
        return
    if rtype not in ("rectanglelabels", "polygonlabels"):
        return  # brush regions are rasterised per image in _write_mask
    if not (w and h):
        raise ConfigError(f"task {key}: region without original_width/original_height")
    for lab in _labels(v, key):
        cid = _cat(cat_id, lab, key)
        if rtype == "rectanglelabels":
            if v.get("rotation"):
                raise ConfigError(f"task {key}: rotated boxes cannot be exported to COCO boxes",
                                  hint="redraw the box without rotation")
            box = [v["x"] / 100.0 * w, v["y"] / 100.0 * h, v["width"] / 100.0 * w, v["height"] / 100.0 * h]
            it.annotations.append(Annotation(category_id=cid, bbox=box))
        else:
            pts = [(p[0] / 100.0 * w, p[1] / 100.0 * h) for p in v.get("points", [])]
            if len(pts) < 3:
                raise ConfigError(f"task {key}: polygon with {len(pts)} points (needs 3)")
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            poly = [c for p in pts for c in p]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            it.annotations.append(Annotation(category_id=cid, bbox=box, polygons=[poly]))


def _write_mask(it: Item, result: list[dict[str, Any]], cat_id: dict[str, int], root: Path, mask_dir: Path,
                key: str) -> None:
    import numpy as np
    from label_studio_sdk.converter.brush import decode_rle
    from PIL import Image

    mask = None
    for r in result:
        if r.get("type") != "brushlabels":
            continue
        w, h = int(r["original_width"]), int(r["original_height"])
        if mask is None:
            mask = np.zeros((h, w), dtype=np.uint8)
        v = r["value"]
        # Label Studio's brush RLE decodes to RGBA bytes; the alpha channel is the painted area
        rgba = np.reshape(decode_rle(v["rle"]), (h, w, 4))
        for lab in _labels(v, key):
            mask[rgba[:, :, 3] > 0] = _cat(cat_id, lab, key)
    if mask is None:
        return
    out = mask_dir / (Path(key).with_suffix("").as_posix().replace("/", "__") + ".png")
    with replacing(out) as tmp:
        Image.fromarray(mask, mode="L").save(tmp, format="PNG")
    it.mask = os.path.relpath(out, root)


@dataclass
class Completion:
    complete: bool
    rule: str
    done: int
    total: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "rule": self.rule, "done": self.done, "total": self.total,
                "reason": self.reason}


def completion(tasks: Iterable[dict[str, Any]], rule: str, *, reviewer_ids: Iterable[int] = (),
               min_count: int | None = None, overlap: int = 1) -> Completion:
    """Evaluate a completion rule over exported tasks (deleted items do not count).

    - ``all-annotated``: every item has ``overlap`` submitted annotations, or was skipped;
    - ``reviewed``: every item that is not skipped has a reviewer's annotation (module doc);
    - ``min-count``: at least ``min_count`` items have a submitted annotation.
    """
    if rule not in COMPLETION_RULES:
        raise ConfigError(f"unknown completion rule {rule!r}; valid: {', '.join(COMPLETION_RULES)}")
    if rule == "min-count" and not min_count:
        raise ConfigError("completion rule 'min-count' needs min_count >= 1")
    reviewers = set(reviewer_ids)
    if rule == "reviewed" and not reviewers:
        raise ConfigError("completion rule 'reviewed' needs at least one reviewer")
    total = done = 0
    for t in tasks:
        data = t.get("data", {})
        if data.get(DELETED_FIELD) or KEY_FIELD not in data:
            continue
        total += 1
        anns = t.get("annotations", [])
        live = [a for a in anns if not a.get("was_cancelled")]
        annotators = [a for a in live if _uid(a.get("completed_by")) not in reviewers]
        skipped = bool(anns) and not live
        if rule == "all-annotated":
            done += skipped or len(annotators) >= overlap or (len(live) >= overlap)
        elif rule == "reviewed":
            done += skipped or any(_uid(a.get("completed_by")) in reviewers for a in live)
        else:
            done += bool(live)
    if rule == "min-count":
        ok = done >= (min_count or 0)
        reason = f"{done} of at least {min_count} items annotated"
    else:
        ok = total > 0 and done == total
        what = "annotated or skipped" if rule == "all-annotated" else "reviewed or skipped"
        reason = f"{done}/{total} items {what}"
    return Completion(complete=ok, rule=rule, done=done, total=total, reason=reason)
