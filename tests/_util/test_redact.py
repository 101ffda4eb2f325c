"""redact(): secret-looking keys are masked, ordinary ML parameters are not, input is untouched."""

from __future__ import annotations

import copy

import pytest

from kiln._util.redact import MASK, is_secret_key, redact, redact_text


@pytest.mark.parametrize("key", [
    "token", "hf_token", "accessToken", "password", "db_password", "PASSWORD", "passwd", "secret",
    "client_secret", "clientSecret", "apiKey", "api_key", "APIKey", "x-api-key", "credentials",
    "Authorization", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "private_key", "sshKey", "cookie",
])
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "tokenizer", "max_tokens", "num_tokens", "key", "name", "passes", "secretKeyRef", "password_file",
    "token_env", "secretName", "credentials_path", "keyword", "monkey", "author",
])
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_nested_values_masked_and_input_untouched() -> None:
    doc = {
        "spec": {"hub": {"token": "hf_abc", "repo": "org/model"}, "tokenizer": "bert",
                 "auth": {"username": "u", "password": "p"},
                 "credentials": {"user": "u", "key": "k"}, "apiKey": None,
                 "steps": [{"env": {"WANDB_API_KEY": "w"}}, ("x", {"secret": 1})]},
        "url": "postgresql://kiln:pw@db:5432/kiln",
    }
    before = copy.deepcopy(doc)
    out = redact(doc)
    assert doc == before
    assert out == {
        "spec": {"hub": {"token": MASK, "repo": "org/model"}, "tokenizer": "bert",
                 "auth": {"username": "u", "password": MASK},
                 "credentials": MASK, "apiKey": None,  # None stays visible as "not set"
                 "steps": [{"env": {"WANDB_API_KEY": MASK}}, ["x", {"secret": MASK}]]},
        "url": "postgresql://kiln:***@db:5432/kiln",
    }


def test_urls_in_text() -> None:
    assert redact_text("clone https://bot:ghp_x@github.com/o/r failed") == \
        "clone https://bot:***@github.com/o/r failed"
    assert redact_text("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    for unchanged in ("https://github.com/o/r", "sqlite:////tmp/a.db", "user@host:22", "s3://bucket/k@v"):
        assert redact_text(unchanged) == unchanged
    assert redact(7) == 7 and redact(None) is None and redact([1.5, True]) == [1.5, True]
