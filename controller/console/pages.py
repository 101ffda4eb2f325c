"""The console's pages: one handler per route (``ROUTES``), server-rendered HTML.

``dispatch(config, path, query, root, user)`` answers one GET: ``kiln ui`` calls it from Starlette
and ``kiln controller`` from its own HTTP server under ``/ui`` (``root`` is the prefix the links
carry; ``user`` whom the request is for, None for everything). Each handler gets the request's
``Viewer`` (``read.viewer``, computed once) and passes it to every reader it calls.

Every value shown goes through ``esc`` (HTML-escaped); charts are drawn in the browser by
``static/console.js`` from JSON embedded in the page (``<script type="application/json">``), or
fetched from a ``.json`` route the page polls (the live curves).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from kiln.api.access import Viewer
from kiln.config import KilnConfig
from kiln.controller.console import read
from kiln.controller.status import HEALTH_ORDER, _ago

NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@dataclass
class Reply:
    status: int
    body: bytes
    ctype: str = "text/html; charset=utf-8"


Handler = Callable[..., Reply]
# route pattern (a full match of the path below the console's root) -> handler(config, query,
# root, view, **groups). One registry: both servers answer exactly these.
ROUTES: dict[re.Pattern[str], Handler] = {}


def route(pattern: str) -> Callable[[Handler], Handler]:
    def add(fn: Handler) -> Handler:
        ROUTES[re.compile(pattern)] = fn
        return fn

    return add


def dispatch(config: KilnConfig, path: str, query: dict[str, str], root: str = "", user: str | None = None) -> Reply:
    """The reply to ``GET root+path`` (``path`` without the root), as ``user`` may see it."""
    for pattern, fn in ROUTES.items():
        m = pattern.fullmatch(path or "/")
        if m:
            view = read.viewer(config, user) if fn is not static else None
            return fn(config, query, root, view, **m.groupdict())
    return _not_found(root, f"no page at {path}")


# -- HTML helpers ---------------------------------------------------------------------------------


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def num(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return esc(v)


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def chart(kind: str, data: Any, cid: str, **attrs: Any) -> str:
    """A chart drawn by console.js: its data as JSON beside an empty figure. ``</`` never
    appears in the JSON (escaped), so a label cannot close the script element."""
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    extra = "".join(f' data-{k}="{esc(v)}"' for k, v in attrs.items())
    return (
        f'<figure class="chart" id="{esc(cid)}" data-chart="{esc(kind)}"{extra}></figure>'
        f'<script type="application/json" id="{esc(cid)}-data">{payload}</script>'
    )


def badge(word: str) -> str:
    return f'<span class="badge b-{esc(word).lower()}">{esc(word)}</span>'


def link(root: str, kind: str, ws: str, name: str) -> str:
    page = PAGE_OF.get(kind)
    if page is None:
        return esc(name)
    return f'<a href="{root}{page}/{quote(ws)}/{quote(name)}">{esc(name)}</a>'


# kind -> the page an object of that kind links to (kinds without one are listed, not linked)
PAGE_OF = {"Dataset": "/datasets", "Experiment": "/experiments", "Deployment": "/deployments", "LabelingJob": "/labeling"}
NAV = [("/", "Overview"), ("/queue", "Queue"), ("/models", "Models"), ("/labeling", "Labeling"), ("/deployments", "Deployments")]


def layout(root: str, title: str, body: str, *, status: int = 200) -> Reply:
    nav = "".join(f'<a href="{root}{p or "/"}">{esc(t)}</a>' for p, t in NAV)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · kiln</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}/static/console.css"></head>
<body><header><strong>kiln</strong> <nav>{nav}</nav><span class="ro">read-only</span></header>
<main><h1>{esc(title)}</h1>
{body}
</main><script src="{root}/static/console.js"></script></body></html>"""
    return Reply(status, doc.encode())


