# The users of text_poke, as the kernel has them, plus the observers' outcome check.
# Tables are built by harness/guest.py in shared data; equates as in alternative.S (every
# structure's offsets and size from harness/guest_abi.py).

# make_rel32(buf=rdi, site=rsi, target=rdx, opcode=cl): the 5 bytes of a CALL (e8) or JMP32
# (e9) to `target` when placed at `site`. make_jmp32(buf, site, target): the JMP32 one.
make_jmp32:
    mov ecx, JMP32_INSN_OPCODE
make_rel32:
    mov byte ptr [rdi + TPI_OPCODE], cl
    sub rdx, rsi
    sub rdx, TPI_SIZE
    mov dword ptr [rdi + TPI_DISP], edx
    ret

# ------------------------------------------------------------------ jump labels
# static_key_set(key=rdi, enabled=rsi): key->enabled = enabled, then jump_label_update():
# for every jump entry of the key, arch_jump_label_transform_queue() -> text_poke_queue() of a
# JMP32 to the entry's target (enabled) or the kernel's NOP5 (disabled); then
# arch_jump_label_transform_apply() -> text_poke_finish().
# V_JUMP_TABLE: struct jump_entry (JUMP_*) x V_JUMP_NR, in the kernel's sort order.
static_key_set:
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 24                          # u8 insn[5] -- the queued opcode is copied
    mov r12, rdi
    mov r13, rsi
    mov qword ptr [r12 + KEY_ENABLED], r13
    xor ebx, ebx
sks_loop:
    cmp rbx, qword ptr [V_JUMP_NR]
    jae sks_apply
    imul r14, rbx, JUMP_SIZE
    mov rax, V_JUMP_TABLE
    add r14, rax
    cmp qword ptr [r14 + JUMP_KEY], r12
    jne sks_next
    test r13, r13
    jz sks_nop
    mov rdi, rsp                         # JMP32 to the entry's target
    mov rsi, qword ptr [r14 + JUMP_CODE]
    mov rdx, qword ptr [r14 + JUMP_TARGET]
    mov ecx, JMP32_INSN_OPCODE
    call make_rel32
    jmp sks_queue
sks_nop:
    mov dword ptr [rsp], 0x00441f0f      # x86_nops[5]
    mov byte ptr [rsp + 4], 0
sks_queue:
    mov rdi, qword ptr [r14 + JUMP_CODE]
    mov rsi, rsp
    mov edx, JMP32_INSN_SIZE
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
# V_SC_SITES: struct static_call_site (SCS_*) x V_SC_NR.
static_call_update:
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 24
    mov r12, rdi
    mov r13, rsi
    mov qword ptr [r12 + SCK_FUNC], r13
    xor ebx, ebx
