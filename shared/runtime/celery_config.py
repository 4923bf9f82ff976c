"""The Celery configuration of every mmsearch process: JSON only, late acks, prefetch 1, routes,
no result backend (a job's state and a search's answer live in mmsearch's own keys).

The workers build their app with `make_celery(settings, include=...)`; the API and the stack
supervisor build a client the same way and send tasks by name (shared.store.queues), so no
process imports another role's code to learn how to talk to it.
"""
from __future__ import annotations

from typing import Sequence

from celery import Celery

from shared.runtime.config import Settings
from shared.runtime.redis_conn import redis_url
from shared.store import queues


def soft_time_limit(settings: Settings) -> float:
    """A task is asked to stop (SoftTimeLimitExceeded, so it can fail its items) a bit before the
    hard limit kills it."""
    limit = settings.task_time_limit_s
    return max(1.0, limit - max(1.0, limit / 15))


def visibility_timeout(settings: Settings) -> int:
    """How long an unacknowledged message stays with its consumer before Redis gives it to
    another: longer than any task may run (the hard time limit), so only a message whose worker
    died comes back."""
    limit = settings.task_time_limit_s
    return int(limit + max(5, limit // 10))


def restore_interval(settings: Settings) -> int:
    """Seconds between the consumers' sweeps that put expired unacknowledged messages back."""
    return max(1, min(30, visibility_timeout(settings) // 4))


class CeleryConfig:
    """Celery settings for `Celery.config_from_object`, from mmsearch's settings."""

    task_serializer = "json"
    result_serializer = "json"  # no backend stores results; JSON all the same, should one be set
    accept_content = ["json"]
    result_accept_content = ["json"]
    task_ignore_result = True
    task_acks_late = True
    task_reject_on_worker_lost = True
    worker_prefetch_multiplier = 1
    broker_connection_retry_on_startup = True
    worker_hijack_root_logger = False
    task_default_queue = queues.ENCODE
    task_routes = {queues.ENCODE_ITEMS: {"queue": queues.ENCODE},
                   queues.SEARCH: {"queue": queues.QUERY}, queues.EXPORT: {"queue": queues.QUERY}}

    def __init__(self, settings: Settings) -> None:
        url = redis_url(settings)
        visibility = visibility_timeout(settings)
        self.broker_url = url
        # Longer than any task: an unacknowledged message is redelivered only when its worker died.
        # Every consumer sweeps for such messages every `restore_interval` s (kombu's default,
        # 10 s x a throttle of 10, would add up to 100 s to each redelivery).
        self.broker_transport_options = {"visibility_timeout": visibility,
                                         "unacked_restore_interval": restore_interval(settings),
                                         "unacked_restore_throttle": 1}
        self.task_time_limit = settings.task_time_limit_s
        self.task_soft_time_limit = soft_time_limit(settings)


def make_celery(settings: Settings, name: str = "mmsearch-client", include: Sequence[str] = ()) -> Celery:
    """A Celery app on the settings' Redis; workers pass the task modules they run as `include`."""
    app = Celery(name, include=list(include), set_as_current=False)
    app.config_from_object(CeleryConfig(settings))
    return app

