"""The WSGI entry point: `gunicorn api.wsgi:app` (settings from the environment).

Without API keys the API refuses to start on anything but a loopback address.
"""
from __future__ import annotations

from api import create_app
from shared.runtime.config import get_settings
from shared.runtime.logs import setup_logging

setup_logging(get_settings().log_level)
get_settings().refuse_open_listen()
app = create_app()
