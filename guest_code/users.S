# The users of text_poke, as the kernel has them, plus the observers' outcome check.
# Tables are built by harness/guest.py in shared data; equates as in alternative.S.

# make_rel32(buf=rdi, site=rsi, target=rdx, opcode=cl): the 5 bytes of a CALL (e8) or JMP32
# (e9) to `target` when placed at `site`. make_jmp32(buf, site, target): the JMP32 one.
make_jmp32:
    mov ecx, 0xe9
make_rel32:
    mov byte ptr [rdi], cl
    sub rdx, rsi
    sub rdx, 5
    mov dword ptr [rdi + 1], edx
    ret

# ------------------------------------------------------------------ jump labels
# static_key_set(key=rdi, enabled=rsi): key->enabled = enabled, then jump_label_update():
# for every jump entry of the key, arch_jump_label_transform_queue() -> text_poke_queue() of a
# JMP32 to the entry's target (enabled) or the kernel's NOP5 (disabled); then
# arch_jump_label_transform_apply() -> text_poke_finish().
# V_JUMP_TABLE: { u64 code; u64 target; u64 key } x V_JUMP_NR, in the kernel's sort order.
static_key_set:
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 24                          # u8 insn[5] -- the queued opcode is copied
    mov r12, rdi
    mov r13, rsi
    mov qword ptr [r12], r13
    xor ebx, ebx
sks_loop:
    cmp rbx, qword ptr [V_JUMP_NR]
    jae sks_apply
    lea r14, [rbx + rbx*2]
    shl r14, 3
    mov rax, V_JUMP_TABLE
    add r14, rax
    cmp qword ptr [r14 + 16], r12
    jne sks_next
    test r13, r13
    jz sks_nop
    mov rdi, rsp                         # JMP32 to the entry's target
    mov rsi, qword ptr [r14]
    mov rdx, qword ptr [r14 + 8]
    mov ecx, 0xe9
    call make_rel32
    jmp sks_queue
sks_nop:
    mov dword ptr [rsp], 0x00441f0f      # x86_nops[5]
    mov byte ptr [rsp + 4], 0
sks_queue:
    mov rdi, qword ptr [r14]
    mov rsi, rsp
    mov edx, 5
    xor ecx, ecx
    call text_poke_queue
sks_next:
    inc rbx
    jmp sks_loop
sks_apply:
    call text_poke_finish
    add rsp, 24
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

# ------------------------------------------------------------------ static_call
# static_call_update(key=rdi, func=rsi): key->func = func; for every call site of the key,
# __static_call_transform(site, CALL, func) -> text_poke_bp(site, call insn, 5, NULL).
# V_SC_SITES: { u64 site; u64 key } x V_SC_NR.
static_call_update:
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 24
    mov r12, rdi
    mov r13, rsi
    mov qword ptr [r12], r13
    xor ebx, ebx
scu_loop:
    cmp rbx, qword ptr [V_SC_NR]
    jae scu_done
    mov r14, rbx
    shl r14, 4
    mov rax, V_SC_SITES
    add r14, rax
    cmp qword ptr [r14 + 8], r12
    jne scu_next
    mov rdi, rsp
    mov rsi, qword ptr [r14]
    mov rdx, r13
    mov ecx, 0xe8
    call make_rel32
    mov rdi, qword ptr [r14]
    mov rsi, rsp
    mov edx, 5
    xor ecx, ecx
    call text_poke_bp
scu_next:
    inc rbx
    jmp scu_loop
scu_done:
    add rsp, 24
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

# ------------------------------------------------------------------ kprobes
# struct kprobe (64 bytes): u64 addr; u64 slot; u64 armed; u64 hits; u64 detour;
#                           u8 opcode (the original first byte); u8 copied[4] (the tail)
# arch_arm_kprobe(kp=rdi): text_poke(addr, INT3, 1) then text_poke_sync() (5c02ece81848d).
# Then perf_event_text_poke(addr, &opcode, 1, &int3, 1) (3e46bb40af8c).
kprobe_arm:
    push rbx
    mov rbx, rdi
    mov qword ptr [rbx + 16], 1
    mov rdi, qword ptr [rbx]
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx]
    lea rsi, [rbx + 40]
    lea rdx, [rip + kp_int3]
    mov ecx, 1
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    pop rbx
    ret

# arch_disarm_kprobe(kp=rdi): perf_event_text_poke(addr, &int3, 1, &opcode, 1) first, then
# text_poke(addr, &opcode, 1) and text_poke_sync().
kprobe_disarm:
    push rbx
    mov rbx, rdi
    mov rdi, qword ptr [rbx]
    lea rsi, [rip + kp_int3]
    lea rdx, [rbx + 40]
    mov ecx, 1
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    mov rdi, qword ptr [rbx]
    lea rsi, [rbx + 40]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov qword ptr [rbx + 16], 0
    pop rbx
    ret

