"""The console's web application (Starlette) and its access rules.

- Read-only: GET and HEAD are answered; any other method is 405, before any page code runs.
- Bound to loopback by default. Another ``--host`` needs a token, checked as the deployments'
  are (``kiln.bento.auth``: only sha256 hashes are stored, compared in constant time): tokens
  made by ``kiln ui token`` (kept under ``CONSOLE_KEY`` in ``.kiln/serving/tokens.json``, so
  ``kiln deployments token revoke`` semantics apply) or the value of ``$KILN_UI_TOKEN``, hashed at
  start and taken out of the environment. A browser sends it once as ``?token=``: it is moved
  into an HttpOnly cookie and the address is reloaded without it (so it stays out of history).
- Who looks (#26): a request is for the user its token was made for (``kiln ui token --user``),
  else for the user the console is bound to (``kiln ui --as`` / ``$KILN_USER``), else for no one
  in particular: everything, an admin's view (a token made without ``--user``, ``$KILN_UI_TOKEN``).
  The pages show that user what ``kiln get --as`` shows (``kiln.api.access.Viewer``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.config import KilnConfig
from kiln.controller.console.pages import Reply, dispatch
from kiln.errors import KilnError

CONSOLE_KEY = "kiln/console"  # the token store's entry of the console (deployments are ws/name)
TOKEN_ENV = "KILN_UI_TOKEN"
COOKIE = "kiln_console"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Caller:
    """A request let in: ``user`` is whom it sees the console as (None: everything)."""

    user: str | None


class Access:
    """Who may look: everyone on loopback, else holders of a console token; and as whom."""

    def __init__(self, config: KilnConfig, host: str, env_token: str | None = None, user: str | None = None) -> None:
        from kiln.bento.auth import TokenChecker, TokenStore, default_token_file

        self.open = host in LOOPBACK
        self.user = user  # `kiln ui --as`: the user of requests whose token names none
        path = default_token_file(config.repo)
        self.env_hash = hashlib.sha256(env_token.encode()).digest() if env_token else None
        self.checker = TokenChecker(path, CONSOLE_KEY)
        if not self.open and self.env_hash is None and not any(not t["revoked"] for t in TokenStore(path).list(CONSOLE_KEY)):
            raise KilnError(
                f"kiln ui --host {host} would show the repository's state to the network without a token",
                hint=f"set ${TOKEN_ENV} (any long random value), or create one with "
                "`kiln ui token`; or leave --host out to stay on 127.0.0.1",
            )

    def caller(self, token: str | None) -> Caller | None:
        """Who sends ``token`` (None: refused). A stored token bound to a user is that user's view
        even on loopback, where no token is needed: the token decides, not where it comes from."""
        tid = self.checker.check(token) if token else None  # always run: timing says nothing of which matched
        env_ok = (
            bool(token)
            and self.env_hash is not None
            and hmac.compare_digest(hashlib.sha256(str(token).encode()).digest(), self.env_hash)
        )
        if tid is not None:
            return Caller(self.checker.user_of(tid) or self.user)
        if env_ok or self.open:
            return Caller(self.user)
        return None

    def allows(self, token: str | None) -> bool:
        return self.caller(token) is not None


def create_app(
    config: KilnConfig, host: str = "127.0.0.1", env_token: str | None = None, root: str = "", user: str | None = None
) -> Any:
    """The Starlette app of ``kiln ui`` (every path under ``root``); ``user``: whom a request is
    for when its token names no one (``kiln ui --as``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    access = Access(config, host, env_token, user)

    async def endpoint(request: Request) -> Response:
        if request.method not in READ_METHODS:
            return PlainTextResponse(
                "the kiln console is read-only: change the specs in git and apply\n",
                status_code=405,
                headers={"Allow": ", ".join(READ_METHODS)},
            )
        given = request.query_params.get("token")
        if given and access.allows(given):
            query = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items() if k != "token")
            back = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            back.set_cookie(COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https")
            return back
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        caller = access.caller(token)
        if caller is None:
            return PlainTextResponse(
                "the kiln console needs a token: open it once with ?token=<token> or send Authorization: Bearer <token>\n",
                status_code=401,
            )
        path = request.url.path[len(root) :] if root and request.url.path.startswith(root) else request.url.path
        reply = await _run(config, path, dict(request.query_params), root, caller.user)
        return Response(
            reply.body,
            status_code=reply.status,
            media_type=reply.ctype,
            headers={
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                # nothing loads from elsewhere: the pages need no network
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
            },
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # the others reach the 405 above
    middleware = []
    if access.open:
        # on loopback without a token, a web page elsewhere could still reach the console through a
        # DNS name rebound to 127.0.0.1: only the loopback names are answered
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"]))
    return Starlette(routes=[Route(root + "/{path:path}", endpoint, methods=methods)], middleware=middleware)


async def _run(config: KilnConfig, path: str, query: dict[str, str], root: str, user: str | None) -> Reply:
    """A page in a worker thread: the state store and the files are read synchronously."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(dispatch, config, path, query, root, user)


def serve(config: KilnConfig, host: str, port: int, announce: Callable[[str], None] = print, user: str | None = None) -> None:
    import uvicorn

    env_token = os.environ.pop(TOKEN_ENV, None) or None  # out of the environment: nothing below sees it
    app = create_app(config, host, env_token, user=user)  # refuses a --host without a token before anything listens
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    who = f" as {user}" if user else ""
    announce(f"kiln console on http://{shown}:{port}/{who} (read-only; Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
