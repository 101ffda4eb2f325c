"""Keep secrets out of everything kiln persists or prints.

kiln writes specs, inventories, handler status and step outputs to the state store, and those
documents can carry credentials (an ``apiKey`` for Label Studio, a ``password`` in a DSN block, a
token pasted into a spec by mistake). The store calls :func:`redact` on every dict it writes, so a
secret never reaches disk or PostgreSQL even when a handler forgets.

What counts as secret, by key name (split into words: ``apiKey`` -> ``api key``,
``AWS_SECRET_ACCESS_KEY`` -> ``aws secret access key``):

* a word from :data:`SECRET_WORDS` (``token``, ``password``, ``secret``, ``credentials``,
  ``authorization``, ...), or an adjacent pair from :data:`SECRET_PAIRS` (``api key``,
  ``access key``, ``private key`` ...);
* except when the last word says the value is a *reference* to a secret rather than the secret
  (``secretKeyRef``, ``password_file``, ``token_env``, ``secretName``): see :data:`REFERENCE_SUFFIXES`.
  Those are needed to diff and re-apply a spec and are harmless.

Whole words, not substrings: ``tokenizer`` and ``max_tokens`` are ordinary ML parameters.
The value of a secret key is replaced by ``"***"`` whatever its type (a nested ``credentials:``
mapping goes as a whole); ``None`` stays ``None`` so "not set" remains visible.

Strings anywhere are also scrubbed of URL passwords (``postgresql://u:pw@h/db`` ->
``postgresql://u:***@h/db``), since DSNs end up in messages and inventories.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "SECRET_WORDS", "SECRET_PAIRS", "REFERENCE_SUFFIXES", "is_secret_key",
           "redact", "redact_text"]

MASK = "***"

SECRET_WORDS = frozenset({
    "token", "password", "passwd", "pwd", "passphrase", "secret", "secrets", "credential",
    "credentials", "authorization", "apikey", "cookie", "bearer", "privatekey", "accesskey",
    "secretkey", "sessionkey",
})
SECRET_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"),
    ("session", "key"), ("ssh", "key"), ("signing", "key"), ("encryption", "key"), ("client", "secret"),
})
REFERENCE_SUFFIXES = frozenset({"ref", "refs", "from", "file", "path", "env", "name", "names"})

_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
# scheme://user:password@host  (password = anything up to the last '@' before the host part)
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^\s/]+(@)")

_cache: dict[str, bool] = {}


def _words(key: str) -> list[str]:
    key = _CAMEL_2.sub(r"\1 \2", _CAMEL_1.sub(r"\1 \2", key))
    return [w for w in _NON_ALNUM.split(key.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a secret value (see the module docstring for the rule)."""
    hit = _cache.get(key)
    if hit is not None:
        return hit
    words = _words(key)
    hit = bool(words) and words[-1] not in REFERENCE_SUFFIXES and (
        any(w in SECRET_WORDS for w in words)
        or any(pair in SECRET_PAIRS for pair in zip(words, words[1:]))
    )
    if len(_cache) < 4096:  # keys repeat across thousands of specs; bound the memo anyway
        _cache[key] = hit
    return hit


def redact_text(text: str) -> str:
    """Hide the password part of any URL in ``text``."""
    if "://" not in text:
        return text
    return _URL_USERINFO.sub(rf"\1{MASK}\2", text)


def redact(obj: Any) -> Any:
    """Return a copy of a JSON-like value with secret values replaced by ``"***"``.

    Never mutates ``obj``. Dicts, lists and tuples are walked; tuples come back as lists (the
    result is meant for JSON). Non-string keys are kept as they are.
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and v is not None and is_secret_key(k):
                out[k] = MASK
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
