"""The short chaos suite inside `make test`; `make chaos` runs the full sizes."""

import pytest

from tests.chaos.runner import run

pytestmark = pytest.mark.integration


def test_chaos_quick_loses_nothing():
    outcomes = run(events=3000, poison_events=1000, freeze_s=20.0)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, "\n".join(f"{o.name}: lost {o.lost}, duplicates {o.duplicates} "
                                 f"(bound {o.duplicate_bound}), {o.note}" for o in failed)
