"""The short chaos suite inside `make test`; `make chaos` runs the full sizes."""

import pytest

from tests.chaos.runner import run, seed_from

pytestmark = pytest.mark.integration


def test_chaos_quick_loses_nothing():
    seed = seed_from()  # CHAOS_SEED=N replays a failed run
    outcomes = run(events=3000, poison_events=1000, freeze_s=20.0, seed=seed)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"chaos seed {seed}:\n" + "\n".join(
        f"{o.name}: lost {o.lost}, duplicates {o.duplicates} (bound {o.duplicate_bound}), "
        f"{o.note} {'; '.join(o.failures)}" for o in failed)
