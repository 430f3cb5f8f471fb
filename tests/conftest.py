"""Shared fixtures: mock upstreams on loopback (tests/fixtures_upstreams.py), a served
Interlock (tests/served.py) and a PostgreSQL schema per test (tests/pg.py)."""

pytest_plugins = [
    "tests.fixtures_upstreams",
    "tests.served",
    "tests.process",
    "tests.pg",
    "tests.redis_fixture",
]
