"""The shipped scenarios: the kernel's users of text_poke, and one per race-zoo card (Z1-Z7)."""

from __future__ import annotations

from .guest import Cfg
from .op import Kprobe, Raw, StaticCallUpdate, StaticKey
from .scenario import Scenario, Variant
from .site import CallSite, JumpLabel, KprobeSite
from .text_poke_loc import ScenarioError

FUNCS = ("fn_a", "fn_b", "fn_c")


def _zoo(buggy: Cfg, expect: str, **more: Variant) -> dict[str, Variant]:
    return {"fixed": Variant(Cfg(0)), "buggy": Variant(buggy, expect), **more}


# Z7: the trampoline a sleeping task is inside of. tramp_1/tramp_2 stand for two BPF
# trampoline images; the traced function sleeps (a voluntary quiescent point for rcu-tasks)
# the first time it is called. Retiring tramp_1 = text_poke it full of INT3 padding.
Z7_ASM = """
tramp_1:
    lock inc qword ptr [V_SCRATCH + TRAMP_USERS]  # percpu_ref_get(&image->pcref)
    call traced_fn
    lock dec qword ptr [V_SCRATCH + TRAMP_USERS]  # percpu_ref_put()
    mov ebx, 1
    ret
tramp_1_end:
tramp_2:
    call traced_fn
    mov ebx, 2
    ret
traced_fn:
    lock bts qword ptr [V_SCRATCH + TRAMP_CALLED], 0
    jc traced_ret
    mov qword ptr [V_SCRATCH + TRAMP_ASLEEP], 1
traced_sleep:
    mov rax, qword ptr gs:[PERCPU_CPU]
    lock inc qword ptr [V_QS + rax*8]     # schedule(): a voluntary quiescent point
    pause
    cmp qword ptr [V_SCRATCH + TRAMP_WAKE], 0
    je traced_sleep
    mov qword ptr [V_SCRATCH + TRAMP_ASLEEP], 0
traced_ret:
    ret
wake_sleeper:
    mov qword ptr [V_SCRATCH + TRAMP_WAKE], 1
    ret
wait_users:                              # percpu_ref_kill + wait for the last put
    pause
    cmp qword ptr [V_SCRATCH + TRAMP_USERS], 0
    jne wait_users
    ret
free_tramp_1:                            # record the change, text_poke INT3 padding, sync
    push rbx
    lea rbx, [rip + tramp_1]
    lea rcx, [rip + tramp_1_end]
    sub rcx, rbx
    mov rdi, rbx
    mov rsi, rbx                         # old: the image as it is
    lea rdx, [rip + tramp_pad]           # new: INT3 padding
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
free_loop:
    lea rax, [rip + tramp_1_end]
    cmp rbx, rax
    jae free_done
    mov rdi, rbx
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke
    inc rbx
    jmp free_loop
free_done:
    call text_poke_sync
    pop rbx
    ret
tramp_pad:
    .byte 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc
    .byte 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc
    .byte 0xcc, 0xcc, 0xcc, 0xcc
tramp_retire:
    call synchronize_rcu_tasks
    test qword ptr [V_CFG], CFG_FREE_EARLY
    jnz retire_early
    call wake_sleeper                    # fixed: the image lives until its last user left
    call wait_users                      # (percpu_ref) ...
    call synchronize_rcu_tasks           # ... and the put's own few instructions are done
    call free_tramp_1                    # (e21aa341785c: free through call_rcu_tasks)
    ret
retire_early:                            # buggy: rcu-tasks does not cover the sleeper
    call free_tramp_1
    call wake_sleeper
    ret
"""

