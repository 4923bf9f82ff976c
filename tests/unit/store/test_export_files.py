"""Export archives as files: published whole under the job's name or not at all, served while
younger than EXPORT_TTL_S, then removed."""
import hashlib
import os
import time

import pytest

from shared.store import export_files, jobs

JOB = jobs.new_job_id()


def test_an_archive_appears_only_once_written_whole(tmp_path):
    folder = tmp_path / "exports"
    with export_files.written(folder, JOB) as out:
        out.write(b"zip bytes")
        assert export_files.live(folder, JOB) is None  # still under its temporary name
        assert [p.suffix for p in folder.iterdir()] == [export_files.PART]
    path = export_files.live(folder, JOB)
    assert path == export_files.archive_path(folder, JOB) and path.read_bytes() == b"zip bytes"
    assert export_files.described(path) == (9, hashlib.sha256(b"zip bytes").hexdigest())
    assert os.listdir(folder) == [f"{JOB}.zip"]


def test_a_write_that_fails_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with export_files.written(tmp_path, JOB) as out:
            out.write(b"half")
            raise RuntimeError("a shard did not answer")
    assert os.listdir(tmp_path) == [] and export_files.live(tmp_path, JOB) is None


def test_an_archive_expires_after_its_ttl_and_is_removed(tmp_path):
    with export_files.written(tmp_path, JOB) as out:
        out.write(b"zip")
    later = time.time() + export_files.EXPORT_TTL_S + 1
    assert export_files.live(tmp_path, JOB) is not None
    assert export_files.live(tmp_path, JOB, now=later) is None and os.listdir(tmp_path) == []


def test_the_sweep_removes_old_archives_and_abandoned_parts_only(tmp_path):
    old = time.time() - export_files.EXPORT_TTL_S - 10
    names = {"old": f"{jobs.new_job_id()}.zip", "old_part": f"{jobs.new_job_id()}.x1.part",
             "fresh": f"{jobs.new_job_id()}.zip", "fresh_part": f"{jobs.new_job_id()}.x2.part",
             "other": "notes.txt"}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key.startswith("old") or key == "other":
            os.utime(tmp_path / name, (old, old))
    assert export_files.remove_expired(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([names["fresh"], names["fresh_part"], names["other"]])
    assert export_files.remove_expired(tmp_path / "missing") == 0


def test_a_job_id_never_names_a_file_outside_the_directory(tmp_path):
    for bad in ("../etc", "..", "a/b", JOB.upper(), ""):
        with pytest.raises(ValueError):
            export_files.archive_path(tmp_path, bad)
        assert export_files.live(tmp_path, bad) is None