def _not_found(root: str, what: str) -> Reply:
    return layout(root, "Not found", f'<p class="error">{esc(what)}</p><p><a href="{root}/">overview</a></p>', status=404)


# -- pages ----------------------------------------------------------------------------------------


@route(r"/")
def overview_page(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None) -> Reply:
    data = read.overview(config, view)
    objs = data["objects"]
    health: dict[str, int] = {}
    for o in objs:
        health[o["health"]] = health.get(o["health"], 0) + 1
    cards = "".join(
        f'<div class="card"><b>{n}</b> {badge(h)}</div>'
        for h, n in sorted(health.items(), key=lambda x: HEALTH_ORDER.index(x[0]) if x[0] in HEALTH_ORDER else 99)
    )
    rows = [
        [
            esc(o["kind"]),
            "-" if o["kind"] == "Workspace" else esc(o["workspace"]),
            link(root, o["kind"], o["workspace"], o["name"]),
            badge(o["sync"]),
            badge(o["health"]),
            esc(o["progress"]),
            f'<time title="{esc(o["lastChange"])}">{esc(_ago(o["lastChange"]))}</time>',
            esc((o["message"] or o.get("info") or "")[:120]),
        ]
        for o in objs
    ]
    wss = []
    for w in data["workspaces"]:
        period = w["period"]
        days = period["daysLeft"]
        when = f"{esc(period['start'] or '')} → {esc(period['end'])} ({days} days left)" if days is not None else "no end"
        quotas = (
            ", ".join(
                f"{esc(q['name'])} {esc(q['used']) if q['used'] is not None else '-'}/{esc(q['limit'])}" for q in w["quotas"]
            )
            or "none"
        )
        members = ", ".join(f"{esc(m['user'])} ({esc(m['role'])})" for m in w["members"]) or "none"
        waiting = "-" if w["waiting"] is None else f'<a href="{root}/queue?workspace={quote(w["name"])}">{w["waiting"]}</a>'
        wss.append([esc(w["name"]), badge(w["health"]), str(w["objects"]), members, when, quotas, waiting])
    body = (
        f'<div class="cards"><div class="card"><b>{len(objs)}</b> objects</div>{cards}</div>'
        # the few workspaces first: the objects' table runs to a thousand rows
        "<h2>Workspaces</h2>"
        + table(["workspace", "health", "objects", "members", "period", "quotas (used/limit)", "jobs waiting"], wss, "workspaces")
        + f'<p class="note">Use now: the local runner\'s resource queue (<a href="{root}/queue">queue</a>, '
        "as <code>kiln queue</code> lists it) and the running local deployments.</p>"
        + "<h2>Objects</h2>"
        + table(["kind", "workspace", "name", "sync", "health", "workflow", "last change", "message"], rows, "objects")
    )
    return layout(root, "Overview", body)


