"""The reaper's round also sweeps the export directory, in every query worker: an archive past
its hour goes, a fresh one stays, whether or not this process holds the reaper lock."""
import os
import time

from shared.runtime.config import Settings
from shared.store import export_files, jobs, keys
from workers.reaper import Reaper


def test_a_round_removes_expired_export_archives_even_without_the_lock(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path)
    folder = settings.exports_path
    old, fresh = jobs.new_job_id(), jobs.new_job_id()
    for job_id in (old, fresh):
        with export_files.written(folder, job_id) as out:
            out.write(b"zip")
    then = time.time() - export_files.EXPORT_TTL_S - 1
    os.utime(export_files.archive_path(folder, old), (then, then))
    redis_client.set(keys.REAPER_LOCK, "another query worker")
    Reaper(redis_client, settings)._round()
    assert os.listdir(folder) == [f"{fresh}.zip"]
