"""The suite's own ground rule: no test finds the process as another test left it, in any order (pytest-randomly
shuffles it on every run), so a result never depends on which test ran before it on the same worker."""


from conftest import ROOT

pytest_plugins = ["pytester"]

FIRST_THEN_SECOND = '''
import os, signal
import torch
from accelerate import Accelerator

def test_1_leaves_state_behind():
    Accelerator(mixed_precision="no")  # what a run where bf16 is not native leaves
    torch.set_num_threads(1)
    os.environ["LEFT_BEHIND"] = "1"
    signal.signal(signal.SIGTERM, lambda *args: None)

def test_2_finds_none_of_it():
    assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16"  # raised before the fixture reset it
    assert torch.get_num_threads() == THREADS
    assert "LEFT_BEHIND" not in os.environ
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
'''


def test_what_one_test_sets_in_the_process_never_reaches_the_next(pytester):
    """Two tests in a fixed order, with the suite's conftest: accelerate's state (an Accelerator with another mixed
    precision raises), torch's threads, the environment and a SIGTERM handler are reset between them."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_order="from conftest import THREADS\n" + FIRST_THEN_SECOND)
    pytester.syspathinsert(ROOT)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:xdist", "-p", "no:cacheprovider",
                                           "-o", "addopts=", "-q", timeout=300)
    assert result.ret == 0, "\n".join(result.outlines[-40:])
    result.assert_outcomes(passed=2)
