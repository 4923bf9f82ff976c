"""The per-shard vector index (hnswlib graphs, snapshots) and the merge of per-shard answers."""
