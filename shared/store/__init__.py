"""The records mmsearch keeps in Redis: key names, collections, jobs, shard logs, staging, slot
liveness, Celery queue names, and the request and reply lists of `replies`."""
