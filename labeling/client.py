"""kiln's client for a Label Studio server (label-studio-sdk 2.x, ``label_studio_sdk.LabelStudio``).

Everything kiln does to Label Studio goes through ``LabelingClient`` and is idempotent, so the
controller can call it on every reconcile:

- ``ensure_project``: one project per LabelingJob, found by the marker line ``kiln.dev/id: <id>`` in
  the project description (titles can be renamed in the UI, the marker survives); the label config is
  generated (``configs``) and restored when someone changed the classes by hand (``drift`` reports it).
- ``ensure_local_storage``: a local-files import storage covering the items' export folder (hard
  links under the server's document root, see ``labeling_steps.export_items``), so tasks point at
  ``/data/local-files/?d=<path under the document root>``.
- ``import_items``: only items whose stable key (``kiln_key`` in task data) is not in the project yet;
  predictions carry ``model_version`` and ``score``, and an item whose prediction scores below the
  threshold is imported without it (Flightbase's auto-labelling keeps only confident results).
- users, per-annotator Data Manager views (see ``assignment`` for why), export and progress.

Task data kiln writes::

    {"image": "/data/local-files/?d=datasets/shapes/0001.png", "kiln_key": "0001.png",
     "kiln_split": "train", "assignee": "cy@example.com"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln.errors import ConfigError, KilnError
from kiln.labeling import assignment as assign
from kiln.labeling import configs, server
from kiln.labeling.export import DELETED_FIELD, KEY_FIELD, SPLIT_FIELD, final_annotation

MARKER = "kiln.dev/id:"
VIEW_PREFIX = "assigned: "
IMPORT_BATCH = 5000


class LabelStudioUnavailable(KilnError):
    """The Label Studio server cannot be reached or refuses kiln's token."""


class LabelStudioRequestError(KilnError):
    """Label Studio rejected a request (bad config, a path outside the document root ...)."""


# -- values kiln passes in ------------------------------------------------------------------------------
@dataclass
class Prediction:
    """A model's pre-annotation: Label Studio ``result`` regions, one ``score`` for the item."""

    result: list[dict[str, Any]]
    score: float
    model_version: str


@dataclass
class ImportItem:
    """One dataset item. ``key`` is stable (path relative to the dataset root); ``path`` is the image
    file (absolute, under the server's document root) or ``row`` a tabular row."""

    key: str
    path: Path | None = None
    row: dict[str, Any] | str | None = None
    split: str | None = None
    prediction: Prediction | None = None


@dataclass
class Drift:
    """How the server's project differs from what kiln wants (classes edited by hand in the UI)."""

    project_id: int
    missing: list[str] = field(default_factory=list)  # wanted, not in the server's config
    extra: list[str] = field(default_factory=list)  # in the server's config, not wanted
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (wanted, as found) pairs, by position
    config_changed: bool = False  # anything else in the XML differs

    @property
    def drifted(self) -> bool:
        return bool(self.missing or self.extra or self.config_changed)

    def describe(self) -> str:
        if not self.drifted:
            return "in sync"
        parts = [f"class {w!r} renamed to {f!r} in Label Studio" for w, f in self.renamed]
        named = {w for w, _ in self.renamed} | {f for _, f in self.renamed}
        parts += [f"class {c!r} missing" for c in self.missing if c not in named]
        parts += [f"class {c!r} added by hand" for c in self.extra if c not in named]
        if not parts and self.config_changed:
            parts.append("label config edited by hand")
        return f"project {self.project_id}: " + "; ".join(parts)


@dataclass
class ProjectRef:
    id: int
    title: str
    created: bool
    drift: Drift  # as found before ensure_project corrected it
    updated: bool = False  # settings (title, config, instructions ...) were written


@dataclass
class ImportReport:
    new: int
    existing: int
    with_predictions: int
    below_threshold: int
    task_ids: list[int] = field(default_factory=list)
    assignment: dict[str, tuple[int, int]] = field(default_factory=dict)  # user -> 1-based range of the batch
    relinked: int = 0  # existing tasks pointed at the items' current URL (the export folder moved)


