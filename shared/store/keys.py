"""Names of every Redis key mmsearch uses, in one place.

Collections get an internal id (`cid`) at creation, so a collection deleted and created again
under the same name never sees the old one's logs, snapshots or staged bytes. A key named by
one id is `mms:<kind>:<id>` (`_keyed`); the parts of a job's state besides its hash are
`mms:job:<id>:<part>` (`_job_part`).
"""
from __future__ import annotations

from typing import Callable

PREFIX = "mms"

COLLECTIONS = f"{PREFIX}:collections"          # hash: name -> collection JSON
LIVE_CIDS = f"{PREFIX}:cids"                   # set of live collection ids
ACTIVE_JOBS = f"{PREFIX}:jobs:active"          # zset: job id -> created_at, until the reaper sees it final
JOBS_BY_TIME = f"{PREFIX}:jobs:by_time"        # zset: job id -> created_at, while its record may exist
REAPER_LOCK = f"{PREFIX}:reaper"               # one stuck-job reaper at a time
# list: synchronous searches, pushed by the API and popped by the query workers' request threads
# (no Celery: a search lost with its worker only times out, as its asker gives up anyway)
SEARCH_REQUESTS = f"{PREFIX}:queries"


def _keyed(kind: str) -> Callable[[str | int], str]:
    """The key function of one kind of key named by a single id or number."""
    return lambda ident: f"{PREFIX}:{kind}:{ident}"


# Keys named by one id or number ----------------------------------------------------------

# lease held (and renewed) by the process that owns a shard slot
slot_owner = _keyed("owner")
# the owner lease token of the process that has loaded the slot's shards and serves its requests
# (a token other than the owner's: the owner is still loading them)
slot_serving = _keyed("serving")
# list: search requests for one shard slot, pushed by the query workers and popped by the
# slot's owner and read replicas (no Celery: a search lost with its worker is only late)
slot_searches = _keyed("searches")
# list: the answers of the shard slots to one search, pushed by the shard workers
search_replies = _keyed("replies")
# list: the merged answer of one synchronous search, pushed by the query worker for the API
search_answer = _keyed("answer")
# counter: how many times an encode task has started (poison messages stop at a limit)
deliveries = _keyed("deliveries")
# hash: a job's kind, collection, counters and times
job = _keyed("job")


def _job_part(part: str) -> Callable[[str], str]:
    """The key function of one part of a job's state besides its hash."""
    return lambda job_id: f"{job(job_id)}:{part}"


# hash: item index -> outcome, so a redelivered item is counted once
job_items = _job_part("items")
# list: the errors of the job's failed items
job_errors = _job_part("errors")
# hash: shard -> highest log id the job wrote there (the job is final once applied)
job_marks = _job_part("marks")
# list: the item ids of an ingest job in request order (to name items that never ran)
job_ids = _job_part("ids")
# set: the ids a delete job's owner found absent when it applied the delete
job_not_found = _job_part("not_found")
# hash: item index -> encode message of an API ingest's item until it is counted (the reaper
# sends lost ones again: shared.store.encode_tasks)
job_messages = _job_part("messages")


def job_keys(job_id: str) -> list[str]:
    """Every key of a job's state."""
    return [job(job_id), job_items(job_id), job_errors(job_id), job_marks(job_id), job_ids(job_id),
            job_not_found(job_id), job_messages(job_id)]


# Keys named by several ids -----------------------------------------------------------------

def shard_log(cid: str, shard: int) -> str:
    """Stream: the durable write log of one shard (upserts and deletes, in order)."""
    return f"{PREFIX}:log:{cid}:{shard}"


def shard_state(cid: str, shard: int) -> str:
    """Hash written by the shard owner: `applied` (last applied log id), `count` (live items)."""
    return f"{PREFIX}:shard:{cid}:{shard}"


def slot_replica(slot: int, n: int) -> str:
    """Lease of the `n`th read replica of a shard slot (renewed like the owner's)."""
    return f"{PREFIX}:replica:{slot}:{n}"


def staged(cid: str, job_id: str, index: int) -> str:
    """Uploaded image bytes waiting for an encode worker (with a TTL)."""
    return f"{PREFIX}:stage:{cid}:{job_id}:{index}"


def staged_pattern(cid: str) -> str:
    """What every staged upload of a collection matches (SCAN)."""
    return f"{PREFIX}:stage:{cid}:*"


# hash: process id -> JSON of that worker process's start-up stage (shared.store.roles)
ROLES = f"{PREFIX}:roles"
