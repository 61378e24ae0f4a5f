# A reimplementation of the INT3-based text patching of Linux 5.15,
# arch/x86/kernel/alternative.c: text_poke(), text_poke_sync(), text_poke_bp_batch(),
# text_poke_loc_init(), text_poke_queue() / text_poke_finish(), text_poke_bp(), and
# poke_int3_handler() behind the #BP entry (with the stack gap of the x86_64 int3 idtentry),
# with the per-CPU descriptor references Linux took in 2025 (bp_refs below).
#
# Calling convention: System V (args rdi, rsi, rdx, rcx, r8; rbx, rbp, r12-r15 preserved).
# Data (V_*), variant bits (CFG_*) and STEXT / POKE_DELTA are equates supplied by
# harness/guest.py; every structure's offsets and size (TPL_*, BPD_*, KPROBE_*, FRAME_*, ...)
# are generated from its one declaration in harness/guest_abi.py: no offset or stride here is a
# bare number. Every variant bit drops or moves one step, so that a buggy sequence is real
# guest code too; with V_CFG = 0 this is the kernel's sequence.
#
# struct text_poke_loc (TPL_*): s32 rel_addr; s32 disp; u8 len; u8 opcode; u8 text[5]; u8 old;
# struct bp_patching_desc at V_BP_DESC (BPD_*): vec, nr_entries; its references are per CPU,
# V_BP_REFS[cpu], as Linux has had them since 2025 (Eric Dumazet, "x86/alternatives: Improve
# code-patching scalability by removing false sharing in poke_int3_handler()",
# lore 20250325043316.874518-1-edumazet@google.com): an INT3 handler only touches its own
# CPU's counter, the patcher sets and drains every CPU's.

# ------------------------------------------------------------------ text_poke
# text_poke(addr=rdi, src=rsi, len=rdx): copy through the writable alias of the text, the way
# Linux writes through its temporary poking mapping; one byte store at a time.
text_poke:
    mov r8, POKE_DELTA
    add rdi, r8
text_poke_loop:
    test rdx, rdx
    jz text_poke_done
    mov al, byte ptr [rsi]
    mov byte ptr [rdi], al
    inc rsi
    inc rdi
    dec rdx
    jmp text_poke_loop
text_poke_done:
    ret

# ------------------------------------------------------------------ bp_refs
# bp_refs_set(): for_each_possible_cpu(i) atomic_set_release(per_cpu_ptr(&bp_refs, i), 1).
# The release orders the descriptor before the refs: x86 stores are not reordered.
bp_refs_set:
    mov rdx, qword ptr [V_ONLINE]
brs_next:
    bsf rcx, rdx
    jz brs_done
    btr rdx, rcx
    mov qword ptr [V_BP_REFS + rcx*8], 1
    jmp brs_next
brs_done:
    ret

# bp_refs_put(wait=edi): for_each_possible_cpu(i) { if (!atomic_dec_and_test(refs_i))
# atomic_cond_read_acquire(refs_i, !VAL); } -- the wait skipped when edi is 0 (a variant).
# Afterwards no CPU can take a new reference: inc-not-zero fails on 0.
bp_refs_put:
    mov rdx, qword ptr [V_ONLINE]
brp_next:
    bsf rcx, rdx
    jz brp_done
    btr rdx, rcx
    lock dec qword ptr [V_BP_REFS + rcx*8]
    jz brp_next
    test edi, edi
    jz brp_next
brp_wait:
    pause
    cmp qword ptr [V_BP_REFS + rcx*8], 0
    jne brp_wait
    jmp brp_next
brp_done:
    ret

# ------------------------------------------------------------------ text_poke_sync
# text_poke_sync(): on_each_cpu(do_sync_core, NULL, 1). Set a call-function flag for every
# other online CPU, IPI them (CALL_FUNCTION_VECTOR), serialize here, and wait until every
# flag was cleared by its CPU's do_sync_core.
text_poke_sync:
    push rbx
    mov rbx, qword ptr gs:[PERCPU_CPU]
    mov rax, qword ptr [V_ONLINE]
    btr rax, rbx
    mov rdi, rax
    mov rdx, rax
tps_set:
    bsf rcx, rdx
    jz tps_send
    btr rdx, rcx
    mov qword ptr [V_CSD + rcx*8], 1
    jmp tps_set
