"""Checkpoint settings: every default, and every rule, in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured
from scrapy.utils.project import data_path

from ._redact import redact_uri

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

DEFAULTS: dict[str, Any] = {
    "CHECKPOINT_ENABLED": False,
    "CHECKPOINT_RESUME": False,
    "CHECKPOINT_ID": None,
    "CHECKPOINT_DIR": None,
    "CHECKPOINT_FLUSH_INTERVAL": 2.0,
    "CHECKPOINT_BATCH_SIZE": 500,
    "CHECKPOINT_TTL": 48 * 3600.0,
    "CHECKPOINT_STORE_ITEMS": False,
    "CHECKPOINT_ITEM_EXCLUDE_FIELDS": [],
    "CHECKPOINT_PAGE_PARAMS": ["page"],
    # Credentials left out of stored requests; Cookie covers Request.cookies too, and
    # Proxy-Authorization the user:password in meta["proxy"].
    "CHECKPOINT_PRIVATE_HEADERS": ["Authorization", "Proxy-Authorization", "Cookie"],
    # HttpAuthMiddleware's per-request credentials.
    "CHECKPOINT_PRIVATE_META": ["http_user", "http_pass"],
    "CHECKPOINT_RESEED_CHUNK": 1000,
    "CHECKPOINT_STORE_TIMEOUT": 5.0,
    "CHECKPOINT_REDIS_URL": None,
    "CHECKPOINT_REDIS_PREFIX": "checkpoint",
    "CHECKPOINT_MONGO_URI": None,
    "CHECKPOINT_MONGO_DATABASE": "scrapy_checkpoint",
    "CHECKPOINT_ARCHIVE_TTL": 30 * 24 * 3600.0,
    # Seconds between two progress lines in the log (like LOGSTATS_INTERVAL); 0: none.
    "CHECKPOINT_LOG_INTERVAL": 60.0,
    # scrapy-redis workers: seconds a popped request stays leased to a worker that stopped
    # renewing it (it died) before it goes back to the shared queue.
    "CHECKPOINT_LEASE_TIMEOUT": 60.0,
    "CHECKPOINT_BUFFER_LIMIT": 100_000,
    # {site domain: {"flush_interval": seconds, "batch_size": events}}: a site's own limits.
    "CHECKPOINT_SITE_LIMITS": {},
    # CheckpointMongoDBPipeline: None falls back to CHECKPOINT_MONGO_URI / _DATABASE.
    "CHECKPOINT_MONGO_ITEMS_URI": None,
    "CHECKPOINT_MONGO_ITEMS_DATABASE": None,
    "CHECKPOINT_MONGO_ITEMS_COLLECTION": "items",
    # /metrics for Prometheus (the [prometheus] extra): None serves none.
    "CHECKPOINT_PROMETHEUS_PORT": None,
    "CHECKPOINT_PROMETHEUS_ADDRESS": "127.0.0.1",
    "CHECKPOINT_PROMETHEUS_PUSHGATEWAY": None,
    # Bytes the store may use, for scrapy_checkpoint_storage_used_ratio; None: the free disk
    # space (SQLite) or Redis maxmemory.
    "CHECKPOINT_STORAGE_LIMIT": None,
    # `scrapy query`: the key user ids are hashed with before they are stored (None: the
    # environment variable below, else no user id can be stored).
    "CHECKPOINT_QUERY_SECRET": None,
    # `scrapy query`: item fields to read for a conventional name, before the conventional
    # fields themselves, e.g. {"price": "cost", "title": ["headline", "label"]}.
    "CHECKPOINT_QUERY_FIELDS": {},
}

#: The scheduler of scrapy-redis, whose queue workers on several machines share.
REDIS_SCHEDULER = "scrapy_redis.scheduler.Scheduler"

#: The environment variable that turns checkpoints on, like CHECKPOINT_ENABLED.
ENV_SWITCH = "ENABLE_CHECKPOINTS"
#: The environment variable CHECKPOINT_QUERY_SECRET falls back to.
QUERY_SECRET_ENV = "SCRAPY_CHECKPOINT_QUERY_SECRET"
_TRUE = {"1", "true", "yes", "on"}


def is_enabled(settings: BaseSettings) -> bool:
    """Whether the switch is on, in settings or in the environment."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in _TRUE:
        return True
    return settings.getbool("CHECKPOINT_ENABLED", DEFAULTS["CHECKPOINT_ENABLED"])