scu_loop:
    cmp rbx, qword ptr [V_SC_NR]
    jae scu_done
    mov r14, rbx
    imul r14, r14, SCS_SIZE
    mov rax, V_SC_SITES
    add r14, rax
    cmp qword ptr [r14 + SCS_KEY], r12
    jne scu_next
    mov rdi, rsp
    mov rsi, qword ptr [r14 + SCS_ADDR]
    mov rdx, r13
    mov ecx, CALL_INSN_OPCODE
    call make_rel32
    mov rdi, qword ptr [r14 + SCS_ADDR]
    mov rsi, rsp
    mov edx, CALL_INSN_SIZE
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
# struct kprobe (KPROBE_*): u64 addr; u64 slot; u64 armed; u64 hits; u64 detour;
#                          u8 opcode (the original first byte); u8 copied[4] (the tail)
# arch_arm_kprobe(kp=rdi): text_poke(addr, INT3, 1) then text_poke_sync() (5c02ece81848d).
# Then perf_event_text_poke(addr, &opcode, 1, &int3, 1) (3e46bb40af8c).
kprobe_arm:
    push rbx
    mov rbx, rdi
    mov qword ptr [rbx + KPROBE_ARMED], 1
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    lea rsi, [rbx + KPROBE_OPCODE]
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
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    lea rsi, [rip + kp_int3]
    lea rdx, [rbx + KPROBE_OPCODE]
    mov ecx, 1
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    lea rsi, [rbx + KPROBE_OPCODE]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov qword ptr [rbx + KPROBE_ARMED], 0
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
    mov rsi, qword ptr [rbx + KPROBE_ADDR]
    mov rdx, qword ptr [rbx + KPROBE_DETOUR]
    mov ecx, JMP32_INSN_OPCODE
    call make_rel32
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    mov rsi, rsp
    mov edx, JMP32_INSN_SIZE
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
    mov rsi, qword ptr [rbx + KPROBE_ADDR]
    mov rax, qword ptr [rsi]
    mov qword ptr [rsp], rax             # old[5] = the JMP32
    mov byte ptr [rsp + 8], INT3_INSN_OPCODE   # new[5] = INT3 + copied tail
    mov eax, dword ptr [rbx + KPROBE_COPIED]
    mov dword ptr [rsp + 9], eax
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    lea rsi, [rip + kp_int3]
    mov edx, 1
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    inc rdi
    lea rsi, [rbx + KPROBE_COPIED]
    mov edx, 4
    call text_poke
    call text_poke_sync
    mov rdi, qword ptr [rbx + KPROBE_ADDR]
    mov rsi, rsp
    lea rdx, [rsp + 8]
    mov ecx, JMP32_INSN_SIZE
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    call synchronize_rcu_tasks           # kprobe_optimizer() step 2: quiescence before
    add rsp, 24                          # anything else is done to the probe
    pop rbx
    ret

kp_int3:
    .byte INT3_INSN_OPCODE


# ------------------------------------------------------------------ one-site building blocks
# For writing one's own poking sequence as a list of steps (see examples/): `tp` points at a
# struct poke_steps (PS_*): a struct text_poke_loc and the site's old bytes.
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
    mov qword ptr [rbx + PS_OLD], rax
    mov rdi, rsp
    call make_jmp32
    lea rdi, [rbx + PS_TP]
    mov rsi, r12
    mov rdx, rsp
    mov ecx, JMP32_INSN_SIZE
    xor r8d, r8d
    call text_poke_loc_init
    lea rax, [rbx + PS_TP]
    mov qword ptr [V_BP_DESC + BPD_VEC], rax
    mov qword ptr [V_BP_DESC + BPD_NR_ENTRIES], 1
    call bp_refs_set
    add rsp, 8
    pop r12
    pop rbx
    ret

poke_addr:                               # rax = the site of tp=rdi (struct poke_steps)
    movsxd rax, dword ptr [rdi + PS_TP + TPL_REL_ADDR]
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
    add rsi, PS_TP + TPL_TEXT
    mov edx, 1
    jmp text_poke
poke_tail:
    movzx edx, byte ptr [rdi + PS_TP + TPL_LEN]
    dec edx
    mov rsi, rdi
    call poke_addr
    lea rdi, [rax + 1]
    add rsi, PS_TP + TPL_TEXT + 1
    jmp text_poke
poke_record:
    mov r8, rdi
    call poke_addr
    mov rdi, rax
    lea rsi, [r8 + PS_OLD]
    lea rdx, [r8 + PS_TP + TPL_TEXT]
    movzx ecx, byte ptr [r8 + PS_TP + TPL_LEN]
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    ret

# poke_retire(): drop our reference, wait until no INT3 handler holds one, unpublish.
poke_retire:
    mov edi, 1
    call bp_refs_put
    mov qword ptr [V_BP_DESC + BPD_NR_ENTRIES], 0
    ret

# ------------------------------------------------------------------ observers
# check_outcome(site=rdi, outcome=rsi, gen0=rdx): an execution of a site that started when
# V_DONE_GEN was gen0 may behave as any state from gen0 up to one past the generation done now
# (that patch may be in flight) -- and as nothing else. V_STATE_OUT[site][NGEN] holds the
# outcome of the site in each generation's state; V_OUTCOMES[site][OUTCOMES_PER_SITE] counts
# what was seen (the last counter: any outcome beyond).
check_outcome:
    mov rax, rsi
    cmp rax, OUTCOMES_PER_SITE - 1
    jbe co_count
    mov eax, OUTCOMES_PER_SITE - 1
