"""The one Celery app of mmsearch: JSON only, late acks, prefetch 1, routes per worker role.

Importing this module is cheap (no torch): the API imports it to send tasks by name and to
read results; the task modules import their heavy dependencies lazily.
"""
from __future__ import annotations

from celery import Celery

from shared import queues
from shared.config import Settings, get_settings
from shared.redis_conn import redis_url


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


def make_celery() -> Celery:
    settings = get_settings()
    url = redis_url(settings)
    visibility = visibility_timeout(settings)
    app = Celery("mmsearch", broker=url, backend=url,
                 include=["workers.encode", "workers.shard", "workers.query"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Longer than any task: an unacknowledged message is redelivered only when its worker died.
        # Every consumer sweeps for such messages every `restore_interval` s (kombu's default,
        # 10 s x a throttle of 10, would add up to 100 s to each redelivery).
        broker_transport_options={"visibility_timeout": visibility,
                                  "unacked_restore_interval": restore_interval(settings),
                                  "unacked_restore_throttle": 1},
        result_backend_transport_options={"visibility_timeout": visibility},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=soft_time_limit(settings),
        result_expires=settings.job_ttl_s,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=queues.ENCODE,
        task_routes={
            queues.ENCODE_ITEMS: {"queue": queues.ENCODE},
            queues.SEARCH: {"queue": queues.QUERY},
            queues.MERGE_HITS: {"queue": queues.QUERY},
        },
    )
    return app


app = make_celery()
