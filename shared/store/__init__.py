"""The records mmsearch keeps in Redis: key names, collections, jobs, shard logs, staging, slots."""