co_count:
    mov rcx, rdi
    imul rcx, rcx, OUTCOMES_PER_SITE
    add rcx, rax
    lock inc qword ptr [V_OUTCOMES + rcx*8]
    mov rcx, qword ptr [V_DONE_GEN]
    inc rcx                              # the patch in flight
    cmp rcx, NGEN
    jb co_hi
    mov ecx, NGEN
    dec rcx
co_hi:
    mov r8, rdi
    imul r8, r8, NGEN
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
# V_TASK: per CPU a struct task_slot (TASK_*): in_idle, the task's frame, rcx rdx rax.
# On the NMI stack: the task's rax (pushed here, 8 bytes), then the hardware frame.
preempt_nmi:
    push rax
    test qword ptr [rsp + 8 + FRAME_FLAGS], 0x200
    jz preempt_skip                      # interrupts off: not a preemptible context
    mov rax, qword ptr gs:[PERCPU_CPU]
    imul rax, rax, TASK_SIZE
    add rax, V_TASK
    cmp qword ptr [rax + TASK_IN_IDLE], 0
    jne preempt_skip                     # already switched out: nothing to preempt
    mov qword ptr [rax + TASK_IN_IDLE], 1
    mov qword ptr [rax + TASK_RCX], rcx  # save the task's scratch registers (rax below)
    mov qword ptr [rax + TASK_RDX], rdx
    mov rcx, qword ptr [rsp]
    mov qword ptr [rax + TASK_RAX], rcx  # the task's rax
    mov rcx, qword ptr [rsp + 8 + FRAME_IP]
    mov qword ptr [rax + TASK_FRAME + FRAME_IP], rcx
    mov rcx, qword ptr [rsp + 8 + FRAME_CS]
    mov qword ptr [rax + TASK_FRAME + FRAME_CS], rcx
    mov rcx, qword ptr [rsp + 8 + FRAME_FLAGS]
    mov qword ptr [rax + TASK_FRAME + FRAME_FLAGS], rcx
    mov rcx, qword ptr [rsp + 8 + FRAME_SP]
    mov qword ptr [rax + TASK_FRAME + FRAME_SP], rcx
    mov rcx, qword ptr [rsp + 8 + FRAME_SS]
    mov qword ptr [rax + TASK_FRAME + FRAME_SS], rcx
    lea rcx, [rip + idle_task]           # return into the idle task instead, IF=1, on the
    mov qword ptr [rsp + 8 + FRAME_IP], rcx    # idle stack (this CPU's, its top)
    or qword ptr [rsp + 8 + FRAME_FLAGS], 0x200
    mov rdx, V_IDLE_STACKS
    mov rcx, qword ptr gs:[PERCPU_CPU]
    inc rcx
    imul rcx, rcx, IDLE_STACK_SIZE
    add rcx, rdx
    mov qword ptr [rsp + 8 + FRAME_SP], rcx
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
    mov rax, qword ptr gs:[PERCPU_CPU]
    imul rax, rax, TASK_SIZE
    add rax, V_TASK
    mov rsp, qword ptr [rax + TASK_FRAME + FRAME_SP]   # the task's stack, 16-aligned below
    and rsp, -16                                       # as hardware does
    push qword ptr [rax + TASK_FRAME + FRAME_SS]
    push qword ptr [rax + TASK_FRAME + FRAME_SP]
    push qword ptr [rax + TASK_FRAME + FRAME_FLAGS]
    push qword ptr [rax + TASK_FRAME + FRAME_CS]
    push qword ptr [rax + TASK_FRAME + FRAME_IP]
    mov rcx, qword ptr [rax + TASK_RCX]
    mov rdx, qword ptr [rax + TASK_RDX]
    mov qword ptr [rax + TASK_IN_IDLE], 0
    mov rax, qword ptr [rax + TASK_RAX]
    iretq
