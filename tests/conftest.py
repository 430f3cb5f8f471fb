"""Shared fixtures: mock upstreams on loopback (tests/fixtures_upstreams.py) and a served
Interlock (tests/served.py)."""

pytest_plugins = ["tests.fixtures_upstreams", "tests.served", "tests.process"]