tps_send:
    test rdi, rdi
    jz tps_local
    mov esi, CALL_FUNCTION_VECTOR
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
    mov rdx, rdi
tps_next:
    bsf rcx, rdx
    jz tps_local
    btr rdx, rcx
tps_spin:
    pause
    cmp qword ptr [V_CSD + rcx*8], 0
    jne tps_spin
    jmp tps_next
tps_local:
    xor eax, eax
    cpuid                                # sync_core() on this CPU too
    pop rbx
    ret

# The CALL_FUNCTION_VECTOR handler: do_sync_core() = sync_core(), then release the flag
# (csd_unlock: smp_store_release).
sync_core_ipi:
    push rax
    push rbx
    push rcx
    push rdx
    xor eax, eax
    cpuid
    mov rax, qword ptr gs:[PERCPU_CPU]
    mov qword ptr [V_CSD + rax*8], 0
    pop rdx
    pop rcx
    pop rbx
    pop rax
    iretq

# ------------------------------------------------------------------ perf_event_text_poke
# emit_records(tp=rdi, nr=rsi, olds=rdx): one PERF_RECORD_TEXT_POKE per entry, old bytes from
# olds[i*8], new bytes from tp[i].text (hypercall SIDEBAND: addr, &old, &new, len).
emit_records:
    push rbx
    push r12
    push r13
    push r14
    mov r12, rdi
    mov r13, rsi
    mov r14, rdx
    xor ebx, ebx
er_loop:
    cmp rbx, r13
    jae er_done
    mov rax, rbx
    imul rax, rax, TPL_SIZE
    add rax, r12
    movsxd rdi, dword ptr [rax + TPL_REL_ADDR]
    mov rcx, STEXT
    add rdi, rcx
    lea rsi, [r14 + rbx*8]
    lea rdx, [rax + TPL_TEXT]
    movzx ecx, byte ptr [rax + TPL_LEN]
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    inc rbx
    jmp er_loop
er_done:
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

# ------------------------------------------------------------------ text_poke_bp_batch
# text_poke_bp_batch(tp=rdi, nr=rsi).  The protocol, each step with its reason:
#  0. bp_desc = {tp, nr}; every CPU's refs = 1 with release, smp_wmb(): a CPU that sees our
#     INT3 must see a live descriptor (pairs with the handler's smp_rmb + try_get_desc on its
#     own CPU's refs).
#  1. INT3 on the first byte of every site, saving the old byte: from here on a CPU either
#     runs the old instruction or traps into poke_int3_handler, which emulates the new one.
#  2. text_poke_sync(): every CPU serialized, so none can still fetch the old first byte of
#     any site; now the tails may change under the INT3.
#  3. Write every tail, then emit the text-poke record (old + new bytes): before its timestamp a
#     trace decoder sees the old flow or the INT3, after it the new flow or the INT3.
#  4. text_poke_sync() if a tail was written ("very likely not necessary ... better safe").
#  5. Write every first byte that is not INT3: the new instruction is complete.
#  6. text_poke_sync() if a first byte was written: no CPU fetches the INT3 any more.
#  7. Drop our reference on every CPU and wait until no handler there holds one (matters when
#     the new instruction is itself INT3: step 6 then did not serialize against the handlers).
text_poke_bp_batch:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    sub rsp, OLDS_BYTES        # old bytes of each entry (u8 old[8] each)
    mov r12, rdi
    mov r13, rsi
    mov r15, STEXT
    mov qword ptr [V_BP_DESC + BPD_VEC], r12
    mov qword ptr [V_BP_DESC + BPD_NR_ENTRIES], r13
    call bp_refs_set                     # atomic_set_release() on every CPU's refs
    xor r14, r14                         # old[] = the current bytes of every site
bp_old0:
    cmp r14, r13
    jae bp_old0_done
    mov rbx, r14
    imul rbx, rbx, TPL_SIZE
    add rbx, r12
    movsxd rsi, dword ptr [rbx + TPL_REL_ADDR]
    add rsi, r15
    mov rax, qword ptr [rsi]
    mov qword ptr [rsp + r14*8], rax
    mov byte ptr [rbx + TPL_OLD], al     # tp[i].old = *addr  (a data read sees memory)
    inc r14
    jmp bp_old0
