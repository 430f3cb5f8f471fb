"""Record ids (runtime/ids.py): unique within a process and across forked workers."""

from __future__ import annotations

import os

from runtime.ids import unique_suffix


def test_suffixes_are_unique_and_a_forked_child_draws_its_own_prefix() -> None:
    here = [unique_suffix() for _ in range(1000)]
    assert len(set(here)) == 1000
    assert all(len(s) == 18 and int(s, 16) >= 0 for s in here)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next suffix and leave at once
        os.write(write, unique_suffix().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 18
    assert child[:12] != here[0][:12]  # a new 48-bit prefix (a collision: 1 in 2**48)
    assert unique_suffix()[:12] == here[0][:12]  # the parent keeps its own
