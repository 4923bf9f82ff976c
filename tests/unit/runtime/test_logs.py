"""The one log set-up: Celery's per-task lines are left out unless asked for."""
import io
import logging

from shared.runtime import logs
from shared.runtime.config import Settings


def test_task_lines_are_quiet_by_default_but_warnings_about_tasks_pass():
    assert Settings.from_env({}).log_tasks is False
    assert Settings.from_env({"MMSEARCH_LOG_TASKS": "true"}).log_tasks is True
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        logs.setup_logging("INFO", fmt="text")
        handler = next(h for h in root.handlers if getattr(h, "_mmsearch", False))
        out = io.StringIO()
        handler.setStream(out)
        logs.quiet_task_lines()
        logging.getLogger("celery.app.trace").info("Task mmsearch.search[x] succeeded in 0.01s: {}")
        logging.getLogger("celery.worker.strategy").info("Task mmsearch.search[x] received")
        logging.getLogger("celery.app.trace").warning("Task mmsearch.search[y] retry")
        logging.getLogger("workers.encode").info("encode: ready")
        lines = out.getvalue().splitlines()
        assert len(lines) == 2 and "retry" in lines[0] and "encode: ready" in lines[1]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