@route(rf"/datasets/(?P<ws>{NAME})/(?P<name>{NAME})")
def dataset_page(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str, name: str) -> Reply:
    data = read.dataset(config, ws, name, view)
    if data is None:
        return _not_found(root, f"Dataset/{ws}/{name} has not been applied")
    rec, versions, x = data["record"], data["versions"], data["extra"]
    facts = [
        ("type", data["type"]),
        ("task", data["task"]),
        ("health", rec.health),
        ("sync", rec.sync),
        ("current", x.get("number")),
        ("rows", (x.get("schema") or {}).get("rows")),
        ("files", x.get("files")),
        ("size", size(x.get("size"))),
        ("path", data["path"]),
    ]
    body = _facts(facts)
    vrows = [
        [
            esc(v["number"]) + (" (current)" if v["current"] else ""),
            f"<code>{esc(str(v['id'])[:12])}</code>",
            esc(v["created"]),
            num(v["files"]),
            size(v["size"]),
            esc(v["source"]),
            esc(", ".join(str(o.get("op", o)) if isinstance(o, dict) else str(o) for o in v["ops"]) or "-"),
            f"<code>{esc(str(v['parent'] or '-')[:12])}</code>",
        ]
        for v in versions
    ]
    body += "<h2>Versions</h2>" + table(
        ["version", "id", "created", "files", "size", "source", "ops", "parent"], vrows, "versions"
    )
    shown = next((v for v in versions if v["number"] == query.get("v")), None) or next(
        (v for v in versions if v["current"]), versions[-1] if versions else None
    )
    if shown is not None and shown["classes"]:
        classes = sorted(shown["classes"].items(), key=lambda kv: str(kv[0]))
        body += f"<h2>Items per class ({esc(shown['number'])})</h2>" + chart(
            "bars", {"labels": [str(c) for c, _ in classes], "values": [n for _, n in classes]}, "class-counts"
        )
    thumbs = read.samples(config, ws, name, view)
    if thumbs["items"]:
        body += "<h2>Samples</h2>" + _thumbnails(root, ws, name, thumbs["items"])
        if any(t["mask"] for t in thumbs["items"]):  # the masks' category names, for console.js
            body += chart("masks", thumbs["id2label"], "masks")
    body += _diff_section(config, query, root, ws, name, versions)
    body += _history(data["attempts"])
    return layout(root, f"Dataset {ws}/{name}", body)


def _diff_section(
    config: KilnConfig, query: dict[str, str], root: str, ws: str, name: str, versions: list[dict[str, Any]]
) -> str:
    """Of a dataset the viewer sees (its page was answered)."""
    if len(versions) < 2:
        return ""
    by_number = {v["number"]: v for v in versions}
    a = by_number.get(query.get("a", "")) or versions[-2]
    b = by_number.get(query.get("b", "")) or versions[-1]
    opts = lambda chosen: "".join(  # noqa: E731 - two selects of the same versions
        f"<option{' selected' if v is chosen else ''}>{esc(v['number'])}</option>" for v in versions
    )
    out = (
        f'<h2>Diff</h2><form method="get" class="diff"><select name="a">{opts(a)}</select> → '
        f'<select name="b">{opts(b)}</select> <button>compare</button></form>'
    )
    rows = [[esc(c), str(na), str(nb), f"{nb - na:+d}"] for c, na, nb in read.class_delta(a, b)]
    out += table(["class", a["number"], b["number"], "delta"], rows, "diff")
    if "a" in query or "b" in query:  # DVC's listings: only when asked (seconds on a large dataset)
        d = read.file_diff(config, ws, name, str(a["id"]), str(b["id"]))
        if "error" in d:
            out += f'<p class="note">file diff not available here: {esc(d["error"])}</p>'
        else:
            out += "<p>" + ", ".join(f"{len(d[k])} {k}" for k in ("added", "removed", "changed")) + "</p>"
            out += "".join(
                f"<details><summary>{k} ({len(d[k])})</summary><pre>{esc(chr(10).join(d[k][:500]))}</pre></details>"
                for k in ("added", "removed", "changed")
                if d[k]
            )
    return out


def _thumbnails(root: str, ws: str, name: str, thumbs: list[dict[str, Any]]) -> str:
    cells = []
    for t in thumbs:
        src = f"{root}/files/{quote(ws)}/{quote(name)}/{quote(t['path'])}"
        overlay = ""
        if t["boxes"] and t["size"] and t["size"][0]:
            w, h = t["size"]
            rects = "".join(
                f'<rect x="{float(b[0]):g}" y="{float(b[1]):g}" width="{float(b[2]):g}" '
                f'height="{float(b[3]):g}"/><text x="{float(b[0]):g}" y="{max(float(b[1]) - 1, 6):g}">'
                f"{esc(b[4])}</text>"
                for b in t["boxes"]
            )
            overlay = f'<svg class="boxes" viewBox="0 0 {w} {h}" preserveAspectRatio="none">{rects}</svg>'
        if t["mask"]:  # coloured by console.js from the mask's pixels (category ids)
            overlay = f'<canvas class="mask" data-mask="{root}/files/{quote(ws)}/{quote(name)}/{quote(t["mask"])}"></canvas>'
        label = t["label"] or ", ".join(sorted({str(b[4]) for b in t["boxes"]}))
        cells.append(
            f'<div class="thumb"><div class="img"><img src="{src}" alt="{esc(t["path"])}" '
            f'loading="lazy">{overlay}</div><span>{esc(label)}</span></div>'
        )
    return f'<div class="thumbs">{"".join(cells)}</div>'


