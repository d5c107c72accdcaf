"""The test tiers (tests/tiers.py): what is slow is marked so, and a test without the mark cannot
start Ray, an engine or a job. These tests are themselves not slow: the guard is on while they run."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from tests.tiers import SLOW_FIXTURES, SlowTestNotMarked


def test_a_test_not_marked_slow_cannot_start_a_process_of_the_environment():
    with pytest.raises(SlowTestNotMarked, match=r"test_tiers.py::.* starts a process \(.*python.* -c pass\) but is "
                                                r"not marked slow: mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"])
    ray = str(sys.prefix) + "/bin/ray"
    with pytest.raises(SlowTestNotMarked, match="bin/ray start --head"):
        subprocess.Popen([ray, "start", "--head"])
    with pytest.raises(SlowTestNotMarked, match="multiprocessing"):
        multiprocessing.get_context("spawn").Process(target=print).start()
    # A system tool a library calls is not a job.
    assert subprocess.run(["uname", "-s"], capture_output=True, text=True).stdout.strip() == "Linux"


@pytest.mark.slow
def test_a_slow_test_may_start_one():
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\n"


def test_every_collected_test_that_uses_a_slow_fixture_is_marked_slow(request):
    items = request.session.items
    uses = [item for item in items if SLOW_FIXTURES & set(item.fixturenames)]
    assert all(item.get_closest_marker("slow") for item in uses), [i.nodeid for i in uses if not i.get_closest_marker("slow")]
    # In a run of the fast tier (-m "not slow") none is left at all.
    if request.config.getoption("markexpr") == "not slow":
        assert uses == [] and not any(item.get_closest_marker("slow") for item in items)