bp_old0_done:
    test qword ptr [V_CFG], CFG_NO_INT3
    jnz bp_plain
    xor r14, r14                         # step 1
bp_p1:
    cmp r14, r13
    jae bp_p1_done
    mov rbx, r14
    imul rbx, rbx, TPL_SIZE
    add rbx, r12
    movsxd rdi, dword ptr [rbx + TPL_REL_ADDR]
    add rdi, r15
    lea rsi, [rip + int3_insn_byte]
    mov edx, 1
    call text_poke
    inc r14
    jmp bp_p1
bp_p1_done:
    test qword ptr [V_CFG], CFG_RECORD_EARLY
    jz bp_sync1
    mov rdi, r12                         # variant: record before the INT3 is synced
    mov rsi, r13
    mov rdx, rsp
    call emit_records
bp_sync1:
    test qword ptr [V_CFG], CFG_NO_SYNC1
    jnz bp_p2                            # variant: no sync after the INT3 phase
    call text_poke_sync                  # step 2
bp_p2:
    xor ebp, ebp                         # step 3: do_sync
    xor r14, r14
bp_p2_loop:
    cmp r14, r13
    jae bp_p2_done
    mov rbx, r14
    imul rbx, rbx, TPL_SIZE
    add rbx, r12
    movzx edx, byte ptr [rbx + TPL_LEN]
    cmp edx, 1
    jbe bp_p2_next
    movsxd rdi, dword ptr [rbx + TPL_REL_ADDR]
    add rdi, r15
    inc rdi
    lea rsi, [rbx + TPL_TEXT + 1]
    dec edx
    call text_poke
    inc ebp
bp_p2_next:
    inc r14
    jmp bp_p2_loop
bp_p2_done:
    test qword ptr [V_CFG], CFG_RECORD_EARLY | CFG_RECORD_LATE
    jnz bp_sync2
    mov rdi, r12                         # the kernel's point: tails written, first bytes not
    mov rsi, r13
    mov rdx, rsp
    call emit_records
bp_sync2:
    test ebp, ebp
    jz bp_p3
    test qword ptr [V_CFG], CFG_NO_SYNC2
    jnz bp_p3                            # variant: no sync after the tail ("very likely not
    call text_poke_sync                  # necessary" on Intel, says Linux): step 4
bp_p3:
    xor ebp, ebp                         # step 5
    xor r14, r14
bp_p3_loop:
    cmp r14, r13
    jae bp_p3_done
    mov rbx, r14
    imul rbx, rbx, TPL_SIZE
    add rbx, r12
    cmp byte ptr [rbx + TPL_TEXT], INT3_INSN_OPCODE
    je bp_p3_next
    movsxd rdi, dword ptr [rbx + TPL_REL_ADDR]
    add rdi, r15
    lea rsi, [rbx + TPL_TEXT]
    mov edx, 1
    call text_poke
    inc ebp
bp_p3_next:
    inc r14
    jmp bp_p3_loop
bp_p3_done:
    test qword ptr [V_CFG], CFG_RECORD_LATE
    jz bp_sync3
    mov rdi, r12                         # variant: record after the first byte
    mov rsi, r13
    mov rdx, rsp
    call emit_records
bp_sync3:
    test ebp, ebp
    jz bp_put
    test qword ptr [V_CFG], CFG_NO_SYNC3
    jnz bp_put                           # variant: no sync after the first byte
    call text_poke_sync                  # step 6
bp_put:                                  # step 7: drop our references, wait for handlers'
    mov edi, 1
    test qword ptr [V_CFG], CFG_NO_REFWAIT
    jz bp_put_all
    xor edi, edi                         # variant: do not wait for the handlers
bp_put_all:
    call bp_refs_put
bp_out:
    mov qword ptr [V_BP_DESC + BPD_NR_ENTRIES], 0           # as the pre-refcount kernel did (see Z2)
    mov qword ptr [V_BP_DESC + BPD_VEC], 0
    add rsp, OLDS_BYTES
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

# Variant CFG_NO_INT3: the early-boot text_poke_early() way, used on a live SMP system: every
# byte of every site written in place, in order, then one sync.
bp_plain:
    xor r14, r14
