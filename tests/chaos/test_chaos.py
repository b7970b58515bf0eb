"""The short chaos suite inside `make test`; `make chaos` runs the full sizes."""

import pytest

from tests.chaos.runner import run, seed_from

pytestmark = pytest.mark.integration


# The Faust agent's run is shorter still (make test stays under 30 minutes); `make chaos` runs
# both sources at full size. Both send 640 events (ten batches of 64) for SIGTERM, enough for up
# to three stops, each timed into a batch measured on this machine (runner.sigterm_mid_batch).
SIZES = {"librdkafka": dict(events=3000, poison_events=1000, freeze_s=20.0),
         "faust": dict(events=1500, poison_events=500, freeze_s=10.0)}


@pytest.mark.parametrize("source", list(SIZES))
def test_chaos_quick_loses_nothing(source):
    seed = seed_from()  # CHAOS_SEED=N replays a failed run
    outcomes = run(seed=seed, source=source, **SIZES[source])
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"chaos seed {seed}:\n" + "\n".join(
        f"{o.name}: lost {o.lost}, duplicates {o.duplicates} (bound {o.duplicate_bound}), "
        f"{o.note} {'; '.join(o.failures)}" for o in failed)


def test_mid_batch_check_can_fail():
    """The SIGTERM scenario's log check refuses a stop that landed between batches."""
    from tests.chaos.runner import landed_mid_batch

    stop = "shutting down: finishing the batch in flight (grace 20s)"
    batch = "batch t.in: 64 enriched, 0 dead-lettered, 0 tombstones, inference 900 ms"
    done = "worker loop stopped after 3 batches; left the group"
    assert landed_mid_batch([batch, stop, batch, done]) is None
    assert "between batches" in landed_mid_batch([batch, stop, done])
    assert "never saw" in landed_mid_batch([batch, batch])
    assert "not committed" in landed_mid_batch([stop, batch, "commit failed (x); those records will be re-delivered", done])
