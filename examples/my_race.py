"""A user's own race, in one file: an INT3 handler of another subsystem that, with its flag
set, claims every INT3 it sees and returns past it, as if the trap were its own (a notifier
that does not check the address). While a jump label is being patched, an observer that hits
the patcher's INT3 then runs from the middle of the site.

    textpoke explore examples/my_race.py::my_race --variant buggy --schedules 50
    textpoke replay TOKEN          # the token the command above prints
"""

from harness.scenario.op import StaticKey
from harness.scenario.scenario import Scenario, Variant
from harness.scenario.site import JumpLabel

MY_BP = """
my_bp:                                   # our #BP entry: count, then claim or pass on
    lock inc qword ptr [my_traps]
    test qword ptr [V_CFG], CFG_CLAIM_ALL
    jnz my_bp_claim
    jmp int3_entry                       # the kernel's: poke_int3_handler, kprobes, die
my_bp_claim:
    iretq                                # "handled": resume after the INT3 byte
"""

my_race = Scenario(
    "my_race", "an own #BP handler that claims the text-poke INT3s",
    sites=[JumpLabel("j0", key="k")], ops=[StaticKey("k", True), StaticKey("k", False)],
    cpus=3, extra_asm=MY_BP, handlers={"bp": "my_bp"}, flags=["CLAIM_ALL"],
    variables={"my_traps": 8},
    variants={"fixed": Variant(),
              "buggy": Variant(flags=("CLAIM_ALL",), expect="torn_execution|guest_fault")},
    default_variant="fixed")