bp_plain_loop:
    cmp r14, r13
    jae bp_plain_done
    mov rbx, r14
    imul rbx, rbx, TPL_SIZE
    add rbx, r12
    movsxd rdi, dword ptr [rbx + TPL_REL_ADDR]
    add rdi, r15
    lea rsi, [rbx + TPL_TEXT]
    movzx edx, byte ptr [rbx + TPL_LEN]
    call text_poke
    inc r14
    jmp bp_plain_loop
bp_plain_done:
    mov rdi, r12                         # the records, with the old bytes saved up front
    mov rsi, r13
    mov rdx, rsp
    call emit_records
    call text_poke_sync
    jmp bp_put

int3_insn_byte:
    .byte INT3_INSN_OPCODE

# ------------------------------------------------------------------ text_poke_loc_init
# text_poke_loc_init(tp=rdi, addr=rsi, opcode=rdx, len=rcx, emulate=r8 or 0).
# The kernel decodes `emulate` with its instruction decoder; the classes it accepts are
# recognised here by their bytes: INT3, RET, CALL, JMP32, JMP8, and the kernel's NOP2 / NOP5
# (recorded as JMP8+0 / JMP32+0). RET and JMPs may be shorter than len if padded with INT3;
# everything else must be exactly len bytes. Anything else is BUG().
text_poke_loc_init:
    push rbx
    mov r9, rdi                          # tp
    test r8, r8
    jnz tpli_have_emulate
    mov r8, rdx
tpli_have_emulate:
    xor eax, eax                         # memcpy(tp->text, opcode, len)
tpli_copy:
    cmp rax, rcx
    jae tpli_copied
    mov r10b, byte ptr [rdx + rax]
    mov byte ptr [r9 + rax + TPL_TEXT], r10b
    inc rax
    jmp tpli_copy
tpli_copied:
    mov r10, STEXT
    mov rax, rsi
    sub rax, r10
    mov dword ptr [r9 + TPL_REL_ADDR], eax
    mov byte ptr [r9 + TPL_LEN], cl
    mov dword ptr [r9 + TPL_DISP], 0
    movzx eax, byte ptr [r8]
    mov byte ptr [r9 + TPL_OPCODE], al
    cmp al, INT3_INSN_OPCODE
    je tpli_len1
    cmp al, RET_INSN_OPCODE
    je tpli_ret
    cmp al, CALL_INSN_OPCODE
    je tpli_rel32
    cmp al, JMP32_INSN_OPCODE
    je tpli_jmp32
    cmp al, JMP8_INSN_OPCODE
    je tpli_jmp8
    cmp rcx, 2                           # default: assume NOP
    je tpli_nop2
    cmp rcx, 5
    je tpli_nop5
    jmp tpli_bug
tpli_nop2:
    cmp word ptr [r8], 0x9066
    jne tpli_bug
    mov byte ptr [r9 + TPL_OPCODE], JMP8_INSN_OPCODE   # NOP2: emulate as JMP8+0
    jmp tpli_ok
tpli_nop5:
    mov eax, dword ptr [r8]
    cmp eax, 0x00441f0f
    jne tpli_bug
    cmp byte ptr [r8 + 4], 0
    jne tpli_bug
    mov byte ptr [r9 + TPL_OPCODE], JMP32_INSN_OPCODE  # NOP5: emulate as JMP32+0
    jmp tpli_ok
tpli_len1:
    cmp rcx, INT3_INSN_SIZE
    jne tpli_bug
    jmp tpli_ok
tpli_ret:
    mov ebx, RET_INSN_SIZE
    jmp tpli_pad
tpli_rel32:
    cmp rcx, CALL_INSN_SIZE              # CALL: len == insn.length
    jne tpli_bug
    mov eax, dword ptr [r8 + TPI_DISP]
    mov dword ptr [r9 + TPL_DISP], eax
    jmp tpli_ok
tpli_jmp32:
    mov eax, dword ptr [r8 + TPI_DISP]
    mov dword ptr [r9 + TPL_DISP], eax
    mov ebx, JMP32_INSN_SIZE
    jmp tpli_pad
tpli_jmp8:
    movsx eax, byte ptr [r8 + TPI_DISP]  # JMP8: its rel8 where a JMP32 has its rel32
    mov dword ptr [r9 + TPL_DISP], eax
    mov ebx, JMP8_INSN_SIZE
tpli_pad:
    cmp rcx, rbx                         # control flow with no implied next instruction:
    jb tpli_bug                          # the rest of the slot must be INT3 padding
