"""clasp-cache: exact and semantic response caches, scoped so a hit is never wrong for the asker."""
