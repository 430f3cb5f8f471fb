"""Everything that persists or is shared between processes: the usage ledger, limit counters,
managed keys and the response cache (`cache.py`). Each concern sits behind a small Protocol; the
request pipeline calls the protocol and never imports a database driver."""