tpli_pad_loop:
    cmp rbx, rcx
    jae tpli_ok
    cmp byte ptr [r9 + rbx + TPL_TEXT], INT3_INSN_OPCODE
    jne tpli_bug
    inc rbx
    jmp tpli_pad_loop
tpli_ok:
    pop rbx
    ret
tpli_bug:
    mov edi, ASSERT_LOC_INIT
    lea rsi, [rip + msg_loc_init]
    mov eax, HC_ASSERT
    out HC_PORT, eax
tpli_dead:
    jmp tpli_dead
msg_loc_init:
    .byte 0x74, 0x65, 0x78, 0x74, 0x5f, 0x70, 0x6f, 0x6b, 0x65, 0x5f, 0x6c, 0x6f, 0x63, 0x5f
    .byte 0x69, 0x6e, 0x69, 0x74, 0x3a, 0x20, 0x42, 0x55, 0x47, 0x00

# ------------------------------------------------------------------ batching
# text_poke_queue(addr=rdi, opcode=rsi, len=rdx, emulate=rcx): text_poke_flush(addr) first --
# the vector must stay sorted for the handler's bsearch, so a lower address (or a full vector)
# runs the pending batch now -- then append an entry.
text_poke_queue:
    push rbx
    push r12
    push r13
    push r14
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    mov rax, qword ptr [V_TP_NR]
    cmp rax, TP_VEC_MAX
    jae tpq_flush
    test rax, rax
    jz tpq_add
    test qword ptr [V_CFG], CFG_UNSORTED
    jnz tpq_add                          # variant: no ordering flush
    dec rax                              # tp_order_fail(addr)
    imul rax, rax, TPL_SIZE
    movsxd rax, dword ptr [V_TP_VEC + rax + TPL_REL_ADDR]
    mov rcx, STEXT
    add rax, rcx
    cmp rax, rbx
    jbe tpq_add
tpq_flush:
    call text_poke_finish
tpq_add:
    mov rdi, qword ptr [V_TP_NR]
    lea rax, [rdi + 1]
    mov qword ptr [V_TP_NR], rax
    imul rdi, rdi, TPL_SIZE
    mov rax, V_TP_VEC
    add rdi, rax
    mov rsi, rbx
    mov rdx, r12
    mov rcx, r13
    mov r8, r14
    call text_poke_loc_init
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

# text_poke_finish(): run the pending batch, if any.
text_poke_finish:
    mov rsi, qword ptr [V_TP_NR]
    test rsi, rsi
    jz tpf_done
    mov rdi, V_TP_VEC
    call text_poke_bp_batch
    mov qword ptr [V_TP_NR], 0
tpf_done:
    ret

# text_poke_bp(addr=rdi, opcode=rsi, len=rdx, emulate=rcx): a batch of one, with the entry on
# this CPU's stack (handlers on other CPUs read it there through bp_desc.vec).
text_poke_bp:
    sub rsp, TPL_SIZE + 8                # the entry, and the stack's 16-byte alignment
    mov r8, rcx
    mov rcx, rdx
    mov rdx, rsi
    mov rsi, rdi
    mov rdi, rsp
    call text_poke_loc_init
    mov rdi, rsp
    mov esi, 1
    call text_poke_bp_batch
    add rsp, TPL_SIZE + 8
    ret

# ------------------------------------------------------------------ #BP
# The x86_64 int3 idtentry with create_gap=1: copy the hardware frame 5 words lower, leaving a
# gap above it, so that int3_emulate_push() can write below the interrupted RSP without
# overwriting the frame IRETQ will use. Then poke_int3_handler(), then kprobe_int3_handler();
# an INT3 neither claims is an unexpected trap (do_int3 -> die).
int3_entry:
    test qword ptr [V_CFG], CFG_NO_GAP
    jnz int3_nogap                       # variant: no stack gap
    push qword ptr [rsp + FRAME_SS]     # the frame's top word, 5 times: the whole frame
    push qword ptr [rsp + FRAME_SS]     # the frame's top word, 5 times: the whole frame
    push qword ptr [rsp + FRAME_SS]     # the frame's top word, 5 times: the whole frame
    push qword ptr [rsp + FRAME_SS]     # the frame's top word, 5 times: the whole frame
    push qword ptr [rsp + FRAME_SS]     # the frame's top word, 5 times: the whole frame
