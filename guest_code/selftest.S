# Machine self-checks (issue 2). Each routine is real ring-0 x86-64 code; the harness boots
# CPUs at `*_cpu0` / `*_cpu1` entries and inspects memory, ground truth and events afterwards.
# Data equates (V_*) come from emu.selftest; POKE_DELTA maps a text address to its writable
# alias (the text_poke mapping). Hypercall form: out HC_PORT, eax (see emu/hypercall.py).
# Text addresses are formed in a register (lea rdi, [rip + label]): guest code is assembled
# position-independent (see emu/asm.py), so a label is never an absolute memory operand.

# ---------------------------------------------------------------- the patched site
site_fn:
site_insn:
    mov eax, 0x11111111          # patched to mov eax, 0x22222222 (imm bytes at site_insn+1)
    ret

# ---------------------------------------------------------------- cross-modifying code
# cpu1: executes site_fn in a loop until told to stop.
xmc_cpu1:
    call site_fn
    mov dword ptr [V_OBS_LAST], eax
    lock inc qword ptr [V_OBS_ITERS]
    cmp qword ptr [V_STOP], 0
    je xmc_cpu1
    mov eax, HC_FINISH
    out HC_PORT, eax

# sync IPI handler (CALL_FUNCTION_VECTOR): runs the site *before* its IRETQ, so what it sees
# shows whether taking the IPI serialized this CPU's instruction fetch.
xmc_ipi:
    push rax
    call site_fn
    mov dword ptr [V_IPI_SEEN], eax
    mov qword ptr [V_IPI_ACK], 1
    pop rax
    iretq

# cpu0: patch the immediate through the poking alias, let cpu1 run stale, sync it by IPI.
xmc_cpu0:
    cmp qword ptr [V_OBS_ITERS], 2
    jb xmc_cpu0
    lea rdi, [rip + site_insn]
    mov dword ptr [rdi + POKE_DELTA + 1], 0x22222222    # through the writable alias
    mov rax, qword ptr [V_OBS_ITERS]
    add rax, 3
xmc_w1:
    cmp qword ptr [V_OBS_ITERS], rax
    jb xmc_w1
    mov edi, 2
    mov esi, 0xfc
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
xmc_w2:
    cmp qword ptr [V_IPI_ACK], 0
    je xmc_w2
    mov rax, qword ptr [V_OBS_ITERS]
    add rax, 3
xmc_w3:
    cmp qword ptr [V_OBS_ITERS], rax
    jb xmc_w3
    mov qword ptr [V_STOP], 1
    mov eax, HC_FINISH
    out HC_PORT, eax

# ---------------------------------------------------------------- own writes
own_cpu0:
    call site_fn                 # run (and translated) with the old bytes first
    mov dword ptr [V_OBS_FIRST], eax
    lea rdi, [rip + site_insn]
    mov dword ptr [rdi + POKE_DELTA + 1], 0x22222222
    call site_fn                 # the new bytes at once: x86 snoops its own stores
    mov dword ptr [V_OBS_LAST], eax
    mov eax, HC_FINISH
    out HC_PORT, eax

# ---------------------------------------------------------------- INT3 and #UD
int3_cpu0:
    mov ebx, 7
int3_insn:
    int3
int3_after:
    add ebx, 1
    mov dword ptr [V_OBS_LAST], ebx
    mov eax, HC_FINISH
    out HC_PORT, eax

bp_handler:
    lock inc qword ptr [V_TRAPS]
    mov rax, qword ptr [rsp]
    mov qword ptr [V_FRAME_RIP], rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [V_FRAME_CS], rax
    iretq

ud_cpu0:
    mov ebx, 7
ud_insn:
    .byte 0x0f, 0x0b             # ud2: Unicorn reports it as an invalid instruction
ud_after:
    add ebx, 1
    mov dword ptr [V_OBS_LAST], ebx
    mov eax, HC_FINISH
    out HC_PORT, eax

ud_handler:
    lock inc qword ptr [V_TRAPS]
    mov rax, qword ptr [rsp]
    mov qword ptr [V_FRAME_RIP], rax
    add qword ptr [rsp], 2       # skip the 2-byte invalid instruction
    iretq

# ---------------------------------------------------------------- NMI
# cpu1 spins with interrupts off; cpu0 sends it two NMIs, the second while the first handler
# is still running: it must wait for the handler's IRETQ.
nmi_cpu1:
    cli
nmi_loop:
    lock inc qword ptr [V_OBS_ITERS]
    cmp qword ptr [V_STOP], 0
    je nmi_loop
    mov eax, HC_FINISH
    out HC_PORT, eax

nmi_handler:
    push rax
    lock inc qword ptr [V_NMI_DEPTH]
    mov rax, qword ptr [V_NMI_DEPTH]
    cmp rax, qword ptr [V_NMI_MAXDEPTH]
    jbe nmi_h1
    mov qword ptr [V_NMI_MAXDEPTH], rax
nmi_h1:
    lock inc qword ptr [V_NMI_ENTRIES]
    cmp qword ptr [V_NMI_ENTRIES], 1
    jne nmi_h3
nmi_h2:
    cmp qword ptr [V_NMI_SECOND], 0   # first NMI: stay until the second one was sent
    je nmi_h2
    mov eax, 64
nmi_spin:
    dec eax
    jnz nmi_spin
nmi_h3:
    lock dec qword ptr [V_NMI_DEPTH]
    pop rax
    iretq

nmi_cpu0:
    cmp qword ptr [V_OBS_ITERS], 2
    jb nmi_cpu0
    mov edi, 2
    mov esi, 2
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
nmi_w1:
    cmp qword ptr [V_NMI_ENTRIES], 1
    jb nmi_w1
    mov edi, 2
    mov esi, 2
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
    mov qword ptr [V_NMI_SECOND], 1
nmi_w2:
    cmp qword ptr [V_NMI_ENTRIES], 2
    jb nmi_w2
    mov qword ptr [V_STOP], 1
    mov eax, HC_FINISH
    out HC_PORT, eax

# ---------------------------------------------------------------- #PF on a text write
pf_cpu0:
    lea rdi, [rip + site_insn]
pf_store:
    mov byte ptr [rdi], 0x90         # through the executable mapping: read-only
pf_after:
    mov eax, HC_FINISH
    out HC_PORT, eax

pf_handler:
    lock inc qword ptr [V_TRAPS]
    mov rax, cr2
    mov qword ptr [V_PF_CR2], rax
    mov rax, qword ptr [rsp]         # error code
    mov qword ptr [V_PF_ERR], rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [V_FRAME_RIP], rax
    lea rax, [rip + pf_after]
    mov qword ptr [rsp + 8], rax     # resume after the faulting store
    add rsp, 8                       # drop the error code
    iretq

# ---------------------------------------------------------------- virtual TSC
tsc_cpu0:
rdtsc_1:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov qword ptr [V_TSC1], rax
rdtsc_2:
    rdtscp
    shl rdx, 32
    or rax, rdx
    mov qword ptr [V_TSC2], rax
    mov eax, HC_FINISH
    out HC_PORT, eax

# ---------------------------------------------------------------- runaway
hang_cpu0:
    jmp hang_cpu0

# ---------------------------------------------------------------- idle CPU
idle_cpu:
    mov eax, HC_FINISH
    out HC_PORT, eax

# ---------------------------------------------------------------- fatal exceptions
df_handler:
    mov edi, 8
    lea rsi, [rsp + 8]               # the frame's RIP, past the error code
    mov eax, HC_FAULT
    out HC_PORT, eax
    jmp df_handler
