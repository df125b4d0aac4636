"""redact_uri: no password survives, everything else does."""

from __future__ import annotations

import pytest

from scrapy_checkpoint._redact import redact_uri, scrub, secrets_of


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("redis://user:s3cret@cache.test:6379/0", "redis://user:***@cache.test:6379/0"),
        ("rediss://:s3cret@cache.test:6380", "rediss://:***@cache.test:6380"),
        ("redis://default:s3cret@127.0.0.1/2?socket_timeout=3", "redis://default:***@127.0.0.1/2?socket_timeout=3"),
        (
            "mongodb://app:s3cret@db1.test:27017,db2.test:27017,db3.test/shop?replicaSet=rs0&authSource=admin",
            "mongodb://app:***@db1.test:27017,db2.test:27017,db3.test/shop?replicaSet=rs0&authSource=admin",
        ),
        (
            "mongodb+srv://app:s3cret@cluster0.example.test/?retryWrites=true&w=majority",
            "mongodb+srv://app:***@cluster0.example.test/?retryWrites=true&w=majority",
        ),
        # Percent-encoded, and unescaped reserved characters that would split a naive parse.
        ("mongodb://app:s3%40cret@db.test/shop", "mongodb://app:***@db.test/shop"),
        ("redis://app:s3@c/r?et@cache.test:6379/0", "redis://app:***@cache.test:6379/0"),
        # Secrets in the query string.
        ("redis://cache.test/0?password=s3cret&db=1", "redis://cache.test/0?password=***&db=1"),
        (
            "mongodb://db.test/?tls=true&tlsCertificateKeyFilePassword=s3cret",
            "mongodb://db.test/?tls=true&tlsCertificateKeyFilePassword=***",
        ),
        (
            "mongodb://AKIA:s3cret@db.test/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:s3cret,SERVICE_NAME:db",
            "mongodb://AKIA:***@db.test/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:db",
        ),
        ("user:s3cret@cache.test:6379", "user:***@cache.test:6379"),
    ],
)
def test_password_hidden(uri, redacted):
    assert redact_uri(uri) == redacted


@pytest.mark.parametrize(
    "uri",
    [
        "redis://cache.test:6379/0",
        "redis://user@cache.test",  # a user name alone is no secret
        "mongodb://tokenserver.test:27017,passwordless.test/db?appName=secretary",
        "mongodb://x509user@db.test/?authMechanism=MONGODB-X509&tls=true",
        "/tmp/checkpoints.sqlite3",
    ],
)
def test_nothing_to_hide(uri):
    assert redact_uri(uri) == uri


def test_secrets_of_and_scrub():
    uri = "mongodb://app:p%40ss@h1,h2/db?tlsCertificateKeyFilePassword=k3y&w=1"
    secrets = secrets_of(uri)
    assert {"p%40ss", "p@ss", "k3y"} <= secrets
    message = "auth failed for app with p@ss (key k3y)"
    assert scrub(message, secrets) == "auth failed for app with *** (key ***)"
    assert secrets_of(None) == set() and secrets_of("redis://localhost:6379/0") == set()
