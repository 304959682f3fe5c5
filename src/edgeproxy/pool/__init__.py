"""The edge pool: the store replicated from one primary to the pool members (``docs/pool.md``)."""
