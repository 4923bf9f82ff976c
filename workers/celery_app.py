"""The workers' Celery app: mmsearch's one configuration (shared.runtime.celery_config) and the
task modules of every worker role.

Importing this module is cheap (no torch): the task modules import their heavy dependencies
lazily.
"""
from __future__ import annotations

from shared.runtime.celery_config import make_celery
from shared.runtime.config import get_settings

app = make_celery(get_settings(), name="mmsearch",
                  include=["workers.encode", "workers.query", "workers.export"])
