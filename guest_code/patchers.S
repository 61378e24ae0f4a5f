# Several patcher CPUs (Scenario.patchers): assembled only into a scenario with more than one,
# so every single-patcher build is what it was.
#
# CPUs 0 .. NPATCHERS-1 each run their own list of ops; CPUs NPATCHERS.. run the observer loop.
#  - Each op runs under text_mutex, as every caller of text_poke_bp() does in the kernel
#    (arch_jump_label_transform_apply(), arch_static_call_transform(), arm_kprobe() and
#    kprobe_optimizer() take it; text_poke_bp_batch() asserts it is held): one
#    bp_patching_desc, one tp_vec, one text_poke_sync() at a time. The no_text_mutex variant
#    (CFG_NO_TEXT_MUTEX) drops it.
#  - V_DONE_GEN counts every patcher's progress at once, in mixed radix: patcher p adds its
#    stride (the product of (ops + 1) of the patchers before it) after each op, one atomic add,
#    so an observer's single read is a consistent snapshot of all of them. A site is changed by
#    one patcher only (build() checks): its generation is that patcher's digit
#    (V_SITE_GEN[site] = {stride, radix}).
#  - A patcher waiting (for the mutex, for observer passes, for the others to finish) holds
#    nothing: like a task asleep in the kernel it is in a quiescent state, so it passes one
#    (V_QS) each time round -- synchronize_rcu_tasks() on another patcher would wait for ever
#    otherwise -- and it keeps interrupts enabled, so text_poke_sync()'s IPIs are answered.

# text_mutex_lock(): take V_TEXT_MUTEX (0: free; else the owner's CPU + 1), spinning.
text_mutex_lock:
    test qword ptr [V_CFG], CFG_NO_TEXT_MUTEX
    jnz tml_done
    mov rcx, qword ptr gs:[PERCPU_CPU]
    lea rdx, [rcx + 1]
tml_try:
    xor eax, eax
    lock cmpxchg qword ptr [V_TEXT_MUTEX], rdx
    je tml_done
    lock inc qword ptr [V_QS + rcx*8]     # asleep in mutex_lock(): quiescent
    pause
    jmp tml_try
tml_done:
    ret

# text_mutex_unlock()
text_mutex_unlock:
    test qword ptr [V_CFG], CFG_NO_TEXT_MUTEX
    jnz tmu_done
    mov qword ptr [V_TEXT_MUTEX], 0
tmu_done:
    ret

# patcher_wait_passes(n=rdi): wait until every observer CPU (NPATCHERS..) finished n more
# passes, passing quiescent points meanwhile.
patcher_wait_passes:
    push rbx
    push r12
    sub rsp, CPUS_BYTES
    mov r12, qword ptr gs:[PERCPU_CPU]
    mov ebx, NPATCHERS
pwp_snap:
    cmp rbx, NCPUS
    jae pwp_start
    mov rax, qword ptr [V_PASSES + rbx*8]
    add rax, rdi
    mov qword ptr [rsp + rbx*8], rax
    inc rbx
    jmp pwp_snap
pwp_start:
    mov ebx, NPATCHERS
pwp_wait:
    cmp rbx, NCPUS
    jae pwp_done
    bt qword ptr [V_ONLINE], rbx
    jnc pwp_next
pwp_spin:
    mov rax, qword ptr [V_PASSES + rbx*8]
    cmp rax, qword ptr [rsp + rbx*8]
    jae pwp_next
    lock inc qword ptr [V_QS + r12*8]
    pause
    jmp pwp_spin
pwp_next:
    inc rbx
    jmp pwp_wait
pwp_done:
    add rsp, CPUS_BYTES
    pop r12
    pop rbx
    ret

# patcher_finish(): this patcher's ops are done. Patcher 0 waits for the others, then stops
# the observers; the others wait for that. Every patcher finishes after V_STOP, so none is
# gone while another may still send it a text_poke_sync() IPI.
patcher_finish:
    lock inc qword ptr [V_PATCHERS_DONE]
    mov rcx, qword ptr gs:[PERCPU_CPU]
    test rcx, rcx
    jnz pf_wait_stop
pf_wait_all:
    cmp qword ptr [V_PATCHERS_DONE], NPATCHERS
    jae pf_stop
    lock inc qword ptr [V_QS + rcx*8]
    pause
    jmp pf_wait_all
pf_stop:
    mov qword ptr [V_STOP], 1
    jmp pf_done
pf_wait_stop:
    cmp qword ptr [V_STOP], 0
    jne pf_done
    lock inc qword ptr [V_QS + rcx*8]
    pause
    jmp pf_wait_stop
pf_done:
    mov eax, HC_FINISH
    out HC_PORT, eax
pf_dead:
    jmp pf_dead

# check_outcome_gens(site=rdi, outcome=rsi, gen0=rdx): check_outcome (users.S) with each
# site's generation its own patcher's digit of V_DONE_GEN: any state from the digit at gen0 up
# to one past the digit now (that patcher's op may be in flight), and nothing else.
check_outcome_gens:
    mov rax, rsi
    cmp rax, OUTCOMES_PER_SITE - 1
    jbe cog_count
    mov eax, OUTCOMES_PER_SITE - 1
cog_count:
    mov rcx, rdi
    imul rcx, rcx, OUTCOMES_PER_SITE
    add rcx, rax
    lock inc qword ptr [V_OUTCOMES + rcx*8]
    mov r10, rdi
    shl r10, 4
    mov r8, qword ptr [V_SITE_GEN + r10]      # stride
    mov r9, qword ptr [V_SITE_GEN + r10 + 8]  # radix: the patcher's ops + 1
    mov rax, rdx                              # the digit at gen0
    xor edx, edx
    div r8
    xor edx, edx
    div r9
    mov r11, rdx
    mov rax, qword ptr [V_DONE_GEN]           # the digit now, plus the op in flight
    xor edx, edx
    div r8
    xor edx, edx
    div r9
    lea rcx, [rdx + 1]
    cmp rcx, r9
    jb cog_hi
    lea rcx, [r9 - 1]
cog_hi:
    mov r8, rdi
    imul r8, r8, NGEN
cog_loop:
    cmp r11, rcx
    ja cog_bad
    lea r9, [r8 + r11]
    cmp qword ptr [V_STATE_OUT + r9*8], rsi
    je cog_ok
    inc r11
    jmp cog_loop
cog_bad:
    mov rdx, r11
    mov eax, HC_SEMANTICS                     # rdi = site, rsi = outcome, rdx = past the range
    out HC_PORT, eax
cog_dead:
    jmp cog_dead
cog_ok:
    ret
