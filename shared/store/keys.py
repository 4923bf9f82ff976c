"""Names of every Redis key mmsearch uses, in one place.

Collections get an internal id (`cid`) at creation, so a collection deleted and created again
under the same name never sees the old one's logs, snapshots or staged bytes.
"""
from __future__ import annotations

PREFIX = "mms"

COLLECTIONS = f"{PREFIX}:collections"          # hash: name -> collection JSON
LIVE_CIDS = f"{PREFIX}:cids"                   # set of live collection ids


def shard_log(cid: str, shard: int) -> str:
    """Stream: the durable write log of one shard (upserts and deletes, in order)."""
    return f"{PREFIX}:log:{cid}:{shard}"


def shard_state(cid: str, shard: int) -> str:
    """Hash written by the shard owner: `applied` (last applied log id), `count` (live items)."""
    return f"{PREFIX}:shard:{cid}:{shard}"


def slot_owner(slot: int) -> str:
    """Lease held (and renewed) by the process that owns a shard slot."""
    return f"{PREFIX}:owner:{slot}"


def slot_replica(slot: int, n: int) -> str:
    """Lease of the `n`th read replica of a shard slot (renewed like the owner's)."""
    return f"{PREFIX}:replica:{slot}:{n}"


ACTIVE_JOBS = f"{PREFIX}:jobs:active"          # zset: job id -> created_at, until the reaper sees it final
REAPER_LOCK = f"{PREFIX}:reaper"               # one stuck-job reaper at a time


def deliveries(task_id: str) -> str:
    """Counter: how many times an encode task has started (poison messages stop at a limit)."""
    return f"{PREFIX}:deliveries:{task_id}"


def slot_searches(slot: int) -> str:
    """List: search requests for one shard slot, pushed by the query workers and popped by the
    slot's owner and read replicas (no Celery: a search lost with its worker is only late)."""
    return f"{PREFIX}:searches:{slot}"


def search_replies(search_id: str) -> str:
    """List: the answers of the shard slots to one search, pushed by the shard workers."""
    return f"{PREFIX}:replies:{search_id}"


def search_answer(search_id: str) -> str:
    """List: the merged answer of one synchronous search, pushed by the query worker for the API."""
    return f"{PREFIX}:answer:{search_id}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_items(job_id: str) -> str:
    """Hash: item index -> outcome, so a redelivered item is counted once."""
    return f"{PREFIX}:job:{job_id}:items"


def job_errors(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:errors"


def job_marks(job_id: str) -> str:
    """Hash: shard -> highest log id the job wrote there (the job is final once applied)."""
    return f"{PREFIX}:job:{job_id}:marks"


def job_ids(job_id: str) -> str:
    """List: the item ids of an ingest job in request order (to name items that never ran)."""
    return f"{PREFIX}:job:{job_id}:ids"


def job_keys(job_id: str) -> list[str]:
    return [job(job_id), job_items(job_id), job_errors(job_id), job_marks(job_id), job_ids(job_id)]


def staged(cid: str, job_id: str, index: int) -> str:
    """Uploaded image bytes waiting for an encode worker (with a TTL)."""
    return f"{PREFIX}:stage:{cid}:{job_id}:{index}"


def staged_pattern(cid: str) -> str:
    return f"{PREFIX}:stage:{cid}:*"