def checkpoints_on(crawler: Crawler) -> bool:
    """Whether the crawl runs with checkpoints: the switch is on and the spider opted in."""
    return is_enabled(crawler.settings) and bool(getattr(crawler.spidercls, "checkpoint_enabled", False))


def object_path(value: Any) -> str:
    """A class setting as its import path, whether given as a path or as the class."""
    if isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"


def shares_a_scheduler(settings: BaseSettings) -> bool:
    """Whether SCHEDULER is scrapy-redis's: a queue shared by workers, maybe on several machines."""
    return object_path(settings.get("SCHEDULER")) == REDIS_SCHEDULER


def _get(settings: BaseSettings, name: str) -> Any:
    value = settings.get(name)
    return DEFAULTS[name] if value is None else value


def _positive(settings: BaseSettings, name: str, kind: type, unit: str) -> Any:
    raw = _get(settings, name)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(raw, bool) or value <= 0 or value != value:
        raise ValueError(
            f"{name} ({raw!r}) must be a positive {unit}. Set it to e.g. {DEFAULTS[name]!r}."
        )
    return value


def _seconds_or_zero(settings: BaseSettings, name: str, zero: str) -> float:
    """A number of seconds, or 0 for *zero* (what 0 means: "keep forever")."""
    raw = _get(settings, name)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(raw, bool) or value < 0 or value != value:
        raise ValueError(
            f"{name} ({raw!r}) must be 0 ({zero}) or a positive number of seconds. "
            f"Set it to e.g. {DEFAULTS[name]!r}."
        )
    return value


def _bool(settings: BaseSettings, name: str) -> bool:
    try:
        return settings.getbool(name, DEFAULTS[name])
    except ValueError:
        raise ValueError(
            f"{name} ({settings.get(name)!r}) must be a boolean: True/False, 1/0 or true/false."
        ) from None


# RFC 9110 5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _names(
    settings: BaseSettings, name: str, what: str, example: list[str], pattern: re.Pattern[str] | None = None
) -> tuple[str, ...]:
    """A list setting of names: a list, or a comma-separated string as ``-s`` gives it."""
    try:
        values = settings.getlist(name, DEFAULTS[name])
    except TypeError:  # not iterable
        values = [None]
    if not all(isinstance(v, str) and v and (pattern is None or pattern.fullmatch(v)) for v in values):
        raise ValueError(
            f"{name} ({settings.get(name)!r}) must be a list of {what}, e.g. {example!r}, "
            "or [] to leave none out."
        )
    return tuple(values)


#: What CHECKPOINT_SITE_LIMITS may set per site, and the kind of each.
SITE_LIMITS = {"flush_interval": (float, "number of seconds"), "batch_size": (int, "whole number of events")}


def _site_limits(settings: BaseSettings) -> dict[str, dict[str, Any]]:
    name = "CHECKPOINT_SITE_LIMITS"
    try:
        raw = settings.getdict(name)
    except (TypeError, ValueError):
        raw = None
    example = '{"shop.example": {"flush_interval": 10, "batch_size": 2000}}'
    if raw is None or not all(isinstance(site, str) and isinstance(v, dict) for site, v in raw.items()):
        raise ValueError(f"{name} ({settings.get(name)!r}) must map site domains to limits, e.g. {example}.")
    limits: dict[str, dict[str, Any]] = {}
    for site, values in raw.items():
        limits[site] = {}
        for key, value in values.items():
            if key not in SITE_LIMITS:
                raise ValueError(
                    f"{name} ({site!r}: {key!r}) sets an unknown limit: use {' or '.join(SITE_LIMITS)}."
                )
            kind, unit = SITE_LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or kind(value) != value:
                raise ValueError(f"{name} ({site!r}: {key!r}: {value!r}) must be a positive {unit}.")
            limits[site][key] = kind(value)
    return limits


