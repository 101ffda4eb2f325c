"""The ``http`` template: one HTTP request made by the runner itself (Argo's agent makes it in
a cluster), its response body the node's ``outputs.result``.

Only loopback addresses are called (127.0.0.1, ::1, localhost): what a local run reaches stays on
this machine and every run of a workflow sees the same answer; a request to another host ends
the node with Error, saying so.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from kiln.runners import _expr

if TYPE_CHECKING:
    from kiln.runners.local.interpreter import _Run

DEFAULT_TIMEOUT = 30.0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_call(run: _Run, node: dict, tmpl: dict) -> None:
    h: dict[str, Any] = tmpl["http"]
    url = str(h.get("url") or "")
    where = f"template {tmpl['name']!r}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        run.finish(node, "Error", f"{where}: http.url {url!r} is not an http(s) URL")
        return
    if not _loopback(parts.hostname):
        run.finish(
            node,
            "Error",
            f"{where}: the local runner calls only loopback addresses (127.0.0.1, ::1, "
            f"localhost), not {parts.hostname!r}: run it with the argo runner",
        )
        return
    run.check_stop()
    headers = {str(x["name"]): str(x.get("value", "")) for x in h.get("headers") or [] if x.get("name")}
    body = h.get("body")
    req = urllib.request.Request(
        url, method=str(h.get("method") or "GET"), headers=headers, data=str(body).encode() if body is not None else None
    )
    timeout = float(h.get("timeoutSeconds") or DEFAULT_TIMEOUT)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only, checked above
            code, text, rheaders = resp.status, resp.read().decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as exc:  # a 4xx/5xx answer is still an answer
        code, text, rheaders = exc.code, exc.read().decode(errors="replace"), dict(exc.headers or {})
    except (urllib.error.URLError, OSError) as exc:
        run.finish(node, "Error", f"{where}: {url}: {getattr(exc, 'reason', exc)}")
        return
    outputs = {"result": text}
    cond = h.get("successCondition")
    if cond:
        env = {"response": {"statusCode": code, "body": text, "headers": rheaders}}
        try:
            ok = bool(_expr.evaluate(str(cond), env))
        except _expr.ExprError as exc:
            run.finish(node, "Error", f"{where}: successCondition: {exc}", outputs)
            return
    else:
        ok = 200 <= code < 300
    run.finish(
        node,
        "Succeeded" if ok else "Failed",
        "" if ok else f"{url}: status code {code}" + (f" (successCondition {cond!r} is false)" if cond else ""),
        outputs,
    )