# -- prediction result builders (pixels in, Label Studio percent out) ----------------------------------
def box_region(label: str, x: float, y: float, w: float, h: float, img_w: int, img_h: int) -> dict[str, Any]:
    return {"from_name": configs.CONTROL_NAME, "to_name": configs.IMAGE_FIELD, "type": "rectanglelabels",
            "original_width": img_w, "original_height": img_h, "image_rotation": 0,
            "value": {"x": x * 100.0 / img_w, "y": y * 100.0 / img_h, "width": w * 100.0 / img_w,
                      "height": h * 100.0 / img_h, "rotation": 0, "rectanglelabels": [label]}}


def polygon_region(label: str, points: Sequence[tuple[float, float]], img_w: int, img_h: int) -> dict[str, Any]:
    return {"from_name": configs.CONTROL_NAME, "to_name": configs.IMAGE_FIELD, "type": "polygonlabels",
            "original_width": img_w, "original_height": img_h, "image_rotation": 0,
            "value": {"points": [[x * 100.0 / img_w, y * 100.0 / img_h] for x, y in points],
                      "closed": True, "polygonlabels": [label]}}


def choice_region(label: str, to_name: str = configs.IMAGE_FIELD) -> dict[str, Any]:
    return {"from_name": configs.CONTROL_NAME, "to_name": to_name, "type": "choices",
            "value": {"choices": [label]}}


