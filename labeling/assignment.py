"""Splitting items among annotators, and progress per annotator and per class.

Why a convention and not server-side assignment: task assignment is a Label Studio *Enterprise*
feature (its endpoints answer 404 in the open-source server kiln runs). So kiln does what the source
platform (Surromind AI Studio) shows users: a deterministic split of the items into contiguous ranges
(42 items, 3 annotators -> 1-14, 15-28, 29-42), recorded as an ``assignee`` field in each task's data,
plus one Data Manager view (a tab) per annotator filtered on ``data.assignee``. Label Studio shows the
assignee and the tabs, but it does not *enforce* them: any annotator can open any task. Progress is
therefore computed from who actually completed each annotation, not from the assignment.

Weighted split: each annotator's share is ``n * w / sum(w)``; shares are floored and the remaining
items go to the largest fractional remainders (ties: the annotator listed first), so the counts always
add up to ``n`` and equal weights give the even split. Items keep their assignee once imported; items
added later are split the same way among the annotators, as a new batch.

Persisted in task data (Label Studio)::

    {"image": "/data/local-files/?d=ds/0001.png", "kiln_key": "0001.png", "assignee": "cy@example.com"}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import ConfigError
from kiln.labeling.export import DELETED_FIELD, final_annotation

ASSIGNEE_FIELD = "assignee"


def shares(n: int, weights: Sequence[float]) -> list[int]:
    """How many of ``n`` items each weight gets (largest-remainder rounding; sums to ``n``)."""
    if not weights:
        raise ConfigError("assignment needs at least one annotator")
    if any(w <= 0 for w in weights):
        raise ConfigError(f"annotator weights must be > 0, got {list(weights)}")
    total = float(sum(weights))
    exact = [n * w / total for w in weights]
    counts = [int(e) for e in exact]
    rest = n - sum(counts)
    # stable sort: among equal remainders the annotator listed first gets the extra item
    order = sorted(range(len(weights)), key=lambda i: -(exact[i] - counts[i]))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def split(keys: Sequence[str], annotators: Sequence[str], weights: Sequence[float] | None = None) -> dict[str, str]:
    """item key -> annotator, as contiguous ranges in the given order of ``keys``."""
    if len(set(annotators)) != len(annotators):
        raise ConfigError(f"an annotator is listed twice: {list(annotators)}")
    counts = shares(len(keys), weights if weights is not None else [1.0] * len(annotators))
    out: dict[str, str] = {}
    pos = 0
    for user, c in zip(annotators, counts):
        for k in keys[pos:pos + c]:
            out[k] = user
        pos += c
    return out


def ranges(assignment: dict[str, str], keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """annotator -> (first, last) 1-based positions in ``keys`` (how the source platform shows it)."""
    out: dict[str, tuple[int, int]] = {}
    for i, k in enumerate(keys, start=1):
        u = assignment.get(k)
        if u is None:
            continue
        lo, _ = out.get(u, (i, i))
        out[u] = (lo, i)
    return out


@dataclass
class Progress:
    """Counts over live (not deleted) tasks. ``per_annotator[user]`` has assigned / annotated / skipped
    (annotated and skipped count the tasks that user completed, wherever they were assigned);
    ``per_class`` counts labelled objects (or choices) in the final annotations."""

    total: int = 0
    annotated: int = 0
    skipped: int = 0
    per_annotator: dict[str, dict[str, int]] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "annotated": self.annotated, "skipped": self.skipped,
                "per_annotator": self.per_annotator, "per_class": dict(sorted(self.per_class.items()))}


def _labels_in(result: Iterable[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for r in result:
        v = r.get("value", {})
        for key in ("choices", "rectanglelabels", "polygonlabels", "brushlabels", "labels"):
            out.extend(v.get(key, []))
    return out


def progress(tasks: Iterable[dict[str, Any]], user_emails: dict[int, str]) -> Progress:
    """Progress from exported tasks (Label Studio JSON export shape: ``data``, ``annotations``).

    ``user_emails`` maps Label Studio user ids to emails (annotations carry ``completed_by`` ids).
    """

    p = Progress()
    for t in tasks:
        data = t.get("data", {})
        if data.get(DELETED_FIELD):
            continue
        p.total += 1
        assignee = data.get(ASSIGNEE_FIELD)
        if assignee:
            p.per_annotator.setdefault(assignee, {"assigned": 0, "annotated": 0, "skipped": 0})["assigned"] += 1
        anns = t.get("annotations", [])
        for a in anns:
            who = user_emails.get(_user_id(a.get("completed_by")), str(a.get("completed_by")))
            row = p.per_annotator.setdefault(who, {"assigned": 0, "annotated": 0, "skipped": 0})
            row["skipped" if a.get("was_cancelled") else "annotated"] += 1
        final = final_annotation(anns)
        if final is not None:
            p.annotated += 1
            for lab in _labels_in(final.get("result", [])):
                p.per_class[lab] = p.per_class.get(lab, 0) + 1
        elif any(a.get("was_cancelled") for a in anns):
            p.skipped += 1
    return p


def _user_id(v: Any) -> int | None:
    # the export gives completed_by as an id, the tasks API sometimes as {"id": …, "email": …}
    if isinstance(v, dict):
        return v.get("id")
    return v
