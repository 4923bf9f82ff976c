"""Tests of the embedded redis-server: its log goes to the data dir, not the console, and a
server that cannot start is reported with that log's last lines."""
from __future__ import annotations

import socket
import subprocess

import pytest

from shared.runtime import embedded_redis
from shared.runtime.config import Settings


def test_a_started_server_writes_no_console_output_and_answers(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(embedded_redis.server_command(tmp_path, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        embedded_redis.wait_until_up(port, proc=proc, data_dir=tmp_path)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert out == b""
    assert (tmp_path / "redis" / embedded_redis.LOG_NAME).exists()


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as failed:
            embedded_redis.start(Settings.from_env({"MMSEARCH_DATA_DIR": str(tmp_path)}), port=port)
    message = str(failed.value)
    assert "redis-server exited" in message and embedded_redis.LOG_NAME in message
    assert "Address already in use" in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