def _query_fields(settings: BaseSettings) -> dict[str, tuple[str, ...]]:
    name = "CHECKPOINT_QUERY_FIELDS"
    try:
        raw = settings.getdict(name)
    except (TypeError, ValueError):
        raw = None
    fields: dict[str, tuple[str, ...]] = {}
    for key, value in (raw or {}).items():
        names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else ()
        if isinstance(key, str) and key and names and all(isinstance(n, str) and n for n in names):
            fields[key] = names
            continue
        raw = None
        break
    if raw is None:
        raise ValueError(f"{name} ({settings.get(name)!r}) must map conventional names (price, title, "
                         'color...) to item field names, e.g. {"price": "cost", "title": ["headline", "label"]}.')
    return fields


def _optional_str(settings: BaseSettings, name: str) -> str | None:
    value = settings.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} ({value!r}) must be a string.")
    return value


def _optional_int(
    settings: BaseSettings, name: str, low: int, high: int | None, rule: str, example: int
) -> int | None:
    """An optional whole number in [low, high]; None or "" leaves it unset."""
    raw = settings.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if (value is None or isinstance(raw, bool) or (isinstance(raw, float) and raw != value)
            or value < low or (high is not None and value > high)):
        raise ValueError(f"{name} ({raw!r}) must be {rule}. Set it to e.g. {example!r}, or None.")
    return value


def query_secret(settings: BaseSettings) -> str | None:
    """CHECKPOINT_QUERY_SECRET, else the environment variable SCRAPY_CHECKPOINT_QUERY_SECRET;
    None when neither is set. Also for commands that run without checkpoints on. A bad value
    is described, never shown: it is a secret."""
    name, secret = "CHECKPOINT_QUERY_SECRET", settings.get("CHECKPOINT_QUERY_SECRET")
    if secret is None or secret == "":
        name, secret = f"The environment variable {QUERY_SECRET_ENV}", os.environ.get(QUERY_SECRET_ENV) or None
    if secret is None:
        return None
    what = f"of type {type(secret).__name__}" if not isinstance(secret, str) else "blank" if not secret.strip() else None
    if what is not None:
        raise ValueError(
            f"{name} ({what}) must be a long random string, e.g. the output of: "
            "python -c 'import secrets; print(secrets.token_hex(32))'; or unset, to store no user ids."
        )
    return secret


def _prometheus(settings: BaseSettings) -> tuple[int | None, str, str | None]:
    port = _optional_int(settings, "CHECKPOINT_PROMETHEUS_PORT", 1, 65535, "a TCP port, 1 to 65535", 9410)
    address = _get(settings, "CHECKPOINT_PROMETHEUS_ADDRESS")
    if not isinstance(address, str) or not address.strip():
        raise ValueError(
            f"CHECKPOINT_PROMETHEUS_ADDRESS ({address!r}) must be the address to serve /metrics "
            "on, e.g. '127.0.0.1'."
        )
    gateway = _optional_str(settings, "CHECKPOINT_PROMETHEUS_PUSHGATEWAY")
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise ValueError(
            f"CHECKPOINT_PROMETHEUS_PUSHGATEWAY ({redact_uri(gateway)!r}) must be an http:// or "
            "https:// URL, e.g. 'http://127.0.0.1:9091'."
        )
    return port, address.strip(), gateway


