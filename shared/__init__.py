"""mmsearch's common package, imported by the API and the workers (and by neither of them in turn).

Organised by domain:
- `shared.runtime`: settings, logging, metrics, Redis connections, the Celery configuration and
  the process supervisor of a one-machine stack;
- `shared.store`: the records mmsearch keeps in Redis (keys, collections, jobs, shard logs,
  staged bytes, slot leases, queues, reply lists);
- `shared.encoding`: image decoding and sources, image and text models, ConSE, fusion;
- `shared.index`: the per-shard hnswlib index, its snapshots and the merge of shard answers.

The API never imports torch: modules that need it import it themselves, so importing these
packages is cheap.
"""
