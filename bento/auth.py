"""Per-deployment API tokens: created once, stored hashed, revocable, checked in constant time.

A token is ``kiln_<id>_<secret>``: ``id`` (8 hex) names it in ``list``/``revoke`` and lets the
server find its record without trying every hash; ``secret`` is 256 random bits
(``secrets.token_urlsafe(32)``). Only ``sha256(token)`` is stored. A slow KDF (scrypt, pbkdf2)
protects *low-entropy* passwords from offline guessing; a 256-bit random secret cannot be guessed
either way, and the hash is checked on every request, where scrypt's milliseconds would cost more
than the model. The comparison uses ``hmac.compare_digest``.

Store file (``<repo>/.kiln/serving/tokens.json``, atomic replace, re-read by servers when its
mtime changes, so a revocation takes effect at the next request without a restart)::

    {"<workspace>/<deployment>": {"<id>": {"sha256": "<hex>", "created": "...Z", "who": "...",
                                           "revoked": null | "...Z", "user"?: "..."}}}

``who`` is who made the token (the OS user, or ``env VAR``); ``user``, only where given, is the
user the token acts as (the console's tokens bound to an e-mail, #26): tokens without one keep
the meaning they had.

Tokens belong to one deployment of one workspace: ``team2/wine`` never accepts a token of
``default/wine``. A bare name means the default workspace, as everywhere in kiln (``Kind/name``);
files written before tokens were keyed by workspace are read that way.

Tokens never reach a log: the server logs token ids at most, and only ``create`` returns a secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow_seconds
from kiln._util.fs import write_json_atomic
from kiln.errors import NotFound

__all__ = ["TokenStore", "TokenChecker", "default_token_file", "deployment_key", "hash_token", "ENV_PREFIX"]

# ids of tokens a Deployment spec takes from the environment (auth.tokens[].env): set by apply
ENV_PREFIX = "env-"


def default_token_file(repo: str | os.PathLike[str] | None = None) -> Path:
    return Path(repo or os.getcwd()).resolve() / ".kiln" / "serving" / "tokens.json"


def deployment_key(deployment: str, workspace: str | None = None) -> str:
    """``workspace/name`` of a deployment: ``("wine", "team2")``, ``"team2/wine"`` and, for the
    default workspace, a bare ``"wine"`` all name it."""
    if "/" in deployment:
        return deployment
    return f"{workspace or 'default'}/{deployment}"


def _normalized(data: dict[str, Any]) -> dict[str, Any]:
    """The store keyed by ``workspace/name``; entries of files written before (bare names) belong
    to the default workspace, merged under any newer entry of the same deployment."""
    if all("/" in k for k in data):
        return data
    out: dict[str, Any] = {}
    for k, recs in data.items():
        merged = out.setdefault(deployment_key(k), {})
        for tid, rec in recs.items():
            merged.setdefault(tid, rec)
    return out


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create / list / revoke tokens of deployments (CLI side)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_token_file()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            data = self.read()
            yield data
            # insertion order = creation order; 0600: the hashes are what a server checks against
            write_json_atomic(self.path, data, sort_keys=False, fsync=True, mkdir=False, mode=0o600)

    def read(self) -> dict[str, Any]:
        try:
            return _normalized(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}

    def create(self, deployment: str, who: str | None = None, user: str | None = None) -> str:
        """A new token for ``deployment``; the plaintext is returned once and never stored.
        ``user``: whom the token acts as (recorded only when given)."""
        tid = secrets.token_hex(4)
        token = f"kiln_{tid}_{secrets.token_urlsafe(32)}"
        deployment = deployment_key(deployment)
        rec = {"sha256": hash_token(token), "created": utcnow_seconds(),
               "who": who or os.environ.get("USER", "unknown"), "revoked": None}
        if user:
            rec["user"] = user
        with self._locked() as data:
            data.setdefault(deployment, {})[tid] = rec
        return token

    def list(self, deployment: str) -> list[dict[str, Any]]:
        recs = self.read().get(deployment_key(deployment), {})
        return [{"id": k, "created": v["created"], "who": v.get("who"), "revoked": v.get("revoked"), "user": v.get("user")}
                for k, v in sorted(recs.items(), key=lambda kv: kv[1]["created"])]

    def revoke(self, deployment: str, token_id: str) -> None:
        deployment = deployment_key(deployment)
        with self._locked() as data:
            rec = data.get(deployment, {}).get(token_id)
            if rec is None:
                ids = ", ".join(data.get(deployment, {})) or "none"
                raise NotFound(f"deployment {deployment} has no token {token_id}", hint=f"token ids: {ids}")
            rec["revoked"] = rec["revoked"] or utcnow_seconds()


    def set_env_tokens(self, deployment: str, hashes: dict[str, str]) -> None:
        """Replace ``deployment``'s environment tokens with ``hashes`` (``VAR`` -> sha256 hex):
        what a Deployment spec's ``auth.tokens[].env`` names, as of the latest apply."""
        deployment = deployment_key(deployment)
        with self._locked() as data:
            recs = data.setdefault(deployment, {})
            for k in [k for k in recs if k.startswith(ENV_PREFIX)]:
                if k[len(ENV_PREFIX):] not in hashes or recs[k]["sha256"] != hashes[k[len(ENV_PREFIX):]]:
                    del recs[k]
            for var, h in hashes.items():
                recs.setdefault(f"{ENV_PREFIX}{var}", {"sha256": h, "created": utcnow_seconds(), "who": f"env {var}",
                                                       "revoked": None})

    def forget(self, deployment: str, token_id: str) -> None:
        """Drop a token's record entirely (short-lived internal tokens, e.g. a smoke test's)."""
        with self._locked() as data:
            data.get(deployment_key(deployment), {}).pop(token_id, None)

    def drop(self, deployment: str) -> int:
        """Remove every token of ``deployment`` (it was deleted); how many there were. A
        deployment created again under the same name starts without tokens."""
        with self._locked() as data:
            return len(data.pop(deployment_key(deployment), None) or {})