# optimize_kprobes(): synchronize_rcu_tasks(), then arch_optimize_kprobes(): a JMP32 to the
# detour buffer over the probed instruction and the short ones after it, by text_poke_bp().
kprobe_optimize:
    push rbx
    sub rsp, 16
    mov rbx, rdi
    test qword ptr [V_CFG], CFG_NO_QS_WAIT
    jnz kpo_poke                         # variant: no quiescence wait
    call synchronize_rcu_tasks
kpo_poke:
    mov rdi, rsp                         # JMP32 to the detour buffer
    mov rsi, qword ptr [rbx]
    mov rdx, qword ptr [rbx + 32]
    mov ecx, 0xe9
    call make_rel32
    mov rdi, qword ptr [rbx]
    mov rsi, rsp
    mov edx, 5
    xor ecx, ecx
    call text_poke_bp
    add rsp, 16
    pop rbx
    ret

# do_unoptimize_kprobes() -> arch_unoptimize_kprobe(): INT3 first, sync, then the original
# tail back, sync, and the text-poke record of the whole change (old: the JMP32, new: INT3 +
# original tail); then kprobe_optimizer() waits for rcu-tasks quiescence.
kprobe_unoptimize:
    push rbx
    sub rsp, 24
    mov rbx, rdi
    mov rsi, qword ptr [rbx]
    mov rax, qword ptr [rsi]
    mov qword ptr [rsp], rax             # old[5] = the JMP32
    mov byte ptr [rsp + 8], 0xcc         # new[5] = INT3 + copied tail
    mov eax, dword ptr [rbx + 41]
    mov dword ptr [rsp + 9], eax
    mov rdi, qword ptr [rbx]
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx]
    inc rdi
    lea rsi, [rbx + 41]
    mov edx, 4
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx]
    mov rsi, rsp
    lea rdx, [rsp + 8]
    mov ecx, 5
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    call synchronize_rcu_tasks           # kprobe_optimizer() step 2: quiescence before
    add rsp, 24                          # anything else is done to the probe
    pop rbx
    ret

kp_int3:
    .byte 0xcc


# ------------------------------------------------------------------ one-site building blocks
# For writing one's own poking sequence as a list of steps (see examples/): `tp` points at 32
# bytes: a struct text_poke_loc (16) and the site's old bytes (16..24).
# poke_prepare_jmp(tp=rdi, site=rsi, target=rdx): tp = `jmp target` at site, the old bytes
# saved, and tp published as the descriptor poke_int3_handler uses (vec = tp, nr = 1, and
# every CPU's refs = 1).
poke_prepare_jmp:
    push rbx
    push r12
    sub rsp, 8
    mov rbx, rdi
    mov r12, rsi
    mov rax, qword ptr [rsi]
    mov qword ptr [rbx + 16], rax
    mov rdi, rsp
    call make_jmp32
    mov rdi, rbx
    mov rsi, r12
    mov rdx, rsp
    mov ecx, 5
    xor r8d, r8d
    call text_poke_loc_init
    mov qword ptr [V_BP_VEC], rbx
    mov qword ptr [V_BP_NR], 1
    call bp_refs_set
    add rsp, 8
    pop r12
    pop rbx
    ret

poke_addr:                               # rax = the site of tp=rdi
    movsxd rax, dword ptr [rdi + TPL_REL]
    mov rcx, STEXT
    add rax, rcx
    ret

# poke_int3(tp): INT3 on the first byte.  poke_first(tp): the new first byte.
# poke_tail(tp): the new bytes 1..len.  poke_record(tp): the PERF_RECORD_TEXT_POKE.
poke_int3:
    call poke_addr
    mov rdi, rax
    lea rsi, [rip + kp_int3]
    mov edx, 1
    jmp text_poke
poke_first:
    mov rsi, rdi
    call poke_addr
    mov rdi, rax
    add rsi, TPL_TEXT
    mov edx, 1
    jmp text_poke
poke_tail:
    movzx edx, byte ptr [rdi + TPL_LEN]
    dec edx
    mov rsi, rdi
    call poke_addr
    lea rdi, [rax + 1]
    add rsi, TPL_TEXT + 1
    jmp text_poke
poke_record:
    mov r8, rdi
    call poke_addr
    mov rdi, rax
    lea rsi, [r8 + 16]
    lea rdx, [r8 + TPL_TEXT]
    movzx ecx, byte ptr [r8 + TPL_LEN]
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    ret

# poke_retire(): drop our reference, wait until no INT3 handler holds one, unpublish.
poke_retire:
    mov edi, 1
    call bp_refs_put
    mov qword ptr [V_BP_NR], 0
    ret