@route(rf"/files/(?P<ws>{NAME})/(?P<name>{NAME})/(?P<rel>.+)")
def sample_image(
    config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str, name: str, rel: str
) -> Reply:
    p = read.sample_file(config, ws, name, rel, view)
    if p is None:
        return Reply(404, b"not an image of this dataset", "text/plain")
    ctype = {".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(p.suffix.lower(), f"image/{p.suffix.lower()[1:]}")
    return Reply(200, p.read_bytes(), ctype)


@route(rf"/experiments/(?P<ws>{NAME})/(?P<name>{NAME})")
def experiment_page(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str, name: str) -> Reply:
    data = read.experiment(config, ws, name, view)
    if data is None:
        return _not_found(root, f"Experiment/{ws}/{name} has not been applied")
    rec, obj, best, reg = data["record"], data["objective"], data["best"], data["registered"]
    ds = data["extra"].get("dataset") or {}
    facts = [
        ("mode", data["mode"]),
        ("health", rec.health),
        ("sync", rec.sync),
        ("objective", f"{obj['metric']} ({obj['direction']})"),
        ("dataset", _dataset_link(root, ds)),
        ("best trial", best.get("trial")),
        ("best value", num(best.get("value"))),
        (
            "registered",
            Markup(f'<a href="{root}/models">{esc(reg["model"])} v{esc(reg["version"])}</a>') if isinstance(reg, dict) else "-",
        ),
    ]
    body = _facts(facts)
    body += (
        '<h2>Training curves</h2><p class="note" id="curves-state"></p>'
        f'<figure class="chart" id="curves" data-chart="curves" data-src="{root}/experiments/'
        f'{quote(ws)}/{quote(name)}/curves.json" data-metric="{esc(obj["metric"])}"></figure>'
    )
    trials = data["trials"]
    params = sorted({k for t in trials for k in (t.get("params") or {})})
    metrics = sorted(
        {k for t in trials for k in (t.get("metrics") or {})},
        key=lambda m: (m != obj["metric"], not m.startswith("validation_"), m),
    )[:6]
    rows = [
        [
            esc(t.get("id")),
            esc(t.get("candidate") or ""),
            badge(str(t.get("state", "?"))),
            *(esc(json.dumps((t.get("params") or {}).get(p))) for p in params),
            *(num((t.get("metrics") or {}).get(m)) for m in metrics),
        ]
        for t in trials
    ]
    body += f"<h2>Trials ({len(trials)})</h2>" + table(["trial", "candidate", "state", *params, *metrics], rows, "trials")
    if len(data["history"]) > 1:
        body += "<h2>Optimisation history</h2>" + chart(
            "history", {"points": data["history"], "metric": obj["metric"], "direction": obj["direction"]}, "history"
        )
    if data["mode"] == "hpo":  # fANOVA takes a second or more: fetched after the page has loaded
        body += (
            '<h2>Parameter importance</h2><figure class="chart" id="importance" data-chart="importance" '
            f'data-src="{root}/experiments/{quote(ws)}/{quote(name)}/importance.json"></figure>'
        )
    board = data["leaderboard"]
    if board:
        title = "AutoML leaderboard" if data["mode"] == "automl" else "Leaderboard"
        brows = [
            [
                esc(r.get("rank")),
                esc(r.get("trial")),
                esc(r.get("candidate") or r.get("algorithm") or ""),
                f"<code>{esc(json.dumps(r.get('params') or {}, sort_keys=True))}</code>",
                num(r.get("objective")),
            ]
            for r in board[:50]
        ]
        brows += [
            ["-", esc(f.get("trial")), esc(f.get("candidate") or ""), "", esc(f"{f.get('state', '')}: {f.get('error', '')}")]
            for f in data["failed"][:20]
        ]
        body += f"<h2>{title}</h2>" + table(["#", "trial", "model", "params", obj["metric"]], brows, "leaderboard")
    cm = data["confusion"]
    if cm:
        k = len(cm["classes"])
        peak = max((max(r) for r in cm["matrix"]), default=1) or 1
        cells = [
            [f"<b>{esc(c)}</b>", *(f'<span class="cm a{round(9 * n / peak)}">{n}</span>' for n in cm["matrix"][i])]
            for i, c in enumerate(cm["classes"])
        ]
        body += f"<h2>Confusion matrix ({esc(cm['split'])} split; rows: true, columns: predicted)</h2>" + table(
            ["", *cm["classes"]], cells, f"confusion k{k}"
        )
    pr = data["pr"]
    if pr:
        ap = ", ".join(f"{c} {v:.3f}" for c, v in pr["ap"].items())
        body += f"<h2>Precision-recall ({esc(pr['split'])} split; average precision: {esc(ap)})</h2>" + chart(
            "pr", pr["series"], "pr-curve"
        )
    runs = read.tensorboard_runs(config, rec)
    if runs:
        body += (
            f"<h2>TensorBoard</h2><p>Run <code>kiln tensorboard Experiment/{esc(ws)}/{esc(name)}</code>, then "
            '<a href="http://127.0.0.1:6006/" target="_blank" rel="noopener">open TensorBoard</a> '
            f"({len(runs)} trial(s) with event files).</p>"
        )
    if data["logs"]:
        body += "<h2>Step logs</h2>" + "".join(
            f"<details><summary>{esc(lg['name'])} ({lg['total']} lines)</summary><pre>{esc(chr(10).join(lg['lines']))}"
            "</pre></details>"
            for lg in data["logs"]
        )
    body += _history(data["attempts"])
    return layout(root, f"Experiment {ws}/{name}", body)


def _experiment_json(data: Any, ws: str, name: str) -> Reply:
    """An experiment's JSON endpoint: the reader's data, or the 404 of an object never applied
    (also what a user who may not see it gets)."""
    if data is None:
        return Reply(404, json.dumps({"error": f"Experiment/{ws}/{name} has not been applied"}).encode(), "application/json")
    return Reply(200, json.dumps(data).encode(), "application/json")


@route(rf"/experiments/(?P<ws>{NAME})/(?P<name>{NAME})/curves\.json")
def curves_json(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str, name: str) -> Reply:
    return _experiment_json(read.curves(config, ws, name, view), ws, name)


@route(rf"/experiments/(?P<ws>{NAME})/(?P<name>{NAME})/importance\.json")
def importance_json(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str, name: str) -> Reply:
    return _experiment_json(read.importance(config, ws, name, view), ws, name)


@route(r"/models")
def models_page(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None) -> Reply:
    data = read.models(config, view)
    rows = []
    for v in data["versions"]:
        obj = v["objective"] or {}
        shown = {k: val for k, val in v["metrics"].items() if k.startswith("validation_")} or v["metrics"]
        rows.append(
            [
                esc(v["model"]),
                f"v{v['version']}",
                esc(v["created"]),
                esc(f"{obj.get('metric', '')}={num(obj.get('value'))}" if obj else "-"),
                esc(", ".join(f"{k}={num(val)}" for k, val in sorted(shown.items())[:6])),
                esc(", ".join(map(str, v["tags"])) or "-"),
                esc(", ".join(v["aliases"]) or "-"),
                esc(", ".join(v["deployments"]) or "-"),
                esc(v["labels"].get("experiment", "-")),
            ]
        )
    body = f"<h2>Versions ({len(rows)})</h2>" + table(
        ["model", "version", "created", "objective", "metrics", "tags", "aliases", "deployed by", "experiment"], rows, "models"
    )
    arows = [
        [
            esc(a.get("time")),
            esc(a.get("who")),
            esc(a.get("action")),
            esc(a.get("model")),
            esc(a.get("version", "")),
            esc(
                ", ".join(
                    f"{k}={v}"
                    for k, v in a.items()
                    if k not in ("time", "who", "action", "model", "version") and not isinstance(v, dict)
                )
            ),
        ]
        for a in data["audit"]
    ]
    body += "<h2>Audit log (newest first)</h2>" + table(["time", "who", "action", "model", "version", "details"], arows, "audit")
    return layout(root, "Models", body)


@route(r"/labeling")
@route(rf"/labeling/(?P<ws>{NAME})/(?P<name>{NAME})")
def labeling_page(
    config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str | None = None, name: str | None = None
) -> Reply:
    data = read.labeling(config, view)
    jobs = [j for j in data["jobs"] if ws is None or (j["workspace"], j["name"]) == (ws, name)]
    studio = data["studio"]
    body = (
        f'<p>Label Studio: <a href="{esc(studio)}" target="_blank" rel="noopener">{esc(studio)}</a></p>'
        if studio
        else '<p class="note">Label Studio is not running here (<code>kiln labelstudio start</code>).</p>'
    )
    if not jobs:
        body += '<p class="none">No labeling job has been applied.</p>'
    for j in jobs:
        c = j["completion"]
        body += (
            f'<h2 id="{esc(j["workspace"])}-{esc(j["name"])}">{esc(j["workspace"])}/{esc(j["name"])} '
            f"{badge(j['health'])}</h2>"
            + _facts(
                [
                    ("done", f"{c.get('done', '-')}/{c.get('total', '-')}"),
                    ("rule", c.get("rule")),
                    ("project", j["url"]),
                    ("status", j["info"]),
                ]
            )
        )
        if j["url"]:
            body += f'<p><a href="{esc(j["url"])}" target="_blank" rel="noopener">open the project in Label Studio</a></p>'
        per = {who: (p if isinstance(p, dict) else {"annotated": p}) for who, p in j["perAnnotator"].items()}
        cols = sorted({k for p in per.values() for k in p})
        ann = [[esc(who), *(num(p.get(k)) for k in cols)] for who, p in sorted(per.items())]
        body += "<h3>Per annotator</h3>" + table(["annotator", *cols], ann, "annotators")
        if j["perClass"]:
            items = sorted(j["perClass"].items(), key=lambda kv: str(kv[0]))
            body += "<h3>Per class</h3>" + chart(
                "bars",
                {"labels": [str(k) for k, _ in items], "values": [v if isinstance(v, (int, float)) else 0 for _, v in items]},
                f"perclass-{j['workspace']}-{j['name']}",
            )
    return layout(root, "Labeling", body)


@route(r"/queue")
def queue_page(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None) -> Reply:
    """Running and waiting jobs as ``kiln queue`` lists them (``?workspace=W``: only W's)."""
    from kiln.controller.compute import _resources as resources

    q = read.queue(config, view)
    if q["jobs"] is None:
        return layout(root, "Queue", f'<p class="none">{esc(q["note"])}</p>')
    only = query.get("workspace")
    rows = [
        [
            badge(j["state"]),
            esc(j["position"] or "-"),
            esc(j["workspace"]),
            esc(f"{j['workflow']}/{j['node']}"),
            esc(resources(j)),
            esc(f"{j['seconds']:.0f}s"),
            esc(j["reason"] or "-"),
        ]
        for j in q["jobs"]
        if not only or j["workspace"] == only
    ]
    waiting = sum(1 for j in q["jobs"] if j["state"] == "waiting" and (not only or j["workspace"] == only))
    body = (
        f'<div class="cards"><div class="card"><b>{len(rows) - waiting}</b> running</div>'
        f'<div class="card"><b>{waiting}</b> waiting</div></div>'
        + (f'<p>workspace {esc(only)} · <a href="{root}/queue">all</a></p>' if only else "")
        + table(["state", "position", "workspace", "job", "resources", "for", "why it waits"], rows, "queue")
    )
    return layout(root, "Queue", body)


@route(r"/deployments")
@route(rf"/deployments/(?P<ws>{NAME})/(?P<name>{NAME})")
def deployments_page(
    config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, ws: str | None = None, name: str | None = None
) -> Reply:
    deps = [d for d in read.deployments(config, view) if ws is None or (d["workspace"], d["name"]) == (ws, name)]
    rows = []
    for d in deps:
        m, url = d["metrics"], d["url"]
        rate = m.get("ratePerS")
        rows.append(
            [
                f"{esc(d['workspace'])}/{esc(d['name'])}",
                badge(d["health"]),
                f'<a href="{esc(url)}">{esc(url)}</a>' if url else "-",
                esc(f"{d['model']} v{d['version']}" if d["model"] else "-"),
                esc(m.get("error") or m.get("requests", "-")),
                "-" if rate is None else f"{rate:.2f}/s",
                "-" if m.get("latencyMs") is None else f"{m['latencyMs']:.1f} ms",
                f'<a href="{esc(url)}/ui" target="_blank" rel="noopener">test page</a>' if url else "-",
            ]
        )
    body = table(["deployment", "health", "URL", "model", "requests", "rate", "mean latency", ""], rows, "deployments")
    return layout(root, "Deployments", body)


# -- static files ---------------------------------------------------------------------------------

STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}