def brush_region(label: str, mask: Any, img_w: int, img_h: int) -> dict[str, Any]:
    """``mask``: a (h, w) numpy array, non-zero where painted."""
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    rle = mask2rle((np.asarray(mask) > 0).astype(np.uint8) * 255)
    return {"from_name": configs.CONTROL_NAME, "to_name": configs.IMAGE_FIELD, "type": "brushlabels",
            "original_width": img_w, "original_height": img_h, "image_rotation": 0,
            "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}


# -- the client -----------------------------------------------------------------------------------------
class LabelingClient:
    """Connects on construction and checks the token, so a wrong URL or token fails here, in one line."""

    def __init__(self, url: str, token: str, *, document_root: str | os.PathLike[str] | None = None,
                 timeout: float = 120.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.document_root = Path(document_root).resolve() if document_root else None
        self.ls = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        me = self._call(self.ls.users.whoami, what="check the token")
        self.user_id: int = me.id
        self.organization: int | None = getattr(me, "active_organization", None)

    @classmethod
    def from_state(cls, state_dir: str | os.PathLike[str]) -> LabelingClient:
        """Connect to the server ``kiln labelstudio start`` recorded under ``state_dir`` (``.kiln``)."""

        info = server.read_state(Path(state_dir))
        if info is None:
            raise LabelStudioUnavailable("Label Studio is not running (no .kiln/labelstudio.json)",
                                         hint="run `kiln labelstudio start`")
        return cls(info.url, server.read_token(Path(state_dir)), document_root=info.document_root)

    # -- errors ------------------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} is unreachable ({type(e).__name__}: {e})",
                hint="start it with `kiln labelstudio start`, or fix the URL") from None
        except httpx.TimeoutException:
            raise LabelStudioUnavailable(f"Label Studio at {self.url} did not answer in time ({what})",
                                         hint="check `kiln labelstudio status`") from None
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioUnavailable(
                    f"Label Studio at {self.url} refused the API token (HTTP {e.status_code}) while trying to {what}",
                    hint="use the token from `kiln labelstudio token` (or $KILN_LABELSTUDIO_TOKEN)") from None
            body = e.body if isinstance(e.body, str) else json.dumps(e.body, default=str)
            raise LabelStudioRequestError(
                f"Label Studio at {self.url} rejected the request to {what} (HTTP {e.status_code}): {body[:500]}"
            ) from None

    # -- users -------------------------------------------------------------------------------------
    def users(self) -> dict[str, int]:
        """email -> user id."""
        return {u.email: u.id for u in self._call(self.ls.users.list, what="list users") if u.email}

    def ensure_user(self, email: str) -> int:
        """The id of the user with ``email``, created if missing; its active organization is set
        (users created through the API get none, and then see no projects)."""
        known = self.users()
        uid = known.get(email)
        if uid is None:
            user = self._call(self.ls.users.create, email=email, username=email, what=f"create user {email}")
            uid = user.id
        user = self._call(self.ls.users.get, uid, what=f"read user {email}")
        if self.organization is not None and getattr(user, "active_organization", None) != self.organization:
            self._call(self.ls.users.update, uid, active_organization=self.organization,
                       what=f"set the organization of {email}")
        return uid

    # -- projects ----------------------------------------------------------------------------------
    def find_project(self, kiln_id: str, title: str | None = None) -> Any | None:
        """The project carrying ``kiln.dev/id: <kiln_id>``; else an unmarked one titled ``title``."""
        projects = list(self._call(self.ls.projects.list, page_size=1000, what="list projects"))
        line = f"{MARKER} {kiln_id}"
        for p in projects:
            if line in (p.description or "").splitlines():
                return p
        for p in projects:
            if title and p.title == title and MARKER not in (p.description or ""):
                return p
        return None

    def drift(self, project: Any, task: str, classes: Sequence[str], wanted_config: str | None = None) -> Drift:
        found = configs.classes_of(project.label_config or "<View/>", task)
        want = list(classes)
        d = Drift(project_id=project.id,
                  missing=[c for c in want if c not in found], extra=[c for c in found if c not in want])
        if len(found) == len(want):
            d.renamed = [(w, f) for w, f in zip(want, found) if w != f and w in d.missing and f in d.extra]
        if wanted_config is not None:
            d.config_changed = _norm_xml(project.label_config or "") != _norm_xml(wanted_config)
        return d

    def ensure_project(self, kiln_id: str, *, title: str, task: str, classes: Sequence[str],
                       colors: dict[str, str] | None = None, instructions: str | None = None,
                       overlap: int = 1, description: str | None = None) -> ProjectRef:
        """Create or update the project; restores a hand-edited config and reports what it found."""
        config = configs.label_config(task, classes, colors=colors)
        desc = "\n".join([*(description.splitlines() if description else []), f"{MARKER} {kiln_id}"])
        settings: dict[str, Any] = {"title": title, "description": desc, "label_config": config,
                                    "maximum_annotations": overlap,
                                    "expert_instruction": instructions or "",
                                    "show_instruction": bool(instructions)}
        p = self.find_project(kiln_id, title)
        if p is None:
            p = self._call(self.ls.projects.create, **settings, what=f"create project {title!r}")
            return ProjectRef(id=p.id, title=title, created=True, drift=Drift(project_id=p.id))
        d = self.drift(p, task, classes, config)
        changed = {k: v for k, v in settings.items()
                   if (k != "label_config" and getattr(p, k, None) != v)
                   or (k == "label_config" and _norm_xml(p.label_config or "") != _norm_xml(v))}
        if changed:
            self._call(self.ls.projects.update, p.id, **changed, what=f"update project {title!r} ({p.id})")
        return ProjectRef(id=p.id, title=title, created=False, drift=d, updated=bool(changed))

    # -- storage and import ------------------------------------------------------------------------
    def _doc_rel(self, path: Path) -> str:
        if self.document_root is None:
            raise ConfigError("this LabelingClient has no document_root; local files cannot be referenced",
                              hint="pass document_root= (the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
        p = Path(path).resolve()
        if not p.is_relative_to(self.document_root):
            raise ConfigError(f"{p} is outside the Label Studio document root {self.document_root}",
                              hint="start the server with --document-root covering the dataset")
        return p.relative_to(self.document_root).as_posix()

    def file_url(self, path: Path) -> str:
        return "/data/local-files/?d=" + quote(self._doc_rel(path), safe="/")

    def ensure_local_storage(self, project_id: int, folder: str | os.PathLike[str]) -> int:
        """A local-files import storage for ``folder`` (never synced: kiln creates the tasks itself,
        the storage only allows the server to serve files under it). A storage kiln made for the
        project outside the document root (the repository, before #20 moved the root) is
        re-pointed at ``folder``: the tasks' URLs are relative to the root and stay as they are."""
        folder = Path(folder).resolve()
        self._doc_rel(folder)
        stale = []
        for s in self._call(self.ls.import_storage.local.list, project=project_id, what="list storages"):
            if s.path and Path(s.path).resolve() == folder:
                return s.id
            if (s.title or "").startswith("kiln: ") and s.path and self.document_root is not None \
                    and not Path(s.path).resolve().is_relative_to(self.document_root):
                stale.append(s)
        if stale:
            self._call(self.ls.import_storage.local.update, stale[0].id, path=str(folder), title=f"kiln: {folder.name}",
                       what=f"re-point local-files storage {stale[0].id} at {folder}")
            return stale[0].id
        s = self._call(self.ls.import_storage.local.create, project=project_id, path=str(folder),
                       title=f"kiln: {folder.name}", use_blob_urls=False,
                       what=f"add local-files storage {folder}")
        return s.id

    def existing_keys(self, project_id: int) -> dict[str, int]:
        """kiln_key -> task id of the project's tasks."""
        return {k: tid for k, (tid, _) in self._existing(project_id).items()}

    def _existing(self, project_id: int) -> dict[str, tuple[int, dict[str, Any]]]:
        """kiln_key -> (task id, task data) of the project's tasks."""
        p = self._call(self.ls.projects.get, project_id, what=f"read project {project_id}")
        if not getattr(p, "task_number", None):
            return {}
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        # include= trims the serializer to what is needed: several times faster on large projects
        pager = self._call(self.ls.tasks.list, project=project_id, fields="task_only", include="id,data",
                           page_size=5000, what="list tasks")
        for t in pager:
            key = (t.data or {}).get(KEY_FIELD)
            if key is not None:
                out[key] = (t.id, dict(t.data or {}))
        return out

    def _relink(self, project_id: int, items: Sequence[ImportItem], have: dict[str, tuple[int, dict[str, Any]]]) -> int:
        """Point existing tasks whose file URL differs from the item's current one at it (the
        export folder moved, e.g. a shared server's root moved out of the repository, #20)."""
        n = 0
        for it in items:
            if it.key not in have or it.path is None:
                continue
            tid, data = have[it.key]
            url = self.file_url(it.path)
            if data.get(configs.IMAGE_FIELD) not in (None, url):
                self._call(self.ls.tasks.update, tid, data={**data, configs.IMAGE_FIELD: url},
                           what=f"point task {tid} at {url}")
                have[it.key] = (tid, {**data, configs.IMAGE_FIELD: url})
                n += 1
        return n

    def import_items(self, project_id: int, items: Sequence[ImportItem], *, annotators: Sequence[str] = (),
                     weights: Sequence[float] | None = None, threshold: float | None = None,
                     task: str = "detection") -> ImportReport:
        """Import the items not yet in the project; re-importing the same items is a no-op."""
        _, kind = configs.task_kind(task)
        have = self._existing(project_id)
        relinked = self._relink(project_id, items, have) if kind.field == configs.IMAGE_FIELD else 0
        seen: set[str] = set()
        new = []
        for it in items:
            if it.key in have or it.key in seen:
                continue
            seen.add(it.key)
            new.append(it)
        owners = assign.split([it.key for it in new], list(annotators), weights) if annotators else {}
        tasks: list[dict[str, Any]] = []
        with_pred = below = 0
        for it in new:
            data: dict[str, Any] = {KEY_FIELD: it.key}
            if kind.field == configs.IMAGE_FIELD:
                if it.path is None:
                    raise ConfigError(f"item {it.key}: an image task needs a path")
                data[configs.IMAGE_FIELD] = self.file_url(it.path)
            else:
                data[configs.ROW_FIELD] = it.row
            if it.split:
                data[SPLIT_FIELD] = it.split
            if it.key in owners:
                data[assign.ASSIGNEE_FIELD] = owners[it.key]
            t: dict[str, Any] = {"data": data}
            pred = it.prediction
            if pred is not None and (threshold is None or pred.score >= threshold):
                t["predictions"] = [{"result": pred.result, "score": pred.score, "model_version": pred.model_version}]
                with_pred += 1
            elif pred is not None:
                below += 1
            tasks.append(t)
        ids: list[int] = []
        for i in range(0, len(tasks), IMPORT_BATCH):
            res = self._call(self.ls.projects.import_tasks, project_id, request=tasks[i:i + IMPORT_BATCH],
                             commit_to_project=True, return_task_ids=True,
                             what=f"import {len(tasks[i:i + IMPORT_BATCH])} tasks into project {project_id}")
            ids.extend(getattr(res, "task_ids", None) or [])
        return ImportReport(new=len(new), existing=len(items) - len(new), with_predictions=with_pred,
                            below_threshold=below, task_ids=ids,
                            assignment=assign.ranges(owners, [it.key for it in new]), relinked=relinked)

    def ensure_annotator_views(self, project_id: int, annotators: Sequence[str]) -> dict[str, int]:
        """One Data Manager tab per annotator, filtered on ``data.assignee`` (assignment module doc)."""
        views = {v.data.get("title") if isinstance(v.data, dict) else None: v
                 for v in self._call(self.ls.views.list, project=project_id, what="list views")}
        out: dict[str, int] = {}
        for user in annotators:
            title = VIEW_PREFIX + user
            data = {"title": title, "filters": {"conjunction": "and", "items": [
                {"filter": f"filter:tasks:data.{assign.ASSIGNEE_FIELD}", "operator": "equal", "type": "String",
                 "value": user}]}}
            if title in views:
                out[user] = views[title].id
                continue
            v = self._call(self.ls.views.create, project=project_id, data=data, what=f"create view {title!r}")
            out[user] = v.id
        return out

    def view_task_keys(self, project_id: int, view_id: int) -> list[str]:
        """The item keys a Data Manager view shows (what an annotator sees in their tab)."""
        pager = self._call(self.ls.tasks.list, project=project_id, view=view_id, fields="task_only",
                           page_size=5000, what=f"list tasks of view {view_id}")
        return [(t.data or {}).get(KEY_FIELD) for t in pager]

    # -- annotations, deletion marks, review -------------------------------------------------------
    def annotate(self, task_id: int, result: list[dict[str, Any]], *, user_id: int | None = None,
                 cancelled: bool = False) -> int:
        """Submit an annotation (as ``user_id`` when given; the admin token may act for others)."""
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": cancelled}
        if user_id is not None:
            kwargs["completed_by"] = user_id
        a = self._call(self.ls.annotations.create, task_id, **kwargs, what=f"annotate task {task_id}")
        return a.id

    def accept(self, task_id: int, reviewer_id: int) -> int | None:
        """A reviewer accepts a task: the current final annotation is submitted again under the
        reviewer's name (kiln's definition of *reviewed*, see ``export``). None if nothing to accept."""
        t = self._call(self.ls.tasks.get, task_id, what=f"read task {task_id}")
        anns = [a if isinstance(a, dict) else a.dict() for a in (t.annotations or [])]
        final = final_annotation(anns)
        if final is None:
            return None
        return self.annotate(task_id, final.get("result", []), user_id=reviewer_id)

    def mark_deleted(self, project_id: int, keys: Iterable[str], deleted: bool = True) -> int:
        """Mark items deleted (kept in Label Studio, left out of the export until completion)."""
        wanted = set(keys)
        have = self.existing_keys(project_id)
        n = 0
        for key in sorted(wanted & set(have)):
            t = self._call(self.ls.tasks.get, have[key], what=f"read task {have[key]}")
            data = dict(t.data or {})
            if deleted:
                data[DELETED_FIELD] = True
            else:
                data.pop(DELETED_FIELD, None)
            self._call(self.ls.tasks.update, have[key], data=data, what=f"mark task {have[key]} deleted")
            n += 1
        return n

    # -- export --------------------------------------------------------------------------------------
    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """All tasks (also unannotated ones) in Label Studio's JSON export shape."""
        chunks = self._call(self.ls.projects.exports.download_sync, project_id, export_type="JSON",
                            download_all_tasks=True, what=f"export project {project_id}")
        blob = b"".join(self._call(lambda: list(chunks), what=f"download the export of project {project_id}"))
        return json.loads(blob)

    def progress(self, project_id: int) -> assign.Progress:
        emails = {uid: email for email, uid in self.users().items()}
        return assign.progress(self.export_tasks(project_id), emails)


def _norm_xml(xml: str) -> str:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return xml.strip()
    for el in root.iter():
        el.text = (el.text or "").strip() or None
        el.tail = None
    return ET.tostring(root, encoding="unicode")
