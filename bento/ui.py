"""The deployment's OpenAPI description and its "service test" page (the source platforms' test
tab: upload an image or fill a row, run, see the result as a table and as JSON).

The page is one static HTML file with a little JavaScript; it reads ``/openapi.json`` (the
``x-kiln`` extension says the task, input kind and feature names) and posts to ``/predict`` with
the token typed into it. The token stays in the browser tab.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi", "page"]


def _column(name: str, col: dict[str, Any]) -> dict[str, Any]:
    """One raw-row field: its JSON type, and the categories seen in training (others are accepted
    and encoded as unknown, so they are not an ``enum``)."""
    if col.get("type") == "string":
        cats = col.get("categories") or []
        return {"type": ["string", "null"], "examples": cats[:20],
                "description": f"{len(cats)} categories seen in training; any other value is accepted as unknown"}
    if col.get("type") == "datetime":
        return {"type": ["string", "null"], "examples": [col["example"]] if col.get("example") else [],
                "description": "a date or time as in the CSV; null: missing (the model imputes it)"}
    return {"type": ["number", "null"], "description": "null: missing (the model imputes it)"}


def openapi(cfg: Any, engine: Any) -> dict[str, Any]:
    sc = engine.cfg if engine is not None else None
    if sc is not None and sc.input == "tabular":
        cols = (sc.schema or {}).get("columns") or {}
        if cols:  # a featurised model: raw rows, null for missing, no other field
            item = {"type": "object", "required": list(sc.features or []), "additionalProperties": False,
                    "properties": {f: _column(f, cols[f]) for f in sc.features or []}}
        else:
            item = {"type": "object", "required": list(sc.features or []),
                    "properties": {f: {"type": ["number", "string"] if sc.preprocess else "number"}
                                   for f in sc.features or []}}
    else:
        item = {"type": "object", "required": ["data"],
                "properties": {"data": {"type": "string", "format": "byte", "description": "the image file, base64"}}}
    if sc is not None and sc.input == "tabular":  # or the row's values in feature order, as in the CSV
        item = {"oneOf": [item, {"type": "array", "minItems": len(sc.features or []), "maxItems": len(sc.features or []),
                                 "description": "values in feature order: " + ", ".join(sc.features or [])}]}
    task = sc.task if sc else "classification"
    scored = {"type": "object", "required": ["score", "label"],
              "properties": {"score": {"type": "number"}, "label": {"type": "string"}}}
    per_instance = {  # one entry of "predictions" per instance, whatever the batch size
        "classification": {"type": "array", "items": scored, "description": "every class, best first"},
        "tabular-classification": {"type": "object", "required": ["label"], "properties": {
            "label": {"type": "string"}, "score": {"type": "number"}}, "description": "the best class"},
        "regression": {"type": ["number", "array"], "description": "the predicted value"},
        "clustering": {"type": "object", "required": ["cluster"], "properties": {
            "cluster": {"type": "integer"}, "distance": {"type": "number"}, "score": {"type": "number"}},
            "description": "the row's cluster; k-means: its distance to the centre, a mixture: its probability"},
        "detection": {"type": "array", "items": {"type": "object", "description": "{<label>: {xmin, ymin, xmax, ymax}, score}"}},
        "segmentation": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}},
                         "description": "a label id per pixel, row by row"},
    }["tabular-classification" if task == "classification" and sc is not None and sc.input == "tabular" else task]
    responses = {"type": "object", "required": ["predictions"],
                 "properties": {"predictions": {"type": "array", "items": per_instance}}}
    err = {"type": "object", "properties": {"error": {"type": "string"}, "request_id": {"type": "string"},
                                            "errors": {"type": "array", "items": {"type": "object"}}}}
    op = {
        "summary": f"predict with {cfg.model} v{cfg.version}",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["instances"],
            "properties": {"instances": {"type": "array", "items": item, "maxItems": cfg.limits.maxInstances}}}}}},
        "responses": {
            "200": {"description": task, "content": {"application/json": {"schema": responses}}},
            **{c: {"description": d, "content": {"application/json": {"schema": err}}} for c, d in (
                ("400", "malformed request or instance"), ("401", "missing or invalid token"),
                ("413", "payload or instance count over the limit"), ("500", "internal error (with request id)"),
                ("503", "overloaded or loading"), ("504", "timeout"))},
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": f"kiln deployment {cfg.deployment}", "version": str(cfg.version)},
        "paths": {"/predict": {"post": op}, "/inference": {"post": {**op, "summary": "EasyMaker-compatible alias of /predict"}}},
        "x-kiln": {"deployment": cfg.deployment, "model": cfg.model, "version": cfg.version, "task": task,
                   "input": sc.input if sc else None, "features": (sc.features if sc else None) or [],
                   "schema": sc.schema if sc else None,
                   "public": cfg.public},
    }
    if not cfg.public:
        doc["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                                 "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}}
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>kiln service test</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:60em}
table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3em .6em}
pre{background:#f4f4f4;padding:1em;overflow:auto;max-height:30em}
label{display:block;margin:.3em 0}
.err{color:#b00}
</style></head>
<body>
<h1>Service test: <span id="title">…</span></h1>
<p id="meta"></p>
<label>API token <input id="token" type="password" size="60" placeholder="kiln_… (not needed for public deployments)"></label>
<form id="form"><div id="inputs"></div><button type="submit" id="run">Run</button></form>
<h2>Result</h2>
<div id="status"></div>
<table id="table"></table>
<h3>JSON</h3>
<pre id="json"></pre>
<script>
let info = null;
const $ = (id) => document.getElementById(id);
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
async function init(){
  const r = await fetch('openapi.json'); const doc = await r.json(); info = doc['x-kiln'];
  $('title').textContent = info.deployment;
  $('meta').textContent = `model ${info.model} v${info.version} · ${info.task} · ${info.input} input`;
  const box = $('inputs');
  if (info.input === 'image') {
    box.innerHTML = '<label>Image <input id="file" type="file" accept="image/*"></label>';
  } else {
    box.innerHTML = info.features.map(f => `<label>${esc(f)} <input name="${esc(f)}" size="12"></label>`).join('');
  }
}
function b64(file){return new Promise((ok, bad)=>{const r=new FileReader();
  r.onload=()=>ok(r.result.split(',')[1]); r.onerror=bad; r.readAsDataURL(file);});}
function table(res){
  const t = $('table'); let rows = [];
  if (info.task === 'classification') {  // images: every class ranked; rows: the best class
    rows = ['<tr><th>instance</th><th>label</th><th>score</th></tr>'];
    res.predictions.forEach((l,i)=>(Array.isArray(l) ? l : [l]).forEach(p=>rows.push(
      `<tr><td>${i}</td><td>${esc(p.label)}</td><td>${p.score === undefined ? '' : p.score.toFixed(4)}</td></tr>`)));
  } else if (info.task === 'detection') {
    rows = ['<tr><th>instance</th><th>label</th><th>box</th><th>score</th></tr>'];
    res.predictions.forEach((l,i)=>l.forEach(p=>{const k=Object.keys(p).find(k=>k!=='score'); const b=p[k];
      rows.push(`<tr><td>${i}</td><td>${esc(k)}</td><td>${b.xmin},${b.ymin} – ${b.xmax},${b.ymax}</td><td>${p.score.toFixed(3)}</td></tr>`);}));
  } else if (info.task === 'segmentation') {
    rows = ['<tr><th>instance</th><th>size</th><th>label ids present</th></tr>'];
    res.predictions.forEach((m,i)=>rows.push(`<tr><td>${i}</td><td>${m.length}×${(m[0]||[]).length}</td><td>${[...new Set(m.flat())].join(', ')}</td></tr>`));
  } else {
    rows = ['<tr><th>instance</th><th>value</th></tr>'];
    res.predictions.forEach((v,i)=>rows.push(`<tr><td>${i}</td><td>${esc(JSON.stringify(v))}</td></tr>`));
  }
  t.innerHTML = rows.join('');
}
$('form').addEventListener('submit', async (ev) => {
  ev.preventDefault(); $('status').textContent = 'running…'; $('status').className='';
  let inst = {};
  if (info.input === 'image') {
    const f = $('file').files[0]; if (!f) { $('status').textContent = 'choose an image'; return; }
    inst = {data: await b64(f)};
  } else {
    for (const el of document.querySelectorAll('#inputs input')) {
      const v = el.value.trim(); inst[el.name] = (v !== '' && !isNaN(Number(v))) ? Number(v) : v;
    }
  }
  const headers = {'content-type': 'application/json'};
  const tok = $('token').value.trim(); if (tok) headers['authorization'] = 'Bearer ' + tok;
  const t0 = performance.now();
  const r = await fetch('predict', {method: 'POST', headers, body: JSON.stringify({instances: [inst]})});
  const res = await r.json();
  $('json').textContent = JSON.stringify(res, null, 2);
  $('status').textContent = `HTTP ${r.status} in ${(performance.now()-t0).toFixed(1)} ms`;
  if (r.ok) table(res); else { $('status').className='err'; $('table').innerHTML=''; }
});
init();
</script>
</body></html>
"""


def page() -> str:
    return _PAGE
