"""Export archives as files in the export directory (`Settings.exports_path`, shared by the
query workers that write them and the API processes that serve them).

An export job's archive is `<job id>.zip`. It is written under a temporary name
(`<job id>.<random>.part`) and renamed once whole, so a reader never sees half an archive. It is
kept EXPORT_TTL_S after it was completed (its modification time), then removed: `live` refuses
and removes an expired one, and `remove_expired`, which every query worker's reaper thread runs
each round, removes expired archives and temporary files no write touched for as long.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

EXPORT_TTL_S = 3600
SUFFIX, PART = ".zip", ".part"
JOB_ID = re.compile(r"[0-9a-f]{32}")  # jobs.new_job_id(): a file name never leaves the directory
READ_BYTES = 2**20


def archive_path(directory: Path, job_id: str) -> Path:
    """Where the archive of export job `job_id` lies once complete (ValueError for a bad id)."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id[:40]!r}")
    return directory / f"{job_id}{SUFFIX}"


@contextmanager
def written(directory: Path, job_id: str) -> Iterator[IO[bytes]]:
    """A file to write the archive of `job_id` into; renamed to `archive_path` when the block
    ends normally (after an fsync), removed when it raises."""
    final = archive_path(directory, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f"{job_id}.", suffix=PART)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def described(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex digest) of the file at `path`, read in pieces."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _expired(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime > EXPORT_TTL_S
    except FileNotFoundError:
        return True


def live(directory: Path, job_id: str, now: float | None = None) -> Path | None:
    """The archive of `job_id` when it exists and has not expired (an expired one is removed)."""
    try:
        path = archive_path(directory, job_id)
    except ValueError:
        return None
    if _expired(path, time.time() if now is None else now):
        path.unlink(missing_ok=True)
        return None
    return path


def remove_expired(directory: Path, now: float | None = None) -> int:
    """Remove the archives and temporary files of `directory` older than EXPORT_TTL_S; how many."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = directory / name
        if not name.endswith((SUFFIX, PART)) or not _expired(path, now):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # another process removed it first
    return removed
