from __future__ import annotations

import gc

from cds.app import tune_garbage_collector


def test_start_up_objects_are_frozen_and_young_collections_are_less_eager() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 20_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