Z7_WAIT_SLEEPER = """
z7_wait_{i}:
    pause
    cmp qword ptr [V_SCRATCH + TRAMP_ASLEEP], 1
    jne z7_wait_{i}
"""

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario(
        "static_key", "one key, 4 jump-label sites (NOP5 <-> JMP32) enabled then disabled in "
        "batches; 1 patcher + 3 observers",
        sites=[JumpLabel(f"jl{i}", key="k0") for i in range(4)],
        ops=[StaticKey("k0", True), StaticKey("k0", False)]),
    Scenario(
        "static_call", "one static_call key, 2 CALL sites retargeted fn_a -> fn_b -> fn_a by "
        "text_poke_bp",
        sites=[CallSite(f"sc{i}", key="s0", funcs=FUNCS[:2]) for i in range(2)],
        ops=[StaticCallUpdate("s0", "fn_b"), StaticCallUpdate("s0", "fn_a")]),
    Scenario(
        "kprobe_optimize", "a kprobe on a 3-instruction prologue: arm (INT3), optimize (JMP32 "
        "over all three after rcu-tasks), unoptimize, disarm",
        sites=[KprobeSite("kp0")],
        ops=[Kprobe("kp0", "arm"), Kprobe("kp0", "optimize"), Kprobe("kp0", "unoptimize"),
             Kprobe("kp0", "disarm")]),
    Scenario(
        "kprobe_two", "two kprobes on two prologues, each armed, optimized, unoptimized and "
        "disarmed in turn: the INT3 handler walks the kprobe table past its first entry",
        sites=[KprobeSite("kp0"), KprobeSite("kp1")],
        ops=[Kprobe(k, a) for a in ("arm", "optimize", "unoptimize", "disarm")
             for k in ("kp0", "kp1")], cpus=3),
    Scenario(
        "static_key_two", "two keys, 2 jump-label sites each, interleaved in the text: "
        "enabling or disabling one key patches only its own sites",
        sites=[JumpLabel(f"jl{i}", key=f"k{i % 2}") for i in range(4)],
        ops=[StaticKey("k0", True), StaticKey("k1", True), StaticKey("k0", False),
             StaticKey("k1", False)], cpus=3),
    Scenario(
        "static_call_two", "two static_call keys, 2 CALL sites each: updating one key "
        "retargets only its own sites",
        sites=[CallSite("sc0", key="s0", funcs=FUNCS[:2]), CallSite("sc1", key="s1", funcs=FUNCS),
               CallSite("sc2", key="s0", funcs=FUNCS[:2]), CallSite("sc3", key="s1", funcs=FUNCS)],
        ops=[StaticCallUpdate("s0", "fn_b"), StaticCallUpdate("s1", "fn_c"),
             StaticCallUpdate("s1", "fn_b"), StaticCallUpdate("s0", "fn_a")], cpus=3),
    Scenario(
        "call_promotion", "a compare plus direct call whose target is re-patched repeatedly "
        "(dynamic indirect branch promotion)",
        sites=[CallSite("promo", key="p0", funcs=FUNCS, promoted=True)],
        ops=[StaticCallUpdate("p0", f) for f in ("fn_b", "fn_c", "fn_a", "fn_b", "fn_c")]),
    Scenario(
        "z1_optprobe_shadow", "Z1: optimizing a kprobe while a preempted task sits inside the "
        "region it covers; buggy = no rcu-tasks wait", card="Z1",
        sites=[KprobeSite("kp0")], ops=[Kprobe("kp0", "arm"), Kprobe("kp0", "optimize")],
        variants=_zoo(Cfg.NO_QS_WAIT, "torn_execution"), default_variant="fixed",
        observer_nmis=12, nmi_rarity=24, handlers={"nmi": "preempt_nmi"}, cpus=3,
        nmi_points="sites"),  # preempt_nmi reads its own frame and task slot only
    Scenario(
        "z2_handler_vs_teardown", "Z2: poke_int3_handler reads the descriptor while the batch "
        "is torn down; buggy = no refcount wait (an INT3-only poke skips the final sync)",
        card="Z2", sites=[KprobeSite("kp0")], ops=[Kprobe("kp0", "arm_bp")],
        variants=_zoo(Cfg.NO_REFWAIT, "guest_fault|guest_assert"), default_variant="fixed",
        cpus=3),
    Scenario(
        "z3_call_emulation", "Z3: emulating a CALL from the INT3 handler; buggy = no stack gap "
        "(the push lands on the IRET frame), buggy_nop = the call skipped",
        card="Z3", sites=[CallSite("sc0", key="s0", funcs=FUNCS[:2])],
        ops=[StaticCallUpdate("s0", "fn_b")],
        variants=_zoo(Cfg.NO_GAP, "guest_fault",
                      buggy_nop=Variant(Cfg.CALL_AS_NOP, "semantics")),
        default_variant="fixed", cpus=3),
    Scenario(
        "z4_bytewise", "Z4: NOP5 -> JMP32 written byte by byte without INT3 while another CPU "
        "executes it", card="Z4", sites=[JumpLabel("jl0", key="k0")],
        ops=[StaticKey("k0", True)],
        variants=_zoo(Cfg.NO_INT3, "torn_execution"), default_variant="fixed", cpus=3),
    Scenario(
        "z5_record_placement", "Z5: where the text-poke record is emitted; buggy = before the "
        "INT3 sync, buggy_late = after the first byte (seen by the trace decoder)",
        card="Z5", sites=[JumpLabel("jl0", key="k0")],
        ops=[StaticKey("k0", True), StaticKey("k0", False)],
        variants=_zoo(Cfg.RECORD_EARLY, "decode_divergence|ambiguous",
                      buggy_late=Variant(Cfg.RECORD_LATE, "decode_divergence|ambiguous")),
        default_variant="fixed", cpus=2),
    Scenario(
        "z6_unsorted_batch", "Z6: a batch whose vector is not sorted by address: the handler's "
        "bsearch misses a site", card="Z6",
        sites=[JumpLabel(f"jl{i}", key="k0") for i in range(4)],
        ops=[StaticKey("k0", True)], jump_order="descending",
        variants=_zoo(Cfg.UNSORTED, "unexpected_trap"), default_variant="fixed", cpus=3),
    Scenario(
        "z7_trampoline_free", "Z7: a trampoline freed while a task sleeps inside it; buggy = "
        "freed after rcu-tasks only, not after its last user", card="Z7",
        sites=[CallSite("tr0", key="t0", funcs=("tramp_1", "tramp_2"))],
        ops=[Raw(Z7_WAIT_SLEEPER), StaticCallUpdate("t0", "tramp_2"),
             Raw("    call tramp_retire\n")],
        variants=_zoo(Cfg.FREE_EARLY, "unexpected_trap"), default_variant="fixed",
        extra_asm=Z7_ASM, cpus=3, initial_wait=0),
]}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