int3_nogap:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    lea rdi, [rsp + INT3_REGS_FRAME]     # regs: the hardware frame (ip, cs, flags, sp, ss)
    call poke_int3_handler
    test eax, eax
    jnz int3_done
    lea rdi, [rsp + INT3_REGS_FRAME]
    call kprobe_int3_handler
    test eax, eax
    jnz int3_done
    mov rdi, qword ptr [rsp + INT3_REGS_FRAME + FRAME_IP]
    dec rdi
    mov eax, HC_TRAP
    out HC_PORT, eax
int3_dead:
    jmp int3_dead
int3_done:
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

# poke_int3_handler(regs=rdi) -> eax 1 if it emulated the instruction at the trapping site.
poke_int3_handler:
    push rbx
    push r12
    push r13
    mov r12, rdi
    test qword ptr [r12 + FRAME_CS], 3   # user_mode(regs): not ours
    jnz ph_zero
    mov rdx, qword ptr gs:[PERCPU_CPU]            # smp_rmb(); try_get_desc(): inc-not-zero of
    mov rax, qword ptr [V_BP_REFS + rdx*8]   # this_cpu_ptr(&bp_refs)
ph_tryget:
    test rax, rax
    jz ph_zero
    lea rcx, [rax + 1]
    lock cmpxchg qword ptr [V_BP_REFS + rdx*8], rcx
    jnz ph_tryget
    mov rbx, qword ptr [r12 + FRAME_IP]
    dec rbx                              # ip = regs->ip - INT3_INSN_SIZE
    mov rcx, qword ptr [V_BP_DESC + BPD_NR_ENTRIES]
    mov rdx, qword ptr [V_BP_DESC + BPD_VEC]
    mov r10, STEXT
    cmp rcx, 1
    jbe ph_single
    xor r8d, r8d                         # __inline_bsearch(ip, vec, nr, size, patch_cmp)
    mov r9, rcx
ph_bs:
    cmp r8, r9
    jae ph_put
    lea r11, [r8 + r9]
    shr r11, 1
    mov r13, r11
    imul r13, r13, TPL_SIZE
    add r13, rdx
    movsxd rax, dword ptr [r13 + TPL_REL_ADDR]
    add rax, r10
    cmp rbx, rax
    je ph_found
    jb ph_bs_low
    lea r8, [r11 + 1]
    jmp ph_bs
ph_bs_low:
    mov r9, r11
    jmp ph_bs
ph_single:
    mov r13, rdx
    movsxd rax, dword ptr [r13 + TPL_REL_ADDR]
    add rax, r10
    cmp rax, rbx
    jne ph_put
ph_found:
    movzx eax, byte ptr [r13 + TPL_LEN]
    add rbx, rax                         # ip += tp->len
    movsxd rcx, dword ptr [r13 + TPL_DISP]
    movzx eax, byte ptr [r13 + TPL_OPCODE]
    cmp al, INT3_INSN_OPCODE
    je ph_put                            # someone's explicit INT3: not consumed
    cmp al, RET_INSN_OPCODE
    je ph_ret
    cmp al, CALL_INSN_OPCODE
    je ph_call
    cmp al, JMP32_INSN_OPCODE
    je ph_jmp
    cmp al, JMP8_INSN_OPCODE
    je ph_jmp
    mov edi, ASSERT_INT3_OPCODE          # BUG()
    xor esi, esi
    mov eax, HC_ASSERT
    out HC_PORT, eax
ph_dead:
    jmp ph_dead
ph_ret:                                  # int3_emulate_ret()
    mov rax, qword ptr [r12 + FRAME_SP]
    mov rcx, qword ptr [rax]
    mov qword ptr [r12 + FRAME_IP], rcx
    add qword ptr [r12 + FRAME_SP], 8
    jmp ph_consumed
ph_call:                                 # int3_emulate_call(): push the return address
    test qword ptr [V_CFG], CFG_CALL_AS_NOP
    jnz ph_call_nop
    mov rax, qword ptr [r12 + FRAME_SP]
    sub rax, 8
    mov qword ptr [rax], rbx
    mov qword ptr [r12 + FRAME_SP], rax
    add rbx, rcx
    mov qword ptr [r12 + FRAME_IP], rbx
    jmp ph_consumed
