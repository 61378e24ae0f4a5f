import pytest

from harness.scenario import JumpLabel, Raw, Scenario

# My own order of steps for turning a jump label's NOP5 into a JMP32 on a live SMP machine.
MINE = """
    sub rsp, 32
    mov rdi, rsp
    lea rsi, [rip + site_j0]
    lea rdx, [rip + j0_yes]
    call poke_prepare_jmp        # describe the poke; the INT3 handler emulates it meanwhile
    mov rdi, rsp
    call poke_int3               # 1. INT3 on the first byte, then sync every CPU
    call text_poke_sync
    mov rdi, rsp
    call poke_tail               # 2. the tail under the INT3, the trace record, sync
    mov rdi, rsp
    call poke_record
    call text_poke_sync
    mov rdi, rsp
    call poke_first              # 3. the first byte, sync, retire the descriptor
    call text_poke_sync
    call poke_retire
    add rsp, 32
"""
scenario = Scenario("my_jump_flip", "my INT3 sequence", cpus=3, sites=[JumpLabel("j0", key="k")],
                    ops=[Raw(MINE, effect={"j0": True})])


@pytest.mark.textpoke(strategy="pct", schedules=10)
def test_my_sequence_is_safe(textpoke):
    textpoke.check(scenario)