class TokenChecker:
    """Server side: ``check(token) -> token id or None``. Every check stats the store (about a
    microsecond) and re-reads it when it changed, so a new token works and a revoked one stops at
    once. Every check does the same work whether or not the token's id exists (the stat, one hash,
    a compare against each environment token and one against the id's hash or a dummy), so its
    timing does not tell an attacker which ids exist."""

    def __init__(self, path: str | os.PathLike[str], deployment: str) -> None:
        self.path, self.deployment = Path(path), deployment_key(deployment)
        self._mtime: float | None = None
        self._hashes: dict[str, bytes] = {}
        self._users: dict[str, str] = {}  # token id -> the user it acts as, where it names one

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._hashes, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            recs = _normalized(json.loads(self.path.read_text())).get(self.deployment, {})
        except (OSError, json.JSONDecodeError):
            return  # keep the last good set; a writer replaces the file atomically
        self._hashes = {k: bytes.fromhex(v["sha256"]) for k, v in recs.items() if not v.get("revoked")}
        self._users = {k: v["user"] for k, v in recs.items() if isinstance(v.get("user"), str) and k in self._hashes}
        self._mtime = mtime

    def user_of(self, token_id: str) -> str | None:
        """The user a token (by the id ``check`` returned) acts as; None where it names none."""
        return self._users.get(token_id)

    def check(self, token: str | None) -> str | None:
        if not token:
            return None
        self._refresh()
        parts = token.split("_", 2)
        tid = parts[1] if len(parts) == 3 and parts[0] == "kiln" else None
        got = hashlib.sha256(token.encode()).digest()
        # a token from the deployment spec's environment (auth.tokens[].env): any format, stored
        # as ``env-<VAR>`` by the Deployment handler; compared against each of them, every time
        env_match = None
        for k, h in self._hashes.items():
            if k.startswith(ENV_PREFIX) and hmac.compare_digest(got, h) and env_match is None:
                env_match = k
        want = self._hashes.get(tid) if tid is not None and not tid.startswith(ENV_PREFIX) else None
        # compare even when the id is unknown, so timing does not tell ids apart
        ok = hmac.compare_digest(got, want if want is not None else _DUMMY)
        if env_match is not None:
            return env_match
        return tid if ok and want is not None else None


_DUMMY = b"\0" * 32
