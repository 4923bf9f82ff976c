"""docker-compose.yml cannot run here (no Docker engine): check it against the Procfile, and the
stack's shard processes against their slots."""
import shlex

import pytest
import yaml

from shared.runtime.config import Settings
from shared.runtime.stack import PROCFILE, ROOT, Stack, read_procfile


def _program(command: str) -> list[str]:
    """The part of a command that names what runs (program and module/subcommand)."""
    words = shlex.split(command)
    if words[:2] == ["python", "-m"]:
        return words[:4]
    return [words[0], words[-1]]  # gunicorn ... api.wsgi:app


def test_compose_runs_every_procfile_role_with_the_same_command():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    procfile = read_procfile(PROCFILE)
    assert "redis" in services and "--appendonly" in services["redis"]["command"]
    for role, command in procfile.items():
        if role == "redis":
            continue  # compose runs the redis image instead of the embedded server
        matching = [name for name in services
                    if name == role or name.startswith(f"{role}-")]
        assert matching, f"no compose service for Procfile role {role!r}"
        for name in matching:
            assert _program(services[name]["command"]) == _program(command), name


def test_compose_shard_services_own_distinct_slots_with_their_own_volumes():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    shards = {n: s for n, s in services.items() if n.startswith("shard-")}
    slots = sorted(int(shlex.split(s["command"])[-1]) for s in shards.values())
    assert slots == list(range(int(services["encode"]["environment"]["MMSEARCH_SHARDS"])))
    volumes = [s["volumes"][0].split(":")[0] for s in shards.values()]
    assert len(set(volumes)) == len(volumes)


def test_the_api_and_the_query_workers_share_the_export_directory():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = {k: v for k, v in services["query"]["environment"].items() if k != "MMSEARCH_API_KEYS"}  # a ${...}
    folder = str(Settings.from_env(env).exports_path)
    mounts = [{tuple(v.split(":")[:2]) for v in services[name]["volumes"]} for name in ("api", "query")]
    assert mounts[0] & mounts[1] and all(target == folder for _, target in mounts[0] & mounts[1])


def test_encode_service_reserves_a_gpu_and_flower_is_there():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    devices = services["encode"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "flower" in services["flower"]["command"]


def test_without_api_keys_only_loopback_is_allowed():
    Settings(host="127.0.0.1").refuse_open_listen()
    Settings(host="localhost").refuse_open_listen()
    Settings(host="0.0.0.0", api_keys=("k",)).refuse_open_listen()
    with pytest.raises(ValueError, match="loopback"):
        Settings(host="0.0.0.0").refuse_open_listen()


def test_the_stack_pins_each_shard_process_to_its_slot_and_a_bare_one_takes_every_slot():
    stack = Stack({"MMSEARCH_SHARDS": "2"})
    procfile = read_procfile(PROCFILE)
    assert [stack.command(f"shard.{n}") for n in (1, 2)] == [procfile["shard"] + f" --slot {s}" for s in (0, 1)]
    assert stack.command("replica.3") == "python -m workers shard --replica --slot 0"
    assert stack.command("shard") == procfile["shard"]  # as `honcho start` runs it (workers.slot_keeper)
    assert "--slot" not in procfile["shard"]