@route(r"/static/(?P<file>[a-z.]+)")
def static(config: KilnConfig, query: dict[str, str], root: str, view: Viewer | None, file: str) -> Reply:
    if file not in STATIC:
        return Reply(404, b"no such file", "text/plain")
    body = resources.files("kiln.controller.console").joinpath("static", file).read_bytes()
    return Reply(200, body, STATIC[file])


# -- parts ----------------------------------------------------------------------------------------


def _dataset_link(root: str, ds: dict[str, Any]) -> Any:
    """The experiment's dataset (``ws/name``) and version, linked to its page."""
    ref = str(ds.get("dataset") or "")
    ws, _, name = ref.partition("/")
    if not (re.fullmatch(NAME, ws) and re.fullmatch(NAME, name)):
        return f"{ref or '-'} {ds.get('number', '')}"
    return Markup(f'<a href="{root}/datasets/{quote(ws)}/{quote(name)}">{esc(ref)}</a> {esc(ds.get("number", ""))}')


class Markup(str):
    """Already-escaped HTML (a link built here): ``_facts`` shows it as it is."""


def _facts(pairs: list[tuple[str, Any]]) -> str:
    items = "".join(
        f"<dt>{esc(k)}</dt><dd>{v if isinstance(v, Markup) else esc(v) if v not in (None, '') else '-'}</dd>" for k, v in pairs
    )
    return f'<dl class="facts">{items}</dl>'


def _history(attempts: list[Any]) -> str:
    rows = [
        [
            esc(a.started_at),
            esc(a.generation),
            badge(a.result),
            esc(a.action or ""),
            f"<code>{esc((a.commit or '')[:12])}</code>",
            esc(a.author or ""),
            esc(a.message[:200]),
        ]
        for a in attempts
    ]
    return "<h2>History</h2>" + table(["started", "gen", "result", "action", "commit", "author", "message"], rows, "history")
