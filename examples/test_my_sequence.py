import pytest

from harness.scenario import JumpLabel, Raw, Scenario

# My own sequence for turning one jump label's NOP5 into a JMP32, by hand: publish a
# text_poke_loc, INT3 on the first byte, sync, tail, record, sync, first byte, sync, wait.
MINE = """
    sub rsp, 24                          # [rsp]: struct text_poke_loc, [rsp+16]: new insn
    lea rdi, [rsp + 16]
    lea rsi, [rip + site_j0]
    lea rdx, [rip + j0_yes]
    call make_jmp32
    mov rdi, rsp
    lea rsi, [rip + site_j0]
    lea rdx, [rsp + 16]
    mov ecx, 5
    xor r8d, r8d
    call text_poke_loc_init
    mov qword ptr [V_BP_VEC], rsp        # the INT3 handler emulates it meanwhile
    mov qword ptr [V_BP_NR], 1
    mov qword ptr [V_BP_REFS], 1
    lea rdi, [rip + site_j0]
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke                       # 1. INT3
    call text_poke_sync
    lea rdi, [rip + site_j0 + 1]
    lea rsi, [rsp + 16 + 1]
    mov edx, 4
    call text_poke                       # 2. the tail, then the record (old: NOP5)
    lea rdi, [rip + site_j0]
    lea rsi, [rip + my_nop5]
    lea rdx, [rsp + 16]
    mov ecx, 5
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    call text_poke_sync
    lea rdi, [rip + site_j0]
    lea rsi, [rsp + 16]
    mov edx, 1
    call text_poke                       # 3. the first byte
    call text_poke_sync
    lock dec qword ptr [V_BP_REFS]
    mov qword ptr [V_BP_NR], 0
    add rsp, 24
"""

scenario = Scenario("my_jump_flip", "a hand-written INT3 sequence", cpus=3,
                    sites=[JumpLabel("j0", key="k")], ops=[Raw(MINE, effect={"j0": True})],
                    extra_asm="my_nop5:\n    KNOP 5\n")


@pytest.mark.textpoke(strategy="pct", schedules=10)
def test_my_sequence_is_safe(textpoke):
    textpoke.check(scenario)
