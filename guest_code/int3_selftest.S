# An analogue of int3_selftest() (arch/x86/kernel/alternative.c): an INT3 padded with NOPs to
# the size of a CALL sits at a known IP; the #BP path (int3_entry -> poke_int3_handler) emulates
# `call int3_magic(&val)` there. It must return right after the padding, with val = 1, the
# stack pointer and the callee-saved registers as they were. RSP is 16-byte aligned at the
# INT3, the case in which the emulated push would hit the IRET frame without the stack gap.
int3_selftest:
    sub rsp, 16                          # union text_poke_insn: e8 <int3_magic>
    mov byte ptr [rsp + TPI_OPCODE], CALL_INSN_OPCODE
    lea rax, [rip + int3_magic]
    lea rcx, [rip + int3_selftest_ip]
    sub rax, rcx
    sub rax, CALL_INSN_SIZE
    mov dword ptr [rsp + TPI_DISP], eax
    mov rdi, V_SCRATCH + I3ST_TP         # struct text_poke_loc tp (struct int3_selftest)
    mov rsi, rcx
    mov rdx, rsp
    mov ecx, CALL_INSN_SIZE
    xor r8d, r8d
    call text_poke_loc_init
    add rsp, 16
    mov rax, V_SCRATCH + I3ST_TP
    mov qword ptr [V_BP_DESC + BPD_VEC], rax
    mov qword ptr [V_BP_DESC + BPD_NR_ENTRIES], 1
    call bp_refs_set
    mov rbx, 0x1111
    mov rbp, 0x2222
    mov r12, 0x3333
    mov r13, 0x4444
    mov r14, 0x5555
    mov r15, rsp
    mov rdi, V_SCRATCH + I3ST_VAL        # &val
    and rsp, -16
    mov r15, rsp
int3_selftest_ip:
    int3
    KNOP 4
int3_selftest_ret:
    cmp qword ptr [V_SCRATCH + I3ST_VAL], 1
    jne int3_selftest_bad
    cmp rsp, r15
    jne int3_selftest_bad
    cmp rbx, 0x1111
    jne int3_selftest_bad
    cmp rbp, 0x2222
    jne int3_selftest_bad
    cmp r12, 0x3333
    jne int3_selftest_bad
    cmp r13, 0x4444
    jne int3_selftest_bad
    cmp r14, 0x5555
    jne int3_selftest_bad
    mov eax, HC_FINISH
    out HC_PORT, eax
int3_selftest_bad:
    mov edi, 1
    xor esi, esi
    mov eax, HC_ASSERT
    out HC_PORT, eax

int3_magic:                              # static void int3_magic(unsigned *ptr) { *ptr = 1; }
    mov qword ptr [rdi], 1
    ret
