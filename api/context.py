"""What a request handler needs from its Flask app: settings, Redis client, Celery client.

`create_app` stores one `Services` in `app.extensions["mmsearch"]`; views reach it through
`services()` instead of module globals, so two apps in one process (tests) never share state.
"""
from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from shared.runtime.config import Settings

EXTENSION = "mmsearch"


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis
    celery: Celery


def services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions[EXTENSION]
