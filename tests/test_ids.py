from __future__ import annotations

import os
import uuid

from cds.ids import UuidSource


def test_uuids_are_version_4_and_distinct() -> None:
    source = UuidSource()
    made = [source() for _ in range(500)]  # crosses several batches
    assert len(set(made)) == 500
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    source = UuidSource()
    source()  # fill the buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, source().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    assert child != source()