ph_call_nop:                             # variant: the old ftrace handler skipped the call
    mov qword ptr [r12 + FRAME_IP], rbx
    jmp ph_consumed
ph_jmp:                                  # int3_emulate_jmp()
    add rbx, rcx
    mov qword ptr [r12 + FRAME_IP], rbx
ph_consumed:
    mov r13d, 1
    jmp ph_release
ph_put:
    xor r13d, r13d
ph_release:
    mov rcx, qword ptr gs:[PERCPU_CPU]            # put_desc(): this CPU's refs
    lock dec qword ptr [V_BP_REFS + rcx*8]
    mov eax, r13d
    jmp ph_out
ph_zero:
    xor eax, eax
ph_out:
    pop r13
    pop r12
    pop rbx
    ret

# kprobe_int3_handler(regs=rdi) -> eax 1 if an armed kprobe sits at the trapping site: count the
# hit and resume in the probe's instruction slot (the copied instructions, then a JMP back).
# V_KPROBES: struct kprobe (KPROBE_*) x V_KPROBES_NR. (The walk once stepped 32 bytes through
# these 64-byte entries: a second kprobe was never found, its INT3 an unexpected trap.)
kprobe_int3_handler:
    mov rax, qword ptr [rdi + FRAME_IP]
    dec rax
    mov rcx, qword ptr [V_KPROBES_NR]
    mov rdx, V_KPROBES
kp_find:
    test rcx, rcx
    jz kp_none
    cmp qword ptr [rdx + KPROBE_ADDR], rax
    jne kp_next
    cmp qword ptr [rdx + KPROBE_ARMED], 0
    je kp_next
    lock inc qword ptr [rdx + KPROBE_HITS]
    mov rax, qword ptr [rdx + KPROBE_SLOT]
    mov qword ptr [rdi + FRAME_IP], rax
    mov eax, 1
    ret
kp_next:
    add rdx, KPROBE_SIZE
    dec rcx
    jmp kp_find
kp_none:
    xor eax, eax
    ret

# ------------------------------------------------------------------ rcu-tasks
# synchronize_rcu_tasks(): wait until every other online CPU passed a voluntary quiescent
# point (V_QS[cpu] advanced). Interrupt handlers and preempted tasks are not quiescent, which is
# the point.
synchronize_rcu_tasks:
    mov rdi, V_QS
    mov esi, 1
    jmp wait_cpus_advance

# wait_cpus_advance(counters=rdi, n=rsi): snapshot every CPU's u64 counter, then wait until each
# other online CPU's has advanced by n.
wait_cpus_advance:
    push rbx
    push r12
    push r13
    push r14
    sub rsp, CPUS_BYTES
    mov r13, rdi
    mov r14, rsi
    mov r12, qword ptr gs:[PERCPU_CPU]
    xor ebx, ebx
wca_snap:
    cmp rbx, NCPUS
    jae wca_start
    mov rax, qword ptr [r13 + rbx*8]
    add rax, r14
    mov qword ptr [rsp + rbx*8], rax
    inc rbx
    jmp wca_snap
wca_start:
    xor ebx, ebx
wca_wait:
    cmp rbx, NCPUS
    jae wca_done
    cmp rbx, r12
    je wca_next
    bt qword ptr [V_ONLINE], rbx
    jnc wca_next
wca_spin:
    mov rax, qword ptr [r13 + rbx*8]
    cmp rax, qword ptr [rsp + rbx*8]
    jae wca_next
    pause
    jmp wca_spin
wca_next:
    inc rbx
    jmp wca_wait
wca_done:
    add rsp, CPUS_BYTES
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

# ------------------------------------------------------------------ fatal exceptions
fatal_df:
    mov edi, 8
    lea rsi, [rsp + 8]
    mov eax, HC_FAULT
    out HC_PORT, eax
    jmp fatal_df
fatal_gp:
    mov edi, 13
    lea rsi, [rsp + 8]
    mov eax, HC_FAULT
    out HC_PORT, eax
    jmp fatal_gp
fatal_pf:
    mov edi, 14
    lea rsi, [rsp + 8]
    mov eax, HC_FAULT
    out HC_PORT, eax
    jmp fatal_pf
fatal_ud:
    mov edi, 6
    mov rsi, rsp
    mov eax, HC_FAULT
    out HC_PORT, eax
    jmp fatal_ud
