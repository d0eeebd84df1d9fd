"""The order the two xdist workers take test files in (`--dist loadfile`): the slowest first, so both end together,
and the files that read ux_sweep's finished sweep as one unit, so that sweep runs once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

# The ux_sweep readers' unit: one worker runs them all, one after another, on one finished sweep.
UX_UNIT = "tests/ux_sweep.py"

# Files by their measured time on 2 cores, slowest first (a whole-suite run with --durations). Only the order of the
# work changes: a file missing here (a new one) runs after these, in xdist's own order. The point is the tail: xdist
# orders by number of tests, which put the few-test, minute-long sweep files last, one worker running them alone.
SLOWEST_FIRST = (
    UX_UNIT,
    "tests/test_drivers.py",
    "tests/test_byo.py",
    "tests/test_hardware.py",
    "tests/test_resume.py",
    "tests/test_postgres.py",
    "tests/test_sweep.py",
    "tests/test_on_the_way.py",
    "tests/test_driver_rules.py",
    "tests/test_tracking_outage.py",
    "tests/test_every_choice.py",
    "tests/test_cluster.py",
    "tests/test_launch_folder.py",
    "tests/test_machinery.py",
    "tests/test_gate.py",
    "tests/test_limits.py",
)


class SlowestFirst(LoadFileScheduling):
    """xdist's loadfile with two changes: the ux_sweep readers are one unit, and units start slowest first."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        self.root = config.rootpath
        self._units: dict[str, str] = {}
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        """The test's file, or the ux_sweep unit for a file that reads the shared sweep."""
        file = nodeid.split("::", 1)[0]
        if file not in self._units:
            path = self.root / file
            reads_it = path.suffix == ".py" and "from ux_sweep import" in _text(path)
            self._units[file] = UX_UNIT if reads_it else file
        return self._units[file]

    def _assign_work_unit(self, node) -> None:
        """Give `node` the slowest unit left: the queue (xdist's, by number of tests) is put in our order once."""
        if not self._ordered:
            rank = {unit: i for i, unit in enumerate(SLOWEST_FIRST)}
            # Stable: units not listed keep xdist's order, after the listed ones.
            for unit in sorted(self.workqueue, key=lambda u: rank.get(u, len(rank))):
                self.workqueue.move_to_end(unit)
            self._ordered = True
        super()._assign_work_unit(node)


def _text(path: Path) -> str:
    """A test file's source, or nothing where it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return ""
