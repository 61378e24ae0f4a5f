import pytest

from harness.scenario.op import PokeSteps
from harness.scenario.scenario import Scenario
from harness.scenario.site import JumpLabel

# My own order of steps for turning a jump label's NOP5 into a JMP32 on a live SMP machine:
# INT3 on the first byte, sync; the tail under the INT3 and the trace record, sync;
# the first byte, sync; retire the descriptor once no INT3 handler holds it.
MINE = ["int3", "sync", "tail", "record", "sync", "first", "sync", "retire"]
scenario = Scenario("my_jump_flip", "my INT3 sequence", cpus=3,
                    sites=[JumpLabel("j0", key="k")], ops=[PokeSteps("j0", MINE)])


@pytest.mark.textpoke(strategy="pct", schedules=10)
def test_my_sequence_is_safe(textpoke):
    textpoke.check(scenario)
