"""Per-deployment API tokens: created once, stored hashed, revocable, checked in constant time.

A token is ``kiln_<id>_<secret>``: ``id`` (8 hex) names it in ``list``/``revoke`` and lets the
server find its record without trying every hash; ``secret`` is 256 random bits
(``secrets.token_urlsafe(32)``). Only ``sha256(token)`` is stored. A slow KDF (scrypt, pbkdf2)
protects *low-entropy* passwords from offline guessing; a 256-bit random secret cannot be guessed
either way, and the hash is checked on every request, where scrypt's milliseconds would cost more
than the model. The comparison uses ``hmac.compare_digest``.

Store file (``<repo>/.kiln/serving/tokens.json``, atomic replace, re-read by servers when its
mtime changes so a revocation takes effect within about a second without a restart)::

    {"<deployment>": {"<id>": {"sha256": "<hex>", "created": "...Z", "who": "...",
                               "revoked": null | "...Z"}}}

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow_seconds
from kiln._util.fs import write_json_atomic
from kiln.errors import NotFound

__all__ = ["TokenStore", "TokenChecker", "default_token_file", "hash_token", "ENV_PREFIX"]

# ids of tokens a Deployment spec takes from the environment (auth.tokens[].env): set by apply
ENV_PREFIX = "env-"


def default_token_file(repo: str | os.PathLike[str] | None = None) -> Path:
    return Path(repo or os.getcwd()).resolve() / ".kiln" / "serving" / "tokens.json"


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
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def create(self, deployment: str, who: str | None = None) -> str:
        """A new token for ``deployment``; the plaintext is returned once and never stored."""
        tid = secrets.token_hex(4)
        token = f"kiln_{tid}_{secrets.token_urlsafe(32)}"
        with self._locked() as data:
            data.setdefault(deployment, {})[tid] = {"sha256": hash_token(token), "created": utcnow_seconds(),
                                                    "who": who or os.environ.get("USER", "unknown"), "revoked": None}
        return token

    def list(self, deployment: str) -> list[dict[str, Any]]:
        recs = self.read().get(deployment, {})
        return [{"id": k, "created": v["created"], "who": v.get("who"), "revoked": v.get("revoked")}
                for k, v in sorted(recs.items(), key=lambda kv: kv[1]["created"])]

    def revoke(self, deployment: str, token_id: str) -> None:
        with self._locked() as data:
            rec = data.get(deployment, {}).get(token_id)
            if rec is None:
                ids = ", ".join(data.get(deployment, {})) or "none"
                raise NotFound(f"deployment {deployment} has no token {token_id}", hint=f"token ids: {ids}")
            rec["revoked"] = rec["revoked"] or utcnow_seconds()


    def set_env_tokens(self, deployment: str, hashes: dict[str, str]) -> None:
        """Replace ``deployment``'s environment tokens with ``hashes`` (``VAR`` -> sha256 hex):
        what a Deployment spec's ``auth.tokens[].env`` names, as of the latest apply."""
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
            data.get(deployment, {}).pop(token_id, None)


class TokenChecker:
    """Server side: ``check(token) -> token id or None``. Re-reads the store when it changes:
    stat at most once a second (so a revocation takes up to a second), and at once for a token id
    it does not know yet (so a new token works immediately)."""

    def __init__(self, path: str | os.PathLike[str], deployment: str) -> None:
        self.path, self.deployment = Path(path), deployment
        self._mtime: float | None = None
        self._next_stat = 0.0
        self._hashes: dict[str, bytes] = {}

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next_stat and not force:
            return
        self._next_stat = now + 1.0
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._hashes, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            recs = json.loads(self.path.read_text()).get(self.deployment, {})
        except (OSError, json.JSONDecodeError):
            return  # keep the last good set; a writer replaces the file atomically
        self._hashes = {k: bytes.fromhex(v["sha256"]) for k, v in recs.items() if not v.get("revoked")}
        self._mtime = mtime

    def check(self, token: str | None) -> str | None:
        if not token:
            return None
        self._refresh()
        parts = token.split("_", 2)
        tid = parts[1] if len(parts) == 3 and parts[0] == "kiln" else None
        if tid is None or tid not in self._hashes:
            # a token from the deployment spec's environment (auth.tokens[].env): any format,
            # stored as ``env-<VAR>`` by the Deployment handler; compared against each of them
            got = hashlib.sha256(token.encode()).digest()
            for k, h in self._hashes.items():
                if k.startswith(ENV_PREFIX) and hmac.compare_digest(got, h):
                    return k
        if tid is not None and tid not in self._hashes:
            self._refresh(force=True)  # a token created a moment ago works at once (one stat)
        want = self._hashes.get(tid) if tid is not None else None
        got = hashlib.sha256(token.encode()).digest()
        # compare even when the id is unknown, so timing does not tell ids apart
        ok = hmac.compare_digest(got, want if want is not None else b"\0" * 32)
        return parts[1] if ok and want is not None else None
