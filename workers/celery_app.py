"""The one Celery app of mmsearch: JSON only, late acks, prefetch 1, routes per worker role.

Importing this module is cheap (no torch): the API imports it to send tasks by name and to
read results; the task modules import their heavy dependencies lazily.
"""
from __future__ import annotations

from celery import Celery

from shared import queues
from shared.config import get_settings
from shared.redis_conn import redis_url


def make_celery() -> Celery:
    settings = get_settings()
    url = redis_url(settings)
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
        broker_transport_options={"visibility_timeout": 3600},
        result_backend_transport_options={"visibility_timeout": 3600},
        task_time_limit=900,
        task_soft_time_limit=840,
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