# ------------------------------------------------------------------ observers
# check_outcome(site=rdi, outcome=rsi, gen0=rdx): an execution of a site that started when
# V_DONE_GEN was gen0 may behave as any state from gen0 up to one past the generation done now
# (that patch may be in flight) -- and as nothing else. V_STATE_OUT[site][gen] holds the
# outcome of the site in state gen; V_OUTCOMES[site][outcome] counts what was seen.
check_outcome:
    mov rax, rsi
    cmp rax, 7
    jbe co_count
    mov eax, 7
co_count:
    mov rcx, rdi
    shl rcx, 3
    add rcx, rax
    lock inc qword ptr [V_OUTCOMES + rcx*8]
    mov rcx, qword ptr [V_DONE_GEN]
    inc rcx                              # the patch in flight
    cmp rcx, qword ptr [V_NGEN]
    jb co_hi
    mov rcx, qword ptr [V_NGEN]
    dec rcx
co_hi:
    mov r8, rdi
    imul r8, r8, MAX_GEN
co_loop:
    cmp rdx, rcx
    ja co_bad
    lea r9, [r8 + rdx]
    cmp qword ptr [V_STATE_OUT + r9*8], rsi
    je co_ok
    inc rdx
    jmp co_loop
co_bad:
    mov eax, HC_SEMANTICS                # rdi = site, rsi = outcome, rdx = past the range
    out HC_PORT, eax
co_dead:
    jmp co_dead
co_ok:
    ret

# wait_observer_passes(n=rdi): wait until every other online CPU finished n more passes.
wait_observer_passes:
    mov rsi, rdi
    mov rdi, V_PASSES
    jmp wait_cpus_advance

# ------------------------------------------------------------------ preemption (Z1)
# A timer-like NMI that preempts the running task: it saves the interrupted frame and registers
# in this CPU's task slot and IRETs into the idle task, which runs (taking IPIs, but passing no
# quiescent point for the preempted task) for a while and then switches back by IRETQ.
# V_TASK: per CPU 256 bytes: [0] in_idle, [8..48) frame, [48..) rax rcx rdx rsi rdi r8..r11.
preempt_nmi:
    push rax
    test qword ptr [rsp + 24], 0x200
    jz preempt_skip                      # interrupts off: not a preemptible context
    mov rax, qword ptr gs:[0]
    shl rax, 8
    add rax, V_TASK
    cmp qword ptr [rax], 0
    jne preempt_skip                     # already switched out: nothing to preempt
    mov qword ptr [rax], 1
    mov qword ptr [rax + 48], rcx        # save the task's scratch registers (rax below)
    mov qword ptr [rax + 56], rdx
    mov rcx, qword ptr [rsp]
    mov qword ptr [rax + 64], rcx        # the task's rax
    mov rcx, qword ptr [rsp + 8]         # the frame: ip, cs, flags, sp, ss
    mov qword ptr [rax + 8], rcx
    mov rcx, qword ptr [rsp + 16]
    mov qword ptr [rax + 16], rcx
    mov rcx, qword ptr [rsp + 24]
    mov qword ptr [rax + 24], rcx
    mov rcx, qword ptr [rsp + 32]
    mov qword ptr [rax + 32], rcx
    mov rcx, qword ptr [rsp + 40]
    mov qword ptr [rax + 40], rcx
    lea rcx, [rip + idle_task]           # return into the idle task instead, IF=1, on the
    mov qword ptr [rsp + 8], rcx         # idle stack (the top of this CPU's task slot area)
    or qword ptr [rsp + 24], 0x200
    mov rdx, V_IDLE_STACKS
    mov rcx, qword ptr gs:[0]
    inc rcx
    shl rcx, 12
    add rcx, rdx
    mov qword ptr [rsp + 32], rcx
    pop rax
    iretq
preempt_skip:
    pop rax
    iretq

idle_task:
    mov ecx, PREEMPT_SPIN
idle_spin:
    pause
    dec ecx
    jnz idle_spin
    cli                                  # switch back: rebuild the task's frame and IRETQ
    mov rax, qword ptr gs:[0]
    shl rax, 8
    add rax, V_TASK
    mov rsp, qword ptr [rax + 32]        # the task's stack, 16-aligned below as hardware does
    and rsp, -16
    push qword ptr [rax + 40]
    push qword ptr [rax + 32]
    push qword ptr [rax + 24]
    push qword ptr [rax + 16]
    push qword ptr [rax + 8]
    mov rcx, qword ptr [rax + 48]
    mov rdx, qword ptr [rax + 56]
    mov qword ptr [rax], 0
    mov rax, qword ptr [rax + 64]
    iretq