@dataclass(frozen=True)
class CheckpointSettings:
    """Validated CHECKPOINT_* settings, read once at startup."""

    resume: bool
    checkpoint_id: str | None
    directory: Path
    flush_interval: float
    batch_size: int
    ttl: float
    store_items: bool
    #: Fields left out of the items stored with CHECKPOINT_STORE_ITEMS.
    item_exclude_fields: tuple[str, ...]
    page_params: tuple[str, ...]
    #: Headers left out of stored requests, as given (RequestSerializer normalizes them).
    private_headers: tuple[str, ...]
    #: Meta keys left out of stored requests.
    private_meta: tuple[str, ...]
    reseed_chunk: int
    store_timeout: float
    redis_url: str | None
    redis_prefix: str
    mongo_uri: str | None
    mongo_database: str
    archive_ttl: float
    buffer_limit: int
    #: Seconds between two progress lines; 0: none.
    log_interval: float
    #: Seconds a scrapy-redis lease outlives its worker's last heartbeat.
    lease_timeout: float
    #: Flush interval and batch size of particular sites, over the two above.
    site_limits: dict[str, dict[str, Any]]
    #: The port of /metrics; None: no metrics served.
    prometheus_port: int | None = None
    prometheus_address: str = "127.0.0.1"
    prometheus_pushgateway: str | None = None
    #: Bytes the store may use; None: measured (disk space, Redis maxmemory) where it can be.
    storage_limit: int | None = None
    #: The key of stored user ids (queries.privacy.user_key); never in a repr or a log.
    query_secret: str | None = field(default=None, repr=False)
    #: CHECKPOINT_QUERY_FIELDS: item fields read first for each conventional name.
    query_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def for_site(self, site: str) -> CheckpointSettings:
        """These settings with *site*'s own CHECKPOINT_SITE_LIMITS, if it has any."""
        return replace(self, **self.site_limits.get(site, {}))

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> CheckpointSettings:
        """Validate; raise bare NotConfigured when off, ValueError when invalid."""
        if not is_enabled(settings):
            raise NotConfigured
        checkpoint_id = _optional_str(settings, "CHECKPOINT_ID")
        directory = _optional_str(settings, "CHECKPOINT_DIR")
        page_params = settings.getlist("CHECKPOINT_PAGE_PARAMS", DEFAULTS["CHECKPOINT_PAGE_PARAMS"])
        if not all(isinstance(p, str) and p for p in page_params):
            raise ValueError(
                f"CHECKPOINT_PAGE_PARAMS ({page_params!r}) must be a list of query parameter names."
            )
        prefix = _optional_str(settings, "CHECKPOINT_REDIS_PREFIX") or DEFAULTS["CHECKPOINT_REDIS_PREFIX"]
        database = _optional_str(settings, "CHECKPOINT_MONGO_DATABASE") or DEFAULTS["CHECKPOINT_MONGO_DATABASE"]
        prometheus_port, prometheus_address, prometheus_pushgateway = _prometheus(settings)
        redis_url = _optional_str(settings, "CHECKPOINT_REDIS_URL")
        resume = _bool(settings, "CHECKPOINT_RESUME") or checkpoint_id is not None
        mongo_uri = _optional_str(settings, "CHECKPOINT_MONGO_URI")
        if checkpoint_id is not None and shares_a_scheduler(settings):
            raise ValueError(
                f"CHECKPOINT_ID ({checkpoint_id!r}) cannot be used when SCHEDULER is {REDIS_SCHEDULER}: "
                "the workers of a crawl share the checkpoint their job's live workers write to. Start "
                "them with -s CHECKPOINT_RESUME=1 to go on with the newest resumable one."
            )
        if redis_url is None and shares_a_scheduler(settings):
            raise ValueError(
                f"CHECKPOINT_REDIS_URL (None) must be set when SCHEDULER is {REDIS_SCHEDULER}: its "
                "workers share one queue, and their checkpoints must be where every worker reaches "
                "them, not in one machine's SQLite file (or MongoDB alone). Set it to e.g. the "
                "REDIS_URL of scrapy-redis."
            )
        return cls(
            resume=resume,
            checkpoint_id=checkpoint_id,
            directory=Path(directory) if directory else Path(data_path("checkpoints", createdir=False)),
            flush_interval=_positive(settings, "CHECKPOINT_FLUSH_INTERVAL", float, "number of seconds"),
            batch_size=_positive(settings, "CHECKPOINT_BATCH_SIZE", int, "whole number of events"),
            ttl=_positive(settings, "CHECKPOINT_TTL", float, "number of seconds"),
            store_items=_bool(settings, "CHECKPOINT_STORE_ITEMS"),
            item_exclude_fields=_names(settings, "CHECKPOINT_ITEM_EXCLUDE_FIELDS", "item field names",
                                       ["email", "phone"]),
            page_params=tuple(page_params),
            private_headers=_names(settings, "CHECKPOINT_PRIVATE_HEADERS",
                                   "HTTP header names (letters, digits and !#$%&'*+-.^_`|~)",
                                   DEFAULTS["CHECKPOINT_PRIVATE_HEADERS"], _HEADER_NAME),
            private_meta=_names(settings, "CHECKPOINT_PRIVATE_META", "request meta keys",
                                DEFAULTS["CHECKPOINT_PRIVATE_META"]),
            reseed_chunk=_positive(settings, "CHECKPOINT_RESEED_CHUNK", int, "whole number of requests"),
            store_timeout=_positive(settings, "CHECKPOINT_STORE_TIMEOUT", float, "number of seconds"),
            redis_url=redis_url,
            redis_prefix=prefix,
            mongo_uri=mongo_uri,
            mongo_database=database,
            archive_ttl=_seconds_or_zero(settings, "CHECKPOINT_ARCHIVE_TTL", "keep forever"),
            log_interval=_seconds_or_zero(settings, "CHECKPOINT_LOG_INTERVAL", "no progress line"),
            lease_timeout=_positive(settings, "CHECKPOINT_LEASE_TIMEOUT", float, "number of seconds"),
            buffer_limit=_positive(settings, "CHECKPOINT_BUFFER_LIMIT", int, "whole number of events"),
            site_limits=_site_limits(settings),
            prometheus_port=prometheus_port,
            prometheus_address=prometheus_address,
            prometheus_pushgateway=prometheus_pushgateway,
            storage_limit=_optional_int(settings, "CHECKPOINT_STORAGE_LIMIT", 1, None,
                                        "a positive whole number of bytes", 10 * 2**30),
            query_secret=query_secret(settings),
            query_fields=_query_fields(settings),
        )


_MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")
# https://www.mongodb.com/docs/manual/reference/limits/#naming-restrictions
_DATABASE_FORBIDDEN = '/\\. "$'


@dataclass(frozen=True)
class MongoItemsSettings:
    """Validated settings of CheckpointMongoDBPipeline, read once at startup.

    Independent of CHECKPOINT_ENABLED: the pipeline also runs with checkpoints off.
    """

    uri: str
    #: The setting *uri* came from, for error messages.
    uri_setting: str
    database: str
    collection: str
    timeout: float

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> MongoItemsSettings:
        """Validate; raise ValueError when the pipeline cannot work with them."""
        uri_setting = "CHECKPOINT_MONGO_ITEMS_URI"
        uri = _optional_str(settings, uri_setting)
        if uri is None:
            uri_setting = "CHECKPOINT_MONGO_URI"
            uri = _optional_str(settings, uri_setting)
        if uri is None:
            raise ValueError(
                f"CHECKPOINT_MONGO_ITEMS_URI ({settings.get('CHECKPOINT_MONGO_ITEMS_URI')!r}) and "
                f"CHECKPOINT_MONGO_URI ({settings.get('CHECKPOINT_MONGO_URI')!r}) are both unset: "
                "CheckpointMongoDBPipeline needs a MongoDB URI. Set CHECKPOINT_MONGO_ITEMS_URI "
                "(e.g. 'mongodb://127.0.0.1:27017'), or remove the pipeline from ITEM_PIPELINES."
            )
        if not uri.startswith(_MONGO_SCHEMES):
            raise ValueError(
                f"{uri_setting} ({redact_uri(uri)!r}) must be a MongoDB URI starting with "
                "'mongodb://' or 'mongodb+srv://'."
            )
        database_setting = "CHECKPOINT_MONGO_ITEMS_DATABASE"
        database = _optional_str(settings, database_setting)
        if database is None:
            database_setting = "CHECKPOINT_MONGO_DATABASE"
            database = _optional_str(settings, database_setting) or DEFAULTS[database_setting]
        if any(c in database for c in _DATABASE_FORBIDDEN) or len(database.encode()) >= 64:
            raise ValueError(
                f"{database_setting} ({database!r}) must be a MongoDB database name: fewer than "
                "64 bytes, none of / \\ . \" $ or a space."
            )
        collection = (_optional_str(settings, "CHECKPOINT_MONGO_ITEMS_COLLECTION")
                      or DEFAULTS["CHECKPOINT_MONGO_ITEMS_COLLECTION"])
        if "$" in collection or "\0" in collection or collection.startswith("system."):
            raise ValueError(
                f"CHECKPOINT_MONGO_ITEMS_COLLECTION ({collection!r}) must be a MongoDB collection "
                "name: no '$', no NUL character, not starting with 'system.'."
            )
        return cls(
            uri=uri,
            uri_setting=uri_setting,
            database=database,
            collection=collection,
            timeout=_positive(settings, "CHECKPOINT_STORE_TIMEOUT", float, "number of seconds"),
        )
