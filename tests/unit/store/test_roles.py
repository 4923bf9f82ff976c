"""The start-up reports of worker processes (shared.store.roles) in a real Redis."""
import time

from shared.store import keys, roles


def test_a_role_is_ready_when_one_of_its_processes_is(redis_client):
    first = roles.RoleReporter(redis_client, "encode", process="e1")
    second = roles.RoleReporter(redis_client, "encode", process="e2")
    first.stage("loading text model glove")
    second.stage("compiling image model m for batch 1")
    reasons = roles.not_ready(roles.processes(redis_client), ("encode", "query"))
    assert reasons["query"] == "query worker: none running"
    assert reasons["encode"].startswith("encode worker: loading text model glove, ")  # the longest at it
    second.stage(roles.READY)
    assert roles.not_ready(roles.processes(redis_client), ("encode",)) == {}
    second.withdraw()
    assert "encode" in roles.not_ready(roles.processes(redis_client), ("encode",))


def test_a_process_that_stopped_reporting_does_not_count(redis_client, monkeypatch):
    reporter = roles.RoleReporter(redis_client, "query", process="q1")
    reporter.stage(roles.READY)
    later = time.time() + roles.EXPIRY_S + 1
    assert roles.processes(redis_client, now=later) == []
    monkeypatch.setattr(roles.time, "time", lambda: later)
    roles.drop_expired(redis_client)
    assert redis_client.hlen(keys.ROLES) == 0


def test_the_heartbeat_keeps_a_report_alive_and_withdraw_removes_it(redis_client, monkeypatch):
    monkeypatch.setattr(roles, "HEARTBEAT_S", 0.05)
    reporter = roles.RoleReporter(redis_client, "encode", process="e1")
    reporter.start()
    first = roles.processes(redis_client)[0].expires
    deadline = time.monotonic() + 10
    while roles.processes(redis_client)[0].expires == first:
        assert time.monotonic() < deadline, "the heartbeat never renewed the report"
        time.sleep(0.05)
    reporter.withdraw()
    assert roles.processes(redis_client) == []
    redis_client.hset(keys.ROLES, "junk", b"not json")  # a bad entry is skipped, not fatal
    assert roles.processes(redis_client) == []


def test_reporting_never_raises_while_redis_is_away():
    import redis

    from shared.runtime.stack import free_port

    away = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    reporter = roles.RoleReporter(away, "query", process="q1")
    reporter.stage("loading text model glove-6b-50d")  # a worker starting while Redis restarts goes on
    reporter.stage(roles.READY)
    assert reporter.stage_name == roles.READY


def test_a_killed_process_of_this_machine_is_gone_at_once(redis_client):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reporter = roles.RoleReporter(redis_client, "query", process="q1", pid=child.pid)
    reporter.stage(roles.READY)
    assert [p.process for p in roles.processes(redis_client)] == ["q1"]
    child.kill()
    child.wait()  # reaped, as its supervisor does
    assert roles.processes(redis_client) == []  # long before its report expires
    assert "query" in roles.not_ready(roles.processes(redis_client), ("query",))


def test_a_process_of_another_machine_counts_until_its_report_expires(redis_client):
    reporter = roles.RoleReporter(redis_client, "encode", process="e1", pid=2**22 + 12345)  # no such pid here
    reporter.machine = "elsewhere/pid:[1]"
    reporter.stage(roles.READY)
    assert [p.process for p in roles.processes(redis_client)] == ["e1"]
    reporter.machine = roles.this_machine()
    reporter.stage(roles.READY)
    assert roles.processes(redis_client) == []
