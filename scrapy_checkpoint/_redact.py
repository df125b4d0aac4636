"""Connection URIs with their credentials hidden, for logs, stats and exception messages."""

from __future__ import annotations

import re
from urllib.parse import unquote

# Secrets in the query string: redis-py's password=, MongoDB's tlsCertificateKeyFilePassword=,
# and AWS_SESSION_TOKEN:... inside MongoDB's authMechanismProperties=.
_SECRET_PARAM = re.compile(r"((?:^|[&;])[^=&;#]*(?:password|secret|token)[^=&;#]*=)[^&;#]*", re.I)
_SECRET_PROPERTY = re.compile(r"((?:password|secret|token)[^=:,&;#]*:)[^,&;#]*", re.I)


def redact_uri(uri: str) -> str:
    """*uri* with every password replaced by ``***``; the user name and hosts stay.

    ``mongodb://user:pw@a:27017,b:27017/db`` becomes ``mongodb://user:***@a:27017,b:27017/db``.
    Everything before the last ``@`` counts as credentials, so a password with unescaped
    ``@``, ``/`` or ``?`` is hidden whole rather than cut in two.
    """
    scheme, userinfo, rest = _split_userinfo(uri)
    user, colon, _ = userinfo.partition(":")
    if colon:
        rest = f"{user}:***@{rest}"
    elif userinfo:
        rest = f"{userinfo}@{rest}"
    head, question, query = rest.partition("?")
    query = _SECRET_PROPERTY.sub(r"\1***", _SECRET_PARAM.sub(r"\1***", query))
    return scheme + head + question + query


def strip_userinfo(uri: str) -> str:
    """*uri* without ``user:password@``: ``http://u:p@host:8080`` becomes ``http://host:8080``
    (a password with an unescaped ``@`` or ``/`` goes whole, as in :func:`redact_uri`)."""
    scheme, _, rest = _split_userinfo(uri)
    return scheme + rest


def _split_userinfo(uri: str) -> tuple[str, str, str]:
    """``(scheme://, user:password, the rest)``; everything before the last ``@`` counts as
    the user information."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    userinfo, _, rest = rest.rpartition("@")
    return scheme + sep, userinfo, rest


_SECRET_VALUE = re.compile(r"(?:password|secret|token)[^=:,&;#]*[=:]([^,&;#]+)", re.I)


def secrets_of(uri: str | None) -> set[str]:
    """The secrets *uri* holds (password, secret query values), raw and unquoted."""
    if not uri:
        return set()
    rest = uri.partition("://")[2] or uri
    userinfo, at, hosts = rest.rpartition("@")
    found = set(_SECRET_VALUE.findall(hosts.partition("?")[2]))
    if at and ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    return {s for secret in found for s in (secret, unquote(secret)) if s}


def scrub(text: str, secrets: set[str]) -> str:
    """*text* (an exception message, say) with every one of *secrets* replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
