"""Distributed training: DDP support, the distributed candidate pool, the ranks' epoch meeting."""
