/*
 * emu/_native.c: the native machine of the fast engine (emu/engine.py).
 *
 * The per-instruction work of emu/cpu.py's Cpu._on_code and Cpu._on_rdtsc, in C, as hooks
 * Unicorn calls directly: the global tick, the ground-truth record (tick, ip, bytes fetched),
 * the serializing / IRET / STI-shadow / HLT / PAUSE effects, RDTSC, the event-mode stops
 * (a fetch of a pending unit, a watched read a few instructions ago) and the fetched text
 * grains of a footprint. Python sees a run only at its start and its end, and inside it only
 * where something rare happens (its own memory / OUT / interrupt hooks, and the spontaneous-NMI
 * decision before an instruction, which is a decision of the stream).
 *
 * The scheduling loop is here too, in quantum and event mode (`steps`, emu/native_loop.py): the
 * steps that need nothing of Python, one after another, the others handed back to
 * emu/machine.py. And the snapshot cache's lookup (`best_key`, emu/snapshot.py's
 * SnapshotCache.best, whose loop is the reference).
 *
 * Nothing is linked against libunicorn: emu/native_cpu.py hands over the function pointers of
 * the library the Python binding loaded, and the engine handle. Unicorn is entered from C
 * (cpu_run) with the GIL held, so the rare Python hooks inside a run need not take it.
 *
 * emu/native_cpu.py is this file's Python side; emu/cpu.py is the reference it must equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "fetch_pages.h"

/* the digest of the sources this module was compiled from (emu/native_build.py; setup.py
   defines it): emu/engine.py refuses a build whose sources have changed since */
#ifndef TEXTPOKE_SOURCE_DIGEST
#define TEXTPOKE_SOURCE_DIGEST ""
#endif

typedef int (*uc_hook_add_t)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                             uint64_t begin, uint64_t end, ...);
typedef int (*uc_emu_stop_t)(void *uc);
typedef int (*uc_emu_start_t)(void *uc, uint64_t begin, uint64_t until, uint64_t timeout,
                              size_t count);
typedef int (*uc_reg_t)(void *uc, int regid, void *value);
typedef int (*uc_ctl_t)(void *uc, int control, ...);

#define INVALID_INSN_SIZE 16 /* Unicorn reports an undecodable instruction with 0xf1f1f1f1 */
#define TEXT_TAG (1ULL << 60) /* emu/footprint.py: TEXT */
#define TEXT_SHIFT 3

/* emu/x86.py: Effect */
enum effect { EFF_NONE, EFF_SERIALIZE, EFF_IRET, EFF_SHADOW, EFF_HALT, EFF_PAUSE };

/* ------------------------------------------------------------------ the clock */

typedef struct {
    PyObject_HEAD
    unsigned long long tick; /* one per retired instruction on any CPU; the virtual TSC */
} ClockObject;

static PyMemberDef clock_members[] = {
    {"tick", T_ULONGLONG, offsetof(ClockObject, tick), 0, "the global tick"},
    {NULL}};

static PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "emu._native.Clock",
    .tp_basicsize = sizeof(ClockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The global tick, shared by the CPUs' native hooks (emu.cpu.Clock's twin).",
    .tp_new = PyType_GenericNew,
    .tp_members = clock_members,
};

/* ------------------------------------------------------------------ growable buffers */

typedef struct {
    char *data;
    size_t len, cap; /* bytes */
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n))
        return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

/* ------------------------------------------------------------------ a CPU's hooks */

typedef struct {
    PyObject_HEAD
    /* bound once (bind) */
    void *uc;
    uc_emu_start_t emu_start;
    uc_emu_stop_t emu_stop;
    uc_reg_t reg_read, reg_write;
    uc_ctl_t ctl;
    int ctl_remove_cache; /* uc_ctl's code for UC_CTL_TB_REMOVE_CACHE, two arguments, write */
    /* the pages text is fetched from (bind_pages; emu/fetch_pages.c), and uc_ctl's codes for
       UC_CTL_TLB_FLUSH and UC_CTL_TB_FLUSH (no arguments, write); NULL: from the view */
    FetchPages *pages;
    uint64_t phys_pool;
    int ctl_tlb_flush, ctl_tb_flush;
    int reg_rax, reg_rdx, reg_rip, reg_rcx;
    ClockObject *clock;
    const uint8_t *view; /* this CPU's fetch view (FetchView.buf) */
    const uint8_t *mem_text; /* the text memory holds (SharedMemory.text; bind_text) */
    uint64_t view_size, text_base;
    PyObject *nmi_point;      /* Cpu.nmi_point, or NULL */
    uint8_t *nmi_map;         /* per text offset: may an NMI arrive before it; NULL: anywhere */
    /* inside the scheduling loop (`steps`, NULL outside it): who answers its choices, and
       this CPU's NMI_RAISE entry, its request's weight and what raises the NMI (borrowed), which
       nmi_before uses instead of asking nmi_point */
    const struct Chooser *loop_ch;
    PyObject *loop_nmi, *loop_raise;
    double loop_weight;
    /* one run (begin .. end) */
    long long left;
    int want_stop, event, skip_valid, read_stop_in, mem_hooked_valid, restarted;
    uint64_t skip_fetch, mem_hooked;
    long long decided_end; /* Cpu.fetch_decided[1], or -1 */
    int64_t *pending;      /* the view's pending units [s, e) */
    Py_ssize_t npending;
    int nmi_armed, track_fp, truth;
    uint64_t last_ip;
    uint8_t last_code[INVALID_INSN_SIZE];
    int last_len, shadow;
    int halted, yielded, serialize, iret, emulate;
    uint64_t emulate_addr, retired_run;
    uint64_t rip; /* where the CPU stopped */
    int py_hooked;        /* a Python hook of Cpu ran in this run (emu/native_cpu.py) */
    int stored;           /* the Python text-store hook ran in this run, and returned */
    int py_out;           /* Cpu._on_out (a hypercall Python serves) ran in this run */
    int timing;           /* for benchmarks: add the CPU time inside uc_emu_start up */
    uint64_t unicorn_ns;  /* (hooks included, Python ones too) */
    uint64_t last_grain; /* the last fetched text grain added to `grains` */
    Buf ticks, ips, ends, code, grains;
    Buf written;           /* footprint locations written this run (grains: read) */
    uint64_t *seen;        /* add_run_footprint's set of entries: keys, then their stamps */
    uint32_t *seen_stamp;
    size_t seen_cap;
    uint32_t seen_now;
    Buf watches;           /* the memory hooks' MemWatch records, owned here */
    size_t room; /* records ticks, ips and ends all have room for */
    PyObject *err_type, *err_value, *err_tb; /* a harness error inside a hook */
    /* push_frame (bind_frames): the data and stack regions, a stack slot's guard page */
    int frames, reg_idtr, reg_cs, reg_ss, reg_rsp, reg_rflags;
    uint64_t data_va, data_size, stacks_va, stacks_size, stack_slot, stack_guard, kernel_cs;
    uint8_t *data_host, *stacks_host;
    /* the OUT hook (bind_out): the hypercall port, the QUIESCENT number and what its event is
       made of, the Python hook for every other hypercall, the CPU's event list (`events`) */
    int out_bound, hc_port, reg_rdi, reg_rsi, index;
    uint64_t hc_quiescent;
    PyObject *hc_event_cls, *hc_quiescent_member, *on_out, *events;
    /* the INTR hook (bind_intr): an INT3's #BP in event mode is kept here (`bp`, the RIP after
       it), for the C loop to deliver; every other interrupt goes to Cpu._on_intr (`on_intr`) */
    int intr_bound, bp;
    uint64_t bp_rip;
    PyObject *on_intr, *frame_cls, *exception_cls;
    /* the TLB fill hook (bind_tlb): Layout.translate's regions; a miss goes to `on_miss` */
    int tlb_bound;
    uint64_t tlb_text_va, tlb_text_size, tlb_data_va, tlb_data_size, tlb_stacks_va,
        tlb_stacks_size, tlb_slot, tlb_guard, tlb_poke_va, phys_text, phys_view, phys_data,
        phys_stacks;
    PyObject *on_miss;
    PyObject *on_store; /* Cpu._on_text_store (bind_store) */
    int store_bound;
    PyObject *held; /* the Retired the truth buffers hold records for (hold_truth), or NULL */
} CpuObject;

/* The Python objects a C Cpu holds that may hold it back (its hooks' methods, the NMI point,
   the classes and list its hooks fill): the collector's traverse and clear, declared once. */
#define CPU_PY_FIELDS(F)                                                                      \
    F(nmi_point) F(hc_event_cls) F(hc_quiescent_member) F(on_out) F(events) F(on_intr)        \
    F(frame_cls) F(exception_cls) F(on_miss) F(on_store) F(held)

static int cpu_traverse(CpuObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->clock);
#define VISIT(field) Py_VISIT(self->field);
    CPU_PY_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int cpu_clear(CpuObject *self) {
#define CLEAR(field) Py_CLEAR(self->field);
    CPU_PY_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void cpu_dealloc(CpuObject *self) {
    PyObject_GC_UnTrack(self);
    cpu_clear(self);
    Py_XDECREF(self->clock);
    Py_XDECREF(self->err_type);
    Py_XDECREF(self->err_value);
    Py_XDECREF(self->err_tb);
    free(self->nmi_map);
    fetch_pages_free(self->pages);
    free(self->pending);
    free(self->ticks.data);
    free(self->ips.data);
    free(self->ends.data);
    free(self->code.data);
    free(self->grains.data);
    free(self->written.data);
    free(self->seen);
    free(self->seen_stamp);
    for (size_t i = 0; i < self->watches.len / sizeof(void *); i++)
        free(((void **)self->watches.data)[i]);
    free(self->watches.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* emu/x86.py: _strip_prefixes, is_serializing, is_iret, blocks_interrupts_after, effect */
static enum effect effect_of(const uint8_t *code, int n) {
    int i = 0;
    while (i < n) {
        uint8_t c = code[i];
        if (c == 0x66 || c == 0x67 || c == 0xF2 || c == 0xF3 || c == 0x2E || c == 0x3E ||
            c == 0x26 || c == 0x36 || c == 0x64 || c == 0x65 || c == 0xF0)
            i++;
        else
            break;
    }
    if (i < n && code[i] >= 0x40 && code[i] <= 0x4F)
        i++;
    const uint8_t *op = code + i;
    int m = n - i;
    if (m >= 1) {
        if (op[0] == 0xCF)
            return EFF_IRET;
        if (m >= 2 && op[0] == 0x0F && (op[1] == 0xA2 || op[1] == 0x22))
            return EFF_SERIALIZE;
        if (op[0] == 0xFB || op[0] == 0x17)
            return EFF_SHADOW;
        if (op[0] == 0x8E && m > 1 && ((op[1] >> 3) & 7) == 2)
            return EFF_SHADOW;
    }
    if (n == 1 && code[0] == 0xF4)
        return EFF_HALT;
    if (n == 2 && code[0] == 0xF3 && code[1] == 0x90)
        return EFF_PAUSE;
    return EFF_NONE;
}

static int is_pending(const CpuObject *s, int64_t off, int64_t size) {
    int64_t end = off + size;
    for (Py_ssize_t i = 0; i < s->npending; i++)
        if (s->pending[2 * i] < end && off < s->pending[2 * i + 1])
            return 1;
    return 0;
}

static void stop(CpuObject *s) { s->emu_stop(s->uc); }

/* A Python error inside a hook: kept for end(), which raises it (the GIL is held). */
static void keep_error(CpuObject *s) {
    if (s->err_type == NULL)
        PyErr_Fetch(&s->err_type, &s->err_value, &s->err_tb);
    else
        PyErr_Clear();
}

static void fail(CpuObject *s, PyObject *type, const char *message) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyErr_SetString(type, message);
    keep_error(s);
    PyGILState_Release(g);
    stop(s);
}

static long decide_weighted(PyObject *entry, const struct Chooser *ch, double weight);

/* Cpu._nmi_before: whether a spontaneous NMI arrives before the instruction at `off`. In the
   scheduling loop the choice is made here (Machine._nmi_arrives): Python only raises the NMI
   it says yes to, and the run is handed back as one a Python hook ran in. Once a hypercall
   ran in the run (an NMI IPI to itself makes one pending, and Machine._nmi_arrives then
   makes no choice) the rest of the run asks Python. */
static int nmi_before(CpuObject *s, uint64_t off) {
    if (!s->nmi_armed || s->nmi_point == NULL)
        return 0;
    if (s->nmi_map != NULL && (off >= s->view_size || !s->nmi_map[off]))
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    if (s->loop_ch && !s->py_out) { /* (a hypercall may have made an NMI pending: Python's) */
        long v = decide_weighted(s->loop_nmi, s->loop_ch, s->loop_weight);
        if (v > 0) {
            s->py_hooked = 1;
            s->nmi_armed = 0; /* (the NMI is pending: no NMI point asks again) */
            PyObject *r = PyObject_CallNoArgs(s->loop_raise);
            if (r == NULL)
                v = -1;
            Py_XDECREF(r);
        }
        if (v < 0)
            keep_error(s); /* stop: the loop raises it */
        PyGILState_Release(g);
        return v != 0;
    }
    PyObject *r = PyObject_CallNoArgs(s->nmi_point);
    int yes = 0;
    if (r == NULL) {
        keep_error(s);
        yes = 1; /* stop: end() raises it */
    } else {
        yes = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (yes < 0) {
            keep_error(s);
            yes = 1;
        }
    }
    PyGILState_Release(g);
    return yes;
}

static int add_grain(CpuObject *s, uint64_t g) {
    if (g == s->last_grain)
        return 0;
    s->last_grain = g;
    return buf_put(&s->grains, &g, sizeof g);
}

/* Cpu._on_code, line for line. */
static void on_code(void *uc, uint64_t address, uint32_t size, void *user_data) {
    CpuObject *s = (CpuObject *)user_data;
    (void)uc;
    if (s->mem_hooked_valid) {
        s->mem_hooked_valid = 0;
        if (s->mem_hooked == address) {
            /* QEMU restarts an instruction that reaches a hooked page mid-block: it
               retired once (emu/cpu.py) */
            s->restarted = 1;
            return;
        }
    }
    s->restarted = 0;
    if (s->want_stop || s->left == 0) {
        stop(s);
        return;
    }
    uint64_t off = address - s->text_base;
    if (size >= INVALID_INSN_SIZE) { /* Unicorn will report UC_ERR_INSN_INVALID: a #UD */
        if (s->event && !(s->skip_valid && address == s->skip_fetch) && nmi_before(s, off))
            stop(s);
        return;
    }
    if (off >= s->view_size || off + size > s->view_size) {
        fail(s, PyExc_RuntimeError, "native machine: a fetch outside the text");
        return;
    }
    if (s->event) {
        if (s->track_fp) { /* every grain it spans */
            uint64_t first = off >> TEXT_SHIFT, last = (off + size - 1) >> TEXT_SHIFT;
            for (uint64_t g = first; g <= last; g++)
                if (add_grain(s, TEXT_TAG | g)) {
                    fail(s, PyExc_MemoryError, "native machine: footprint");
                    return;
                }
        }
        if (s->read_stop_in) {
            s->read_stop_in--;
            if (!s->read_stop_in) {
                stop(s); /* the visible read, a few local instructions ago */
                return;
            }
        }
        if (s->skip_valid && address == s->skip_fetch) {
            s->skip_valid = 0; /* the instruction we stopped before: run it now */
            int64_t start = s->decided_end >= 0 ? s->decided_end : (int64_t)off;
            if ((int64_t)(off + size) > start &&
                is_pending(s, start, (int64_t)(off + size) - start)) {
                char msg[200];
                snprintf(msg, sizeof msg,
                         "fetch model: the instruction at %#llx is %u bytes to Unicorn, longer "
                         "than capstone decoded it for the fetch decision",
                         (unsigned long long)address, size);
                fail(s, PyExc_RuntimeError, msg);
                return;
            }
        } else if (s->npending && is_pending(s, (int64_t)off, size)) {
            stop(s); /* a fetch of bytes with a pending store: visible */
            return;
        } else if (nmi_before(s, off)) {
            stop(s); /* an NMI arrived before this instruction */
            return;
        }
    }
    const uint8_t *code = s->view + off;
    if (size == 3 && code[0] == 0x0F && code[1] == 0x01 && code[2] == 0xF9) {
        s->emulate = 1; /* RDTSCP: Unicorn's reads host time; emulated after the run */
        s->emulate_addr = address;
        stop(s);
        return;
    }
    s->left--;
    uint64_t tick = ++s->clock->tick;
    s->retired_run++;
    if (s->truth) {
        size_t i = s->ends.len / 4; /* record i */
        if (i >= s->room || s->code.len + size > s->code.cap) {
            size_t n = i + 1024;
            if (buf_reserve(&s->ticks, 8 * n - s->ticks.len) ||
                buf_reserve(&s->ips, 8 * n - s->ips.len) ||
                buf_reserve(&s->ends, 4 * n - s->ends.len) ||
                buf_reserve(&s->code, INVALID_INSN_SIZE * 1024)) {
                fail(s, PyExc_MemoryError, "native machine: ground truth");
                return;
            }
            s->room = s->ticks.cap / 8;
            if (s->ips.cap / 8 < s->room)
                s->room = s->ips.cap / 8;
            if (s->ends.cap / 4 < s->room)
                s->room = s->ends.cap / 4;
        }
        ((uint64_t *)s->ticks.data)[i] = tick;
        ((uint64_t *)s->ips.data)[i] = address;
        memcpy(s->code.data + s->code.len, code, size);
        s->code.len += size;
        ((uint32_t *)s->ends.data)[i] = (uint32_t)s->code.len;
        s->ticks.len += 8;
        s->ips.len += 8;
        s->ends.len += 4;
    }
    s->last_ip = address;
    memcpy(s->last_code, code, size);
    s->last_len = (int)size;
    s->shadow = 0;
    switch (effect_of(code, (int)size)) {
    case EFF_NONE:
        break;
    case EFF_IRET: /* ends NMI blocking (SDM 6.7.1): Python leaves the handler at end() */
        s->iret = 1;
        /* fall through */
    case EFF_SERIALIZE:
        s->serialize = 1;
        s->want_stop = 1;
        break;
    case EFF_SHADOW:
        s->shadow = 1;
        if (s->event) /* IF may have just been set: the end of the shadow is where a
                         pending interrupt is taken */
            s->want_stop = 1;
        break;
    case EFF_HALT:
        s->halted = 1;
        s->want_stop = 1;
        break;
    case EFF_PAUSE:
        s->yielded = 1;
        if (s->event)
            s->want_stop = 1; /* a spin-wait: let the others run */
        break;
    }
}

/* ------------------------------------------------------------------ footprint hooks */

/* emu/footprint.py's locations */
#define DATA_TAG (2ULL << 60)
#define IRQ_TAG (3ULL << 60)
#define STACK_BIT (1ULL << 40)
#define UC_MEM_WRITE 17

enum watch_kind { WATCH_DATA, WATCH_TEXT, WATCH_STACK, WATCH_WATCHED };
#define READ_STOP_DELAY 3 /* emu/cpu.py: _READ_STOP_DELAY */

typedef struct {
    CpuObject *cpu;
    enum watch_kind kind;
    uint64_t base;  /* WATCH_TEXT: the text's physical address */
    uint64_t owner; /* WATCH_STACK: whose stack */
} MemWatch;

static int add_location(Buf *b, uint64_t loc) { return buf_put(b, &loc, sizeof loc); }

/* Cpu._on_tracked, _on_text_read and _on_foreign_stack: the access belongs to the current
   instruction (see on_code), and in a step whose footprint is measured, its locations. */
static void on_mem(void *uc, int type, uint64_t addr, int size, int64_t value, void *user) {
    MemWatch *w = (MemWatch *)user;
    CpuObject *s = w->cpu;
    (void)uc;
    (void)value;
    if (w->kind == WATCH_WATCHED) { /* Cpu._on_watched: a visible access, in event mode */
        if (!s->event)
            return;
        if (type == UC_MEM_WRITE)
            s->want_stop = 1; /* after this instruction: stopping here would abandon it */
        else if (!s->read_stop_in)
            s->read_stop_in = READ_STOP_DELAY; /* a spin-wait's PAUSE may come first */
    }
    s->mem_hooked = s->last_ip;
    s->mem_hooked_valid = 1;
    if (!(s->event && s->track_fp) || size < 1)
        return;
    Buf *into = type == UC_MEM_WRITE ? &s->written : &s->grains;
    int err = 0;
    switch (w->kind) {
    case WATCH_DATA:
    case WATCH_WATCHED:
        for (uint64_t k = addr >> 3; k <= (addr + size - 1) >> 3 && !err; k++)
            err = add_location(into, DATA_TAG | k);
        break;
    case WATCH_TEXT: /* a data read of text: its grains are read */
        for (uint64_t g = (addr - w->base) >> TEXT_SHIFT;
             g <= (addr - w->base + size - 1) >> TEXT_SHIFT && !err; g++)
            err = add_location(&s->grains, TEXT_TAG | g);
        break;
    case WATCH_STACK:
        err = add_location(into, IRQ_TAG | STACK_BIT | w->owner);
        break;
    }
    if (err)
        fail(s, PyExc_MemoryError, "native machine: footprint");
}

/* Cpu._on_rdtsc: the virtual TSC; returning 1 skips Unicorn's own (host-time) RDTSC. */
static int on_rdtsc(void *uc, void *user_data) {
    CpuObject *s = (CpuObject *)user_data;
    uint64_t tsc = s->clock->tick, lo = tsc & 0xFFFFFFFFu, hi = tsc >> 32;
    s->reg_write(uc, s->reg_rax, &lo);
    s->reg_write(uc, s->reg_rdx, &hi);
    return 1;
}

/* ------------------------------------------------------------------ Python methods */

static int cpu_init(CpuObject *self, PyObject *args, PyObject *kw) {
    PyObject *clock;
    static char *names[] = {"clock", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!", names, &ClockType, &clock))
        return -1;
    Py_INCREF(clock);
    Py_XSETREF(self->clock, (ClockObject *)clock);
    self->decided_end = -1;
    return 0;
}

static PyObject *cpu_bind(CpuObject *self, PyObject *args) {
    unsigned long long uc, hook_add, emu_start, emu_stop, reg_read, reg_write, view, view_size,
        text_base;
    int hook_code, hook_insn, ins_rdtsc;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKiiiiii", &uc, &hook_add, &emu_start, &emu_stop,
                          &reg_read, &reg_write, &view, &view_size, &text_base, &hook_code,
                          &hook_insn, &ins_rdtsc, &self->reg_rax, &self->reg_rdx,
                          &self->reg_rip))
        return NULL;
    self->uc = (void *)(uintptr_t)uc;
    self->emu_start = (uc_emu_start_t)(uintptr_t)emu_start;
    self->emu_stop = (uc_emu_stop_t)(uintptr_t)emu_stop;
    self->reg_read = (uc_reg_t)(uintptr_t)reg_read;
    self->reg_write = (uc_reg_t)(uintptr_t)reg_write;
    self->view = (const uint8_t *)(uintptr_t)view;
    self->view_size = view_size;
    self->text_base = text_base;
    uc_hook_add_t add = (uc_hook_add_t)(uintptr_t)hook_add;
    size_t h1 = 0, h2 = 0;
    int err = add(self->uc, &h1, hook_code, (void *)on_code, self, 1, 0);
    if (!err)
        err = add(self->uc, &h2, hook_insn, (void *)on_rdtsc, self, 1, 0, ins_rdtsc);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed: error %d", err);
    Py_RETURN_NONE;
}

/* The end of a hook's call into Python (`r`, its result, made under `g`): an exception it
   raised is kept for the loop to raise, and the run stopped. */
static void hook_called(CpuObject *s, PyObject *r, PyGILState_STATE g) {
    if (!r) {
        keep_error(s);
        PyGILState_Release(g);
        stop(s);
        return;
    }
    Py_DECREF(r);
    PyGILState_Release(g);
}

/* The OUT hook: a hypercall (emu/hypercall.py). In event mode QUIESCENT is served here as
   Machine._hypercall serves it (its HypercallEvent, the CPU yielded, the run stopped before
   the next instruction), with no Python hook, so its step can end in the C loop; every
   other hypercall, and QUIESCENT in quantum mode, goes to NativeCpu._on_out_c (`on_out`)
   with the registers Cpu._on_out reads: (number, rdi, rsi, rdx, rcx, rip). */
static void on_out(void *uc, uint32_t port, int size, uint32_t value, void *user_data) {
    (void)uc;
    (void)size;
    (void)value;
    CpuObject *s = user_data;
    if (port != (uint32_t)s->hc_port)
        return;
    uint64_t nr = 0, rdi = 0, rsi = 0, rdx = 0, rcx = 0, rip = 0;
    if (s->reg_read(s->uc, s->reg_rax, &nr) || s->reg_read(s->uc, s->reg_rdi, &rdi) ||
        s->reg_read(s->uc, s->reg_rsi, &rsi) || s->reg_read(s->uc, s->reg_rdx, &rdx) ||
        s->reg_read(s->uc, s->reg_rcx, &rcx) || s->reg_read(s->uc, s->reg_rip, &rip)) {
        fail(s, PyExc_RuntimeError, "uc_reg_read of a hypercall's registers failed");
        return;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    if (s->event && nr == s->hc_quiescent && s->events != NULL && PyList_Check(s->events)) {
        PyObject *ev = PyObject_CallFunction(s->hc_event_cls, "KiO(KK)",
                                             (unsigned long long)s->clock->tick, s->index,
                                             s->hc_quiescent_member, (unsigned long long)rdi,
                                             (unsigned long long)rsi);
        if (!ev || PyList_Append(s->events, ev)) {
            Py_XDECREF(ev);
            keep_error(s);
            PyGILState_Release(g);
            stop(s);
            return;
        }
        Py_DECREF(ev);
        PyGILState_Release(g);
        s->yielded = 1; /* a voluntary schedule point: schedulers may switch */
        s->want_stop = 1;
        return;
    }
    s->py_out = 1; /* (an error it raises fails the run: kept here) */
    PyObject *r = PyObject_CallFunction(s->on_out, "KKKKKK", (unsigned long long)nr,
                                        (unsigned long long)rdi, (unsigned long long)rsi,
                                        (unsigned long long)rdx, (unsigned long long)rcx,
                                        (unsigned long long)rip);
    hook_called(s, r, g);
}

/* The text-store hook: a guest store to text memory (through the poking alias), handed to
   Cpu._on_text_store (`on_store`) with the binding's arguments, as the reference's hook gets
   them (the binding's own callback wrapper cost more than the store's bookkeeping). */
static void on_store(void *uc, int type, uint64_t addr, int size, int64_t value, void *user) {
    (void)uc;
    CpuObject *s = user;
    PyGILState_STATE g = PyGILState_Ensure();
    s->stored = 1; /* event mode's loop ends a run whose only Python hook this was */
    PyObject *r = PyObject_CallFunction(s->on_store, "OiKiLO", Py_None, type,
                                        (unsigned long long)addr, size, (long long)value,
                                        Py_None);
    if (!r)
        s->py_hooked = 1;
    hook_called(s, r, g);
}

/* bind_store(uc_hook_add, hook_mem_write, start, end, on_store): the text-store hook on
   physical [start, end), once. */
static PyObject *cpu_bind_store(CpuObject *self, PyObject *args) {
    unsigned long long hook_add, start, end;
    int type;
    PyObject *py_store;
    if (self->store_bound)
        return PyErr_Format(PyExc_RuntimeError, "bind_store: bound already");
    if (!PyArg_ParseTuple(args, "KiKKO", &hook_add, &type, &start, &end, &py_store))
        return NULL;
    if (!self->uc || end <= start)
        return PyErr_Format(PyExc_RuntimeError, "bind_store before bind, or an empty range");
    Py_XSETREF(self->on_store, Py_NewRef(py_store));
    size_t h = 0;
    int err = ((uc_hook_add_t)(uintptr_t)hook_add)(self->uc, &h, type, (void *)on_store, self,
                                                    (uint64_t)start, (uint64_t)end - 1);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add(text stores) failed: error %d",
                            err);
    self->store_bound = 1;
    Py_RETURN_NONE;
}

/* bind_out(uc_hook_add, hook_insn, ins_out, reg_rdi, reg_rsi, reg_rcx, port, quiescent,
            HypercallEvent, Hypercall.QUIESCENT, index, on_out): the OUT hook (on_out), once.
            (RAX, RDX and RIP are bind's.) */
static PyObject *cpu_bind_out(CpuObject *self, PyObject *args) {
    unsigned long long hook_add, quiescent;
    int hook_insn, ins_out;
    PyObject *cls, *member, *py_out;
    if (self->out_bound)
        return PyErr_Format(PyExc_RuntimeError, "bind_out: bound already");
    if (!PyArg_ParseTuple(args, "KiiiiiiKOOiO", &hook_add, &hook_insn, &ins_out,
                          &self->reg_rdi, &self->reg_rsi, &self->reg_rcx, &self->hc_port,
                          &quiescent, &cls, &member, &self->index, &py_out))
        return NULL;
    if (!self->uc)
        return PyErr_Format(PyExc_RuntimeError, "bind_out before bind");
    self->hc_quiescent = quiescent;
    Py_XSETREF(self->hc_event_cls, Py_NewRef(cls));
    Py_XSETREF(self->hc_quiescent_member, Py_NewRef(member));
    Py_XSETREF(self->on_out, Py_NewRef(py_out));
    size_t h = 0;
    int err = ((uc_hook_add_t)(uintptr_t)hook_add)(self->uc, &h, hook_insn, (void *)on_out, self,
                                                    1, 0, ins_out);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add(OUT) failed: error %d", err);
    self->out_bound = 1;
    Py_RETURN_NONE;
}

/* The INTR hook. An INT3's #BP in event mode is kept (`bp`) and the run stopped, as
   Cpu._on_intr keeps it: the C loop delivers it (deliver_bp) or hands it to Python, whose
   NativeCpu._stop reads it. Any other interrupt goes to Cpu._on_intr (`on_intr`). */
static void on_intr(void *uc, uint32_t intno, void *user_data) {
    (void)uc;
    CpuObject *s = user_data;
    if (s->event && intno == 3) {
        if (s->reg_read(s->uc, s->reg_rip, &s->bp_rip)) {
            fail(s, PyExc_RuntimeError, "uc_reg_read(RIP) failed");
            return;
        }
        s->bp = 1;
        stop(s);
        return;
    }
    s->py_hooked = 1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(s->on_intr, "I", intno);
    hook_called(s, r, g);
}

/* bind_intr(uc_hook_add, hook_intr, on_intr, HandlerFrame, ExceptionEvent): the INTR hook,
   once, and what deliver_bp makes. */
static PyObject *cpu_bind_intr(CpuObject *self, PyObject *args) {
    unsigned long long hook_add;
    int hook_intr;
    PyObject *py_intr, *frame_cls, *exception_cls;
    if (self->intr_bound)
        return PyErr_Format(PyExc_RuntimeError, "bind_intr: bound already");
    if (!PyArg_ParseTuple(args, "KiOOO", &hook_add, &hook_intr, &py_intr, &frame_cls,
                          &exception_cls))
        return NULL;
    if (!self->uc)
        return PyErr_Format(PyExc_RuntimeError, "bind_intr before bind");
    Py_XSETREF(self->on_intr, Py_NewRef(py_intr));
    Py_XSETREF(self->frame_cls, Py_NewRef(frame_cls));
    Py_XSETREF(self->exception_cls, Py_NewRef(exception_cls));
    size_t h = 0;
    int err = ((uc_hook_add_t)(uintptr_t)hook_add)(self->uc, &h, hook_intr, (void *)on_intr,
                                                    self, 1, 0);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add(INTR) failed: error %d", err);
    self->intr_bound = 1;
    Py_RETURN_NONE;
}

/* Unicorn's memory access codes (emu/layout.Access) and protections (Cpu's _PERMS). */
#define ACC_READ 16
#define ACC_WRITE 17
#define ACC_FETCH 18
#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4

/* Layout.translate: the physical address of an access to `va`, or (uint64_t)-1 when it
   faults. Fetches from text go to the CPU's view, other text reads to memory; data, stacks
   and the poking alias are no-execute; the executable text mapping is read-only; the page
   below each CPU's stack is unmapped. */
static uint64_t translate(const CpuObject *s, uint64_t va, int access) {
    const uint64_t none = (uint64_t)-1;
    if (va - s->tlb_text_va < s->tlb_text_size) {
        uint64_t off = va - s->tlb_text_va;
        return access == ACC_FETCH ? s->phys_view + off
               : access == ACC_READ ? s->phys_text + off : none;
    }
    if (access == ACC_FETCH)
        return none;
    if (va - s->tlb_data_va < s->tlb_data_size)
        return s->phys_data + (va - s->tlb_data_va);
    if (va - s->tlb_stacks_va < s->tlb_stacks_size) {
        uint64_t off = va - s->tlb_stacks_va;
        return off % s->tlb_slot < s->tlb_guard ? none : s->phys_stacks + off;
    }
    if (va - s->tlb_poke_va < s->tlb_text_size)
        return s->phys_text + (va - s->tlb_poke_va);
    return none;
}

typedef struct {
    uint64_t paddr;
    int perms;
} TlbEntry; /* Unicorn's uc_tlb_entry */

/* The TLB fill hook (Cpu._on_tlb_fill): a translation here; a miss is Python's, which makes
   the #PF of it (and would say so should Layout.translate disagree). */
static bool on_tlb_fill(void *uc, uint64_t vaddr, int access, TlbEntry *entry,
                        void *user_data) {
    (void)uc;
    CpuObject *s = user_data;
    uint64_t pa = access == ACC_READ || access == ACC_WRITE || access == ACC_FETCH
                      ? translate(s, vaddr, access) : (uint64_t)-1; /* any other: Python's */
    if (s->pages && access == ACC_FETCH && pa != (uint64_t)-1) { /* text: its page's slot */
        uint64_t at = fetch_pages_where(s->pages, vaddr - s->tlb_text_va);
        if (at == UINT64_MAX) {
            fail(s, PyExc_RuntimeError, "a text fetch before its page was synced");
            return false;
        }
        pa = s->phys_pool + at;
    }
    if (pa != (uint64_t)-1) {
        entry->paddr = pa & ~(uint64_t)0xFFF;
        entry->perms = access == ACC_FETCH ? PROT_EXEC
                       : access == ACC_READ ? PROT_READ : PROT_READ | PROT_WRITE;
        return true;
    }
    s->py_hooked = 1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(s->on_miss, "Ki", (unsigned long long)vaddr, access);
    if (!r)
        keep_error(s); /* the fill fails; end() raises it */
    Py_XDECREF(r);
    PyGILState_Release(g);
    return false;
}

/* bind_tlb(uc_hook_add, hook_tlb_fill, text_va, text_size, data_va, data_size, stacks_va,
            stacks_size, stack_slot, stack_guard, poke_va, phys_text, phys_view, phys_data,
            phys_stacks, on_miss): the TLB fill hook, once. */
static PyObject *cpu_bind_tlb(CpuObject *s, PyObject *args) {
    unsigned long long hook_add;
    int hook_type;
    PyObject *miss;
    if (s->tlb_bound)
        return PyErr_Format(PyExc_RuntimeError, "bind_tlb: bound already");
    if (!PyArg_ParseTuple(args, "KiKKKKKKKKKKKKKO", &hook_add, &hook_type, &s->tlb_text_va,
                          &s->tlb_text_size, &s->tlb_data_va, &s->tlb_data_size,
                          &s->tlb_stacks_va, &s->tlb_stacks_size, &s->tlb_slot, &s->tlb_guard,
                          &s->tlb_poke_va, &s->phys_text, &s->phys_view, &s->phys_data,
                          &s->phys_stacks, &miss))
        return NULL;
    if (!s->uc)
        return PyErr_Format(PyExc_RuntimeError, "bind_tlb before bind");
    if (!s->tlb_slot || s->tlb_guard >= s->tlb_slot)
        return PyErr_Format(PyExc_ValueError, "bind_tlb: a stack slot and its guard page");
    Py_XSETREF(s->on_miss, Py_NewRef(miss));
    size_t h = 0;
    int err = ((uc_hook_add_t)(uintptr_t)hook_add)(s->uc, &h, hook_type, (void *)on_tlb_fill, s,
                                                    1, 0);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add(TLB_FILL) failed: error %d", err);
    s->tlb_bound = 1;
    Py_RETURN_NONE;
}

/* translate(va, access) -> the physical address, or None: the fill hook's translation (for
   tests: Layout.translate is the reference). */
static PyObject *cpu_translate(CpuObject *s, PyObject *args) {
    unsigned long long va;
    int access;
    if (!PyArg_ParseTuple(args, "Ki", &va, &access))
        return NULL;
    if (!s->tlb_bound)
        return PyErr_Format(PyExc_RuntimeError, "translate before bind_tlb");
    uint64_t pa = translate(s, va, access);
    if (pa == (uint64_t)-1)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(pa);
}

/* hook_mem(kind, start, end, base, owner, hook_type): a footprint hook on physical
   [start, end) (Cpu.track_data: kind 0; track_text_reads: 1, base the text's physical
   address; track_foreign_stacks: 2, owner the stack's CPU; watch_data: 3, a footprint hook
   whose accesses are also event-mode stops). Unicorn cannot remove hooks. */
static PyObject *cpu_hook_mem(CpuObject *self, PyObject *args) {
    int kind, type;
    unsigned long long start, end, base, owner, hook_add;
    if (!PyArg_ParseTuple(args, "iKKKKiK", &kind, &start, &end, &base, &owner, &type,
                          &hook_add))
        return NULL;
    if (kind < WATCH_DATA || kind > WATCH_WATCHED || end <= start)
        return PyErr_Format(PyExc_ValueError, "hook_mem: kind %d, [%#llx, %#llx)", kind,
                           start, end);
    MemWatch *w = malloc(sizeof *w);
    if (!w || buf_put(&self->watches, &w, sizeof w)) {
        free(w);
        return PyErr_NoMemory();
    }
    w->cpu = self;
    w->kind = (enum watch_kind)kind;
    w->base = base;
    w->owner = owner;
    size_t h = 0;
    int err = ((uc_hook_add_t)(uintptr_t)hook_add)(self->uc, &h, type, (void *)on_mem, w,
                                                   (uint64_t)start, (uint64_t)end - 1);
    if (err)
        return PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed: error %d", err);
    Py_RETURN_NONE;
}

static PyObject *cpu_set_nmi(CpuObject *self, PyObject *args) {
    PyObject *point, *map;
    if (!PyArg_ParseTuple(args, "OO", &point, &map))
        return NULL;
    Py_CLEAR(self->nmi_point);
    if (point != Py_None) {
        Py_INCREF(point);
        self->nmi_point = point;
    }
    free(self->nmi_map);
    self->nmi_map = NULL;
    if (map != Py_None) {
        Py_buffer b;
        if (PyObject_GetBuffer(map, &b, PyBUF_SIMPLE))
            return NULL;
        if ((uint64_t)b.len != self->view_size) {
            PyBuffer_Release(&b);
            return PyErr_Format(PyExc_ValueError, "nmi map: %zd bytes, text is %llu", b.len,
                                (unsigned long long)self->view_size);
        }
        self->nmi_map = malloc(b.len ? b.len : 1);
        if (self->nmi_map)
            memcpy(self->nmi_map, b.buf, b.len);
        PyBuffer_Release(&b);
        if (!self->nmi_map)
            return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

/* What every run starts with clear: its stop requests, its effects, its footprint. */
static void clear_run(CpuObject *self) {
    self->want_stop = self->read_stop_in = self->mem_hooked_valid = self->restarted = 0;
    self->py_hooked = 0;
    self->stored = 0;
    self->py_out = 0;
    self->halted = self->yielded = self->serialize = self->iret = self->emulate = 0;
    self->bp = 0;
    self->retired_run = 0;
    self->last_grain = (uint64_t)-1;
    self->grains.len = self->written.len = 0;
}

/* The view's pending units (FetchView.pending: (start, end) pairs, or None: none) into
   `pending`, for the event-mode stops. 0, or -1 with an exception set. */
static int load_pending(CpuObject *self, PyObject *pending) {
    self->npending = 0;
    if (pending == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(pending, "pending: a sequence of (start, end)");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t *p = realloc(self->pending, (n ? n : 1) * 2 * sizeof(int64_t));
    if (!p) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->pending = p;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "LL", &a, &b)) {
            Py_DECREF(seq);
            return -1;
        }
        p[2 * i] = a;
        p[2 * i + 1] = b;
    }
    self->npending = n;
    Py_DECREF(seq);
    return 0;
}

/* The state of one run, as Cpu.run sets it; 0, or -1 with an exception set. */
static int setup(CpuObject *self, long long quantum, int event, unsigned long long last_ip,
                 const char *last_code, Py_ssize_t last_len, int shadow, PyObject *pending,
                 long long decided_end, int nmi_armed, int track_fp, int truth) {
    self->left = quantum;
    self->event = event;
    self->skip_valid = event; /* the instruction a step starts with was decided already */
    self->last_ip = last_ip;
    self->last_len = last_len < INVALID_INSN_SIZE ? (int)last_len : INVALID_INSN_SIZE;
    memcpy(self->last_code, last_code, self->last_len);
    self->shadow = shadow;
    if (load_pending(self, pending))
        return -1;
    self->decided_end = decided_end;
    self->nmi_armed = nmi_armed;
    self->track_fp = track_fp;
    self->truth = truth;
    clear_run(self);
    return 0;
}

/* Retired's arrays, its `pending`, and the arrays' method (interned in intern_names). */
static PyObject *s_code, *s_ticks, *s_ips, *s_ends, *s_held_by, *s_frombytes;

/* Append the records the buffers hold to their Retired (emu/retired.py), `held`: its arrays
   take the packed bytes, the code offsets made absolute here rather than per record in
   Python; then the buffers are empty and the Retired no longer `pending`. 0, or -1. */
static int flush_truth(CpuObject *self) {
    PyObject *retired = self->held;
    if (!retired)
        return 0;
    self->held = NULL; /* (the reference is dropped at the end) */
    int rc = -1;
    if (PyObject_SetAttr(retired, s_held_by, Py_None))
        goto out;
    if (self->ticks.len == 0) {
        rc = 0;
        goto out;
    }
    PyObject *code = PyObject_GetAttr(retired, s_code);
    if (!code)
        goto out;
    if (!PyByteArray_Check(code)) {
        Py_DECREF(code);
        PyErr_SetString(PyExc_TypeError, "Retired._code is not a bytearray");
        goto out;
    }
    if ((uint64_t)PyByteArray_GET_SIZE(code) + self->code.len > UINT32_MAX) {
        Py_DECREF(code); /* as array('I').append would: the offsets are 32-bit */
        PyErr_SetString(PyExc_OverflowError, "a CPU's retired code outgrew 4 GiB");
        goto out;
    }
    uint32_t base = (uint32_t)PyByteArray_GET_SIZE(code);
    uint32_t *ends = (uint32_t *)self->ends.data;
    size_t n = self->ends.len / 4;
    for (size_t i = 0; i < n; i++)
        ends[i] += base;
    Py_ssize_t old = PyByteArray_GET_SIZE(code);
    int bad = PyByteArray_Resize(code, old + (Py_ssize_t)self->code.len);
    if (!bad)
        memcpy(PyByteArray_AS_STRING(code) + old, self->code.data, self->code.len);
    Py_DECREF(code);
    if (bad)
        goto out;
    PyObject *fields[3] = {s_ticks, s_ips, s_ends};
    Buf *bufs[3] = {&self->ticks, &self->ips, &self->ends};
    for (int k = 0; k < 3; k++) {
        PyObject *arr = PyObject_GetAttr(retired, fields[k]);
        if (!arr)
            goto out;
        PyObject *view = PyMemoryView_FromMemory(bufs[k]->data, (Py_ssize_t)bufs[k]->len,
                                                 PyBUF_READ);
        PyObject *r = view ? PyObject_CallMethodOneArg(arr, s_frombytes, view) : NULL;
        Py_XDECREF(view);
        Py_DECREF(arr);
        if (!r)
            goto out;
        Py_DECREF(r);
    }
    rc = 0;
out:
    self->ticks.len = self->ips.len = self->ends.len = self->code.len = 0;
    Py_DECREF(retired);
    return rc;
}

/* The truth buffers made `retired`'s (None: no records), those they held for another
   Retired appended to it first. Records then stay here, in buffers that grow by doubling,
   until Python reads the Retired (its `pending`, this Cpu, is asked: flush_truth) or another
   takes the buffers: appending each batch's records to Python's arrays as it ended
   reallocated and copied them tens of times a run. 0, or -1. */
static int hold_truth(CpuObject *self, PyObject *retired) {
    if (retired == self->held)
        return 0;
    if (flush_truth(self))
        return -1;
    if (retired == Py_None)
        return 0;
    if (PyObject_SetAttr(retired, s_held_by, (PyObject *)self))
        return -1;
    Py_INCREF(retired);
    self->held = retired;
    return 0;
}

/* flush_truth(retired): the records held for `retired`, appended to it (Retired._sync). */
static PyObject *cpu_flush_truth(CpuObject *self, PyObject *retired) {
    if (retired == self->held) {
        if (flush_truth(self))
            return NULL;
    } else if (PyObject_SetAttr(retired, s_held_by, Py_None)) { /* none held for it */
        return NULL;
    }
    Py_RETURN_NONE;
}

/* emu/footprint.py: WRITTEN, the flag of a written location in Footprint.packed */
#define FP_WRITTEN (1ULL << 63)

/* Whether `key` is new to this flush's set (s->seen, open addressing, emptied by moving to
   the next stamp); room for `room` keys is made beforehand (seen_begin). */
static int seen_add(CpuObject *s, uint64_t key) {
    size_t mask = s->seen_cap - 1, h = (size_t)((key * 0x9e3779b97f4a7c15ULL) >> 32) & mask;
    while (s->seen_stamp[h] == s->seen_now) {
        if (s->seen[h] == key)
            return 0;
        h = (h + 1) & mask;
    }
    s->seen_stamp[h] = s->seen_now;
    s->seen[h] = key;
    return 1;
}

static int seen_begin(CpuObject *s, size_t room) {
    if (++s->seen_now == 0 || 2 * room > s->seen_cap) { /* a new table (or stamps wrapped) */
        size_t cap = s->seen_cap ? s->seen_cap : 256;
        while (cap < 2 * room)
            cap *= 2;
        free(s->seen);
        free(s->seen_stamp);
        s->seen = malloc(cap * sizeof *s->seen);
        s->seen_stamp = calloc(cap, sizeof *s->seen_stamp);
        s->seen_cap = s->seen ? cap : 0;
        s->seen_now = 1;
        if (!s->seen || !s->seen_stamp)
            return -1;
    }
    return 0;
}

/* Footprint's slots (interned in intern_names). */
static PyObject *s_packed, *s_added, *s_cpu;

/* `n` entries appended to the footprint's `packed` bytes. 0, or -1. */
static int fp_append(PyObject *fp, const uint64_t *e, size_t n) {
    PyObject *old = PyObject_GetAttr(fp, s_packed);
    if (!old)
        return -1;
    if (!PyBytes_Check(old)) {
        Py_DECREF(old);
        PyErr_SetString(PyExc_TypeError, "Footprint.packed is not bytes");
        return -1;
    }
    Py_ssize_t have = PyBytes_GET_SIZE(old);
    PyObject *b = PyBytes_FromStringAndSize(NULL, have + (Py_ssize_t)(n * sizeof *e));
    if (b) {
        memcpy(PyBytes_AS_STRING(b), PyBytes_AS_STRING(old), have);
        memcpy(PyBytes_AS_STRING(b) + have, e, n * sizeof *e);
    }
    Py_DECREF(old);
    int rc = b ? PyObject_SetAttr(fp, s_packed, b) : -1;
    Py_XDECREF(b);
    return rc;
}

/* The `nfirst` entries `first` (a step's own, make_footprint's) and the locations the run
   read and wrote added to the footprint `fp`, each once (the hooks add one per access), in
   one new `packed`. 0, or -1. */
static int add_run_footprint(CpuObject *s, PyObject *fp, const uint64_t *first,
                             size_t nfirst) {
    size_t nr = s->grains.len / 8, nw = s->written.len / 8;
    if (!nr && !nw && !nfirst)
        return 0;
    if (seen_begin(s, nfirst + nr + nw)) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *out = malloc((nfirst + nr + nw) * sizeof *out);
    if (!out) {
        PyErr_NoMemory();
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < nfirst; i++)
        if (seen_add(s, first[i]))
            out[n++] = first[i];
    const uint64_t *r = (const uint64_t *)s->grains.data, *w = (const uint64_t *)s->written.data;
    for (size_t i = 0; i < nr; i++)
        if (seen_add(s, r[i]))
            out[n++] = r[i];
    for (size_t i = 0; i < nw; i++)
        if (seen_add(s, w[i] | FP_WRITTEN))
            out[n++] = w[i] | FP_WRITTEN;
    int rc = fp_append(fp, out, n);
    free(out);
    return rc;
}

/* Before a run: the text pages fetched from the slots holding the view's bytes now, and
   Unicorn told what that changes (emu/fetch_pages.c). 0, or -1 with an error. */
static int sync_pages(CpuObject *s) {
    if (!s->pages)
        return 0;
    enum fetch_sync r = fetch_pages_sync(s->pages, s->view);
    int err = r == FETCH_EMPTIED ? s->ctl(s->uc, s->ctl_tb_flush) : 0;
    if (!err && r != FETCH_SAME)
        err = s->ctl(s->uc, s->ctl_tlb_flush);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_ctl(%s) failed: error %d",
                     r == FETCH_EMPTIED ? "TB_FLUSH or TLB_FLUSH" : "TLB_FLUSH", err);
        return -1;
    }
    return 0;
}

/* One emu_start from the current RIP with the run set up; then where it stopped (`rip`).
   The uc_err (0 or more), or -1 with the error a hook kept raised. */
static int run_once(CpuObject *self) {
    if (sync_pages(self))
        return -1;
    uint64_t rip = 0;
    int err = self->reg_read(self->uc, self->reg_rip, &rip);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_reg_read(RIP) failed: error %d", err);
        return -1;
    }
    self->skip_fetch = rip;
    struct timespec t0, t1;
    if (self->timing)
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    err = self->emu_start(self->uc, rip, 0, 0, 0); /* Python hooks take the GIL we hold */
    if (self->timing) {
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        self->unicorn_ns += (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL +
                                       (t1.tv_nsec - t0.tv_nsec));
    }
    if (self->err_type != NULL) {
        PyErr_Restore(self->err_type, self->err_value, self->err_tb);
        self->err_type = self->err_value = self->err_tb = NULL;
        return -1;
    }
    self->rip = 0;
    if (self->reg_read(self->uc, self->reg_rip, &self->rip)) {
        PyErr_SetString(PyExc_RuntimeError, "uc_reg_read(RIP) failed");
        return -1;
    }
    return err;
}

/* run(quantum, event, last_ip, last_code, shadow, pending|None, decided_end, nmi_armed,
       track_fp, retired|None, footprint|None) -> uc_err: one run from the current RIP
   (Cpu.run): emu_start with until=0 and count=0, the run's records held for `retired`
   (hold_truth), and the locations it read and wrote added to the footprint (its `packed`
   entries). Raises an error a hook kept; the caller raises one a Python hook left in the
   binding. */
static PyObject *cpu_run(CpuObject *self, PyObject *args) {
    long long quantum, decided_end;
    int event, shadow, nmi_armed, track_fp;
    PyObject *pending, *retired, *footprint;
    unsigned long long last_ip;
    const char *last_code;
    Py_ssize_t last_len;
    if (!PyArg_ParseTuple(args, "LpKy#pOLppOO", &quantum, &event, &last_ip, &last_code,
                          &last_len, &shadow, &pending, &decided_end, &nmi_armed, &track_fp,
                          &retired, &footprint))
        return NULL;
    if (hold_truth(self, retired) ||
        setup(self, quantum, event, last_ip, last_code, last_len, shadow, pending, decided_end,
              nmi_armed, track_fp, retired != Py_None))
        return NULL;
    int err = run_once(self);
    if (err < 0)
        return NULL;
    if (footprint != Py_None && add_run_footprint(self, footprint, NULL, 0))
        return NULL;
    return PyLong_FromLong(err);
}

/* bind_ctl(uc_ctl, code): uc_ctl and its code that removes translations (remove_cache). */
static PyObject *cpu_bind_ctl(CpuObject *self, PyObject *args) {
    unsigned long long ctl;
    if (!PyArg_ParseTuple(args, "Ki", &ctl, &self->ctl_remove_cache))
        return NULL;
    self->ctl = (uc_ctl_t)(uintptr_t)ctl;
    Py_RETURN_NONE;
}

/* bind_text(address): the host address of the text in memory (SharedMemory.text), which a
   serialization copies pending units of the view from. */
static PyObject *cpu_bind_text(CpuObject *self, PyObject *arg) {
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (a == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    self->mem_text = (const uint8_t *)(uintptr_t)a;
    Py_RETURN_NONE;
}

/* The view's bytes in [begin, end) (virtual) changed: with fetch pages, marked for the
   next run's sync; else Unicorn's translations there dropped. 0, or -1 with an error. */
static int view_changed(CpuObject *self, uint64_t begin, uint64_t end) {
    if (self->pages) {
        fetch_pages_mark(self->pages, begin - self->text_base, end - self->text_base);
        return 0;
    }
    if (!self->ctl) {
        PyErr_SetString(PyExc_RuntimeError, "translations dropped before bind_ctl");
        return -1;
    }
    int err = self->ctl(self->uc, self->ctl_remove_cache, begin, end);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_ctl(TB_REMOVE_CACHE) failed: error %d", err);
        return -1;
    }
    return 0;
}

/* bind_pages(pool address, slots, pool physical address, uc_ctl's TLB_FLUSH code, its
   TB_FLUSH code): text fetched from a pool of page slots (emu/fetch_pages.c), once, after
   bind_ctl; the pool is the caller's, mapped at its physical address. */
static PyObject *cpu_bind_pages(CpuObject *self, PyObject *args) {
    unsigned long long pool, phys;
    unsigned int nslots;
    int tlb, tb;
    if (!PyArg_ParseTuple(args, "KIKii", &pool, &nslots, &phys, &tlb, &tb))
        return NULL;
    if (self->pages || !self->ctl || !self->view)
        return PyErr_Format(PyExc_RuntimeError, "bind_pages: once, after bind and bind_ctl");
    if (self->view_size % FETCH_PAGE || self->view_size / FETCH_PAGE >= nslots)
        return PyErr_Format(PyExc_ValueError, "bind_pages: %u slots for a %llu-byte text",
                            nslots, (unsigned long long)self->view_size);
    self->pages = fetch_pages_new((uint8_t *)(uintptr_t)pool, nslots,
                                  (uint32_t)(self->view_size / FETCH_PAGE));
    if (!self->pages)
        return PyErr_NoMemory();
    self->phys_pool = phys;
    self->ctl_tlb_flush = tlb;
    self->ctl_tb_flush = tb;
    Py_RETURN_NONE;
}

static int64_t *ranges_of(PyObject *list, Py_ssize_t *n);

/* mark_ranges([(start, end), ...]): the view's bytes in each range of text offsets may
   change (NativeCpu.view_takes), marked for the next run's sync. */
static PyObject *cpu_mark_ranges(CpuObject *self, PyObject *ranges) {
    if (!self->pages)
        return PyErr_Format(PyExc_RuntimeError, "mark_ranges before bind_pages");
    Py_ssize_t n = 0;
    int64_t *r = ranges_of(ranges, &n);
    if (!r)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++)
        fetch_pages_mark(self->pages, (uint64_t)r[2 * k], (uint64_t)r[2 * k + 1]);
    free(r);
    Py_RETURN_NONE;
}

/* pages() -> (slots, used, syncs, switches, made, emptied), or None without fetch pages. */
static PyObject *cpu_pages(CpuObject *self, PyObject *unused) {
    (void)unused;
    if (!self->pages)
        Py_RETURN_NONE;
    FetchPagesStats st = fetch_pages_stats(self->pages);
    return Py_BuildValue("(IIKKKK)", st.slots, st.used, (unsigned long long)st.syncs,
                         (unsigned long long)st.switches, (unsigned long long)st.made,
                         (unsigned long long)st.emptied);
}

/* remove_cache(begin, end): the view's bytes in [begin, end) changed (view_changed). */
static PyObject *cpu_remove_cache(CpuObject *self, PyObject *args) {
    unsigned long long begin, end;
    if (!PyArg_ParseTuple(args, "KK", &begin, &end))
        return NULL;
    if (view_changed(self, begin, end))
        return NULL;
    Py_RETURN_NONE;
}

/* bind_frames(regs idtr, cs, ss, rsp, rflags; data va, host, size; stacks va, host, size,
   slot, guard; kernel CS): what push_frame needs, once. */
static PyObject *cpu_bind_frames(CpuObject *s, PyObject *args) {
    unsigned long long data_host, stacks_host;
    if (!PyArg_ParseTuple(args, "iiiiiKKKKKKKKK", &s->reg_idtr, &s->reg_cs, &s->reg_ss,
                          &s->reg_rsp, &s->reg_rflags, &s->data_va, &data_host, &s->data_size,
                          &s->stacks_va, &stacks_host, &s->stacks_size, &s->stack_slot,
                          &s->stack_guard, &s->kernel_cs))
        return NULL;
    if (!s->stack_slot || s->stack_guard >= s->stack_slot)
        return PyErr_Format(PyExc_ValueError, "bind_frames: a stack slot and its guard page");
    s->data_host = (uint8_t *)(uintptr_t)data_host;
    s->stacks_host = (uint8_t *)(uintptr_t)stacks_host;
    s->frames = 1;
    Py_RETURN_NONE;
}

/* The host bytes of guest [va, va + n) when all of it is in the data region, or in one
   CPU's stack above its guard page (Layout.region_of; SharedMemory's banks); else NULL. */
static uint8_t *frame_bytes(const CpuObject *s, uint64_t va, uint64_t n) {
    if (va >= s->data_va && va - s->data_va <= s->data_size &&
        n <= s->data_size - (va - s->data_va))
        return s->data_host + (va - s->data_va);
    if (va >= s->stacks_va && va - s->stacks_va <= s->stacks_size &&
        n <= s->stacks_size - (va - s->stacks_va) && n) {
        uint64_t lo = va - s->stacks_va, hi = lo + n - 1;
        if (lo / s->stack_slot == hi / s->stack_slot && lo % s->stack_slot >= s->stack_guard)
            return s->stacks_host + lo;
    }
    return NULL;
}

typedef struct { /* unicorn.h: uc_x86_mmr */
    uint16_t selector;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
} X86Mmr;

#define GATE_INTERRUPT 0xE
#define GATE_TRAP 0xF
#define RFLAGS_TF (1ULL << 8)
#define RFLAGS_NT (1ULL << 14)
#define RFLAGS_RF (1ULL << 16)
#define RFLAGS_VM (1ULL << 17)

/* delivery.py's _push_frame when it succeeds with the IDT in the data region and the frame in
   a stack or the data region, the common case, in C: 1 and the handler's address. Anything
   else (a limit, gate, guard page or region it does not take) changes nothing and is 0: the
   Python code, the reference, delivers or says why not (-1: an error).
   tests/test_engines.py compares the engines over every scenario. The method
   push_frame(vector, rip, error code or -1) -> the handler's address, or None. */
static int push_frame(CpuObject *s, int vector, uint64_t rip, long long err,
                      uint64_t *handler_out) {
    X86Mmr idtr = {0};
    if (!s->frames || vector < 0 || s->reg_read(s->uc, s->reg_idtr, &idtr) ||
        16ULL * (uint64_t)vector + 15 > idtr.limit)
        return 0;
    const uint8_t *g = frame_bytes(s, idtr.base + 16ULL * (uint64_t)vector, 16);
    if (!g)
        return 0;
    uint64_t low, high; /* x86.Gate.decode */
    memcpy(&low, g, 8);
    memcpy(&high, g + 8, 8);
    uint64_t handler = (low & 0xFFFF) | (((low >> 48) & 0xFFFF) << 16) |
                       ((high & 0xFFFFFFFFULL) << 32);
    unsigned type = (low >> 40) & 0xF;
    if (!(low >> 47 & 1) || (type != GATE_INTERRUPT && type != GATE_TRAP) ||
        ((low >> 16) & 0xFFFF) != s->kernel_cs)
        return 0;
    uint64_t rsp = 0, rflags = 0, cs = 0, ss = 0;
    if (s->reg_read(s->uc, s->reg_rsp, &rsp) || s->reg_read(s->uc, s->reg_rflags, &rflags) ||
        s->reg_read(s->uc, s->reg_cs, &cs) || s->reg_read(s->uc, s->reg_ss, &ss))
        return 0;
    uint64_t frame[6];
    int n = 0;
    if (err >= 0)
        frame[n++] = (uint64_t)err;
    frame[n++] = rip;
    frame[n++] = cs;
    frame[n++] = rflags;
    frame[n++] = rsp;
    frame[n++] = ss;
    uint64_t new_rsp = (rsp & ~0xFULL) - 8ULL * (uint64_t)n;
    uint8_t *dst = frame_bytes(s, new_rsp, 8ULL * (uint64_t)n);
    if (!dst)
        return 0;
    memcpy(dst, frame, 8 * (size_t)n);
    uint64_t flags = rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM);
    if (type == GATE_INTERRUPT)
        flags &= ~(1ULL << 9); /* IF */
    if (s->reg_write(s->uc, s->reg_rsp, &new_rsp) ||
        s->reg_write(s->uc, s->reg_rflags, &flags) || s->reg_write(s->uc, s->reg_rip, &handler)) {
        PyErr_SetString(PyExc_RuntimeError, "push_frame: uc_reg_write failed");
        return -1;
    }
    *handler_out = handler;
    return 1;
}

static PyObject *cpu_push_frame(CpuObject *s, PyObject *args) {
    int vector;
    unsigned long long rip;
    long long err;
    if (!PyArg_ParseTuple(args, "iKL", &vector, &rip, &err))
        return NULL;
    uint64_t handler = 0;
    int r = push_frame(s, vector, rip, err, &handler);
    if (r < 0)
        return NULL;
    if (!r)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(handler);
}

/* A memory hook saw an access of the current instruction (Cpu._note_mem_hook). */
static PyObject *cpu_mem_hook(CpuObject *self, PyObject *unused) {
    (void)unused;
    self->mem_hooked = self->last_ip;
    self->mem_hooked_valid = 1;
    Py_RETURN_NONE;
}

static PyObject *cpu_get_last_code(CpuObject *self, void *closure) {
    (void)closure;
    return PyBytes_FromStringAndSize((const char *)self->last_code, self->last_len);
}

static PyMethodDef cpu_methods[] = {
    {"bind", (PyCFunction)cpu_bind, METH_VARARGS, "register the hooks on a Unicorn engine"},
    {"set_nmi", (PyCFunction)cpu_set_nmi, METH_VARARGS, "the NMI point and where it is asked"},
    {"run", (PyCFunction)cpu_run, METH_VARARGS, "one run from the current RIP"},
    {"flush_truth", (PyCFunction)cpu_flush_truth, METH_O, "the records held for a Retired"},
    {"bind_text", (PyCFunction)cpu_bind_text, METH_O, "the text memory's host address"},
    {"hook_mem", (PyCFunction)cpu_hook_mem, METH_VARARGS, "a footprint memory hook"},
    {"bind_store", (PyCFunction)cpu_bind_store, METH_VARARGS, "the text-store hook"},
    {"mem_hook", (PyCFunction)cpu_mem_hook, METH_NOARGS, "a memory hook saw this instruction"},
    {"bind_ctl", (PyCFunction)cpu_bind_ctl, METH_VARARGS, "uc_ctl, for remove_cache"},
    {"bind_out", (PyCFunction)cpu_bind_out, METH_VARARGS, "the OUT hook (hypercalls)"},
    {"bind_intr", (PyCFunction)cpu_bind_intr, METH_VARARGS, "the INTR hook (exceptions)"},
    {"bind_tlb", (PyCFunction)cpu_bind_tlb, METH_VARARGS, "the TLB fill hook"},
    {"translate", (PyCFunction)cpu_translate, METH_VARARGS, "the fill hook's translation"},
    {"remove_cache", (PyCFunction)cpu_remove_cache, METH_VARARGS, "the view changed there"},
    {"bind_pages", (PyCFunction)cpu_bind_pages, METH_VARARGS, "text fetched from page slots"},
    {"pages", (PyCFunction)cpu_pages, METH_NOARGS, "the fetch pages' counts"},
    {"mark_ranges", (PyCFunction)cpu_mark_ranges, METH_O, "the view changes in these ranges"},
    {"bind_frames", (PyCFunction)cpu_bind_frames, METH_VARARGS, "what push_frame needs"},
    {"push_frame", (PyCFunction)cpu_push_frame, METH_VARARGS, "an interrupt frame, in C"},
    {NULL}};

#define M(name, type, field, flags) {name, type, offsetof(CpuObject, field), flags, NULL}
static PyMemberDef cpu_members[] = {
    M("want_stop", T_INT, want_stop, 0),
    M("read_stop_in", T_INT, read_stop_in, 0),
    M("restarted", T_INT, restarted, READONLY),
    M("last_ip", T_ULONGLONG, last_ip, READONLY),
    M("shadow", T_INT, shadow, READONLY),
    M("halted", T_INT, halted, READONLY),
    M("yielded", T_INT, yielded, READONLY),
    M("serialize", T_INT, serialize, READONLY),
    M("iret", T_INT, iret, READONLY),
    M("emulate", T_INT, emulate, READONLY),
    M("emulate_addr", T_ULONGLONG, emulate_addr, READONLY),
    M("retired_run", T_ULONGLONG, retired_run, READONLY),
    M("rip", T_ULONGLONG, rip, READONLY),
    M("py_hooked", T_INT, py_hooked, 0),
    M("stored", T_INT, stored, 0),
    M("py_out", T_INT, py_out, 0),
    M("timing", T_INT, timing, 0),
    M("unicorn_ns", T_ULONGLONG, unicorn_ns, 0),
    M("left", T_LONGLONG, left, 0),
    M("events", T_OBJECT, events, 0),
    M("bp", T_INT, bp, READONLY),
    M("bp_rip", T_ULONGLONG, bp_rip, READONLY),
    {NULL}};

static PyGetSetDef cpu_getset[] = {
    {"last_code", (getter)cpu_get_last_code, NULL, "the bytes of the last retired", NULL},
    {NULL}};

static PyTypeObject CpuType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "emu._native.Cpu",
    .tp_basicsize = sizeof(CpuObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One CPU's native hooks (emu/native_cpu.py).",
    .tp_traverse = (traverseproc)cpu_traverse,
    .tp_clear = (inquiry)cpu_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cpu_init,
    .tp_dealloc = (destructor)cpu_dealloc,
    .tp_methods = cpu_methods,
    .tp_members = cpu_members,
    .tp_getset = cpu_getset,
};

/* ------------------------------------------------------------------ the scheduling loop */

/* Machine._step's common case, step after step, in C (emu/native_loop.py is its Python side;
   Machine._step and Machine._cpu_step are the reference it must equal). A step here is: the
   CPU choice among the runnable CPUs, the quantum choice, and a run that ends with nothing
   for Python to do, with the IPI and view choices of Machine._cpu_step on the way when they
   change nothing. The loop hands back to Python, with the step in progress where it stopped,
   as soon as a step needs more:
     LOOP_STEP    before a step: a CPU is halted, or none is runnable (Python does the step);
     LOOP_CHOSEN  the CPU is chosen and recorded, but it has an NMI pending (Machine._cpu_step);
     LOOP_RAISED  the NMI_RAISE choice at the step's start raises a spontaneous NMI
                  (Machine._raise_nmi, then Machine._arrived_step);
     LOOP_IPI     the IPI choice delivers a pending IPI now (Machine._take_ipi, then
                  Machine._quantum_step);
     LOOP_VIEWED  the view choice makes pending unit `value - 1` visible (Machine._refresh,
                  then Machine._run_quantum);
     LOOP_FETCH   event mode: the instruction the step starts with has bytes with a pending
                  store, whose fetch is decided (Machine._event_run);
     LOOP_RAN     the CPU ran, and its run has an effect or a stop for Python (an error, a
                  Python hook ran, RDTSCP to emulate, IRET, serialize, HLT, the CPU's budget):
                  Python ends the run (NativeCpu.finish) and the step (Machine._after_run);
     LOOP_BUDGET  after a step, the clock is past the run's budget (Machine.run cuts it);
     LOOP_CAP     after `max_steps` steps (Machine.run checks for Ctrl-C, and calls again).
   Choices are drawn from a RandomSource's own `getrandbits` exactly as Random.randrange
   draws them, or asked of Decisions.choose for any other source, and recorded as the
   interned Choice objects of the tables.
   In event mode (event_step) a step is Machine._step's with footprints: the CPU choice, the
   step's footprint (cpu.footprint, as Machine._chosen_step makes it), the IPI choice, the
   fetch of its first instruction when none of its bytes is pending, and a run to the next
   visible event. A step handed back after its footprint was made (LOOP_IPI, LOOP_FETCH,
   LOOP_RAN, LOOP_RAISED) is Python's to finish, footprint included: the loop does not take
   it back. A CPU with spontaneous NMIs left has its NMI_RAISE choices made here, at the
   step's start and (event mode) at the NMI points of its run (nmi_before): a run whose NMI
   point raises one is handed back (LOOP_RAN) as one a Python hook ran in. */

#define LOOP_MAX_CPUS 20
enum loop_status {
    LOOP_STEP, LOOP_CHOSEN, LOOP_RAN, LOOP_BUDGET, LOOP_CAP, LOOP_IPI, LOOP_VIEWED, LOOP_FETCH,
    LOOP_RAISED
};
/* per CPU, as load_cpu reads them from its Python state at a batch's start */
#define F_FINISHED 1
#define F_HALTED 2
#define F_YIELDED 4
#define F_NMI 8  /* an NMI pending: Python's */
#define F_IPI 16 /* an IPI pending */
#define F_NMI_BLOCKED 32 /* an NMI would not be taken now (event mode's footprint reads it) */
#define F_NMI_LEFT 64 /* spontaneous NMIs left and none pending: NMI_RAISE choices, here */
#define RFLAGS_IF 0x200
#define MAX_INSN_LENGTH 15 /* emu/x86.py */

/* Random._randbelow_with_getrandbits(n), n >= 2 (CPython's randrange(n)). */
static long randbelow(PyObject *getrandbits, long n) {
    int k = 0;
    for (long m = n; m; m >>= 1)
        k++;
    PyObject *bits = PyLong_FromLong(k);
    if (!bits)
        return -1;
    for (;;) {
        PyObject *r = PyObject_CallOneArg(getrandbits, bits);
        if (!r)
            break;
        long v = PyLong_AsLong(r);
        Py_DECREF(r);
        if (v == -1 && PyErr_Occurred())
            break;
        if (v < n) {
            Py_DECREF(bits);
            return v;
        }
    }
    Py_DECREF(bits);
    return -1;
}

/* Who answers the loop's choices: a RandomSource's `getrandbits` (drawn here), else
   Decisions.choose; from position `simple_from` of `path` on (-1: never) the source answers
   every choice with its simplest value and records nothing of its own
   (DecisionSource.simplest_from), so the loop answers those itself; before it, at a
   position where `follow` (DecisionSource.follows, a tuple of ints) holds the request's
   simplest value, the same. */
typedef struct Chooser {
    PyObject *getrandbits, *random, *choose, *path, *follow;
    Py_ssize_t simple_from;
} Chooser;

/* One choice of `entry` (its request, its simplest value, then the Choice of each value):
   drawn or answered here and recorded (the entry's interned Choice), else
   Decisions.choose(request). A weight >= 0: a spontaneous NMI's, which a RandomSource draws
   as random() < weight (RandomSource.pick). -1: an error. */
static long decide_weighted(PyObject *entry, const Chooser *ch, double weight) {
    Py_ssize_t arity = PyTuple_GET_SIZE(entry) - 2;
    long v;
    if (ch->getrandbits != Py_None && weight >= 0) {
        PyObject *r = PyObject_CallNoArgs(ch->random);
        if (!r)
            return -1;
        double x = PyFloat_AsDouble(r);
        Py_DECREF(r);
        if (x == -1.0 && PyErr_Occurred())
            return -1;
        v = x < weight;
    } else if (ch->getrandbits != Py_None) {
        v = randbelow(ch->getrandbits, (long)arity);
        if (v < 0)
            return -1;
    } else if (ch->simple_from >= 0 && PyList_GET_SIZE(ch->path) >= ch->simple_from) {
        v = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        if (v == -1 && PyErr_Occurred())
            return -1;
    } else if (PyList_GET_SIZE(ch->path) < PyTuple_GET_SIZE(ch->follow) &&
               PyObject_RichCompareBool(PyTuple_GET_ITEM(ch->follow, PyList_GET_SIZE(ch->path)),
                                        PyTuple_GET_ITEM(entry, 1), Py_EQ) == 1) {
        v = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        if (v == -1 && PyErr_Occurred())
            return -1;
    } else {
        PyObject *r = PyObject_CallOneArg(ch->choose, PyTuple_GET_ITEM(entry, 0));
        if (!r)
            return -1;
        v = PyLong_AsLong(r);
        Py_DECREF(r);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 0 || v >= arity) {
            PyErr_Format(PyExc_RuntimeError, "Decisions.choose answered %ld of %zd", v, arity);
            return -1;
        }
        return v;
    }
    if (v < 0 || v >= arity) {
        PyErr_Format(PyExc_RuntimeError, "a choice of %zd answered %ld in C", arity, v);
        return -1;
    }
    return PyList_Append(ch->path, PyTuple_GET_ITEM(entry, 2 + v)) ? -1 : v;
}

static long decide(PyObject *entry, const Chooser *ch) {
    return decide_weighted(entry, ch, -1.0);
}

/* The entry of a CPU choice's context `key` (emu/native_loop.py: cpu_key), made once. */
static PyObject *cpu_entry(PyObject *table, PyObject *make, uint64_t key) {
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (!k)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(table, k); /* borrowed: the table keeps it */
    if (!entry && !PyErr_Occurred()) {
        PyObject *made = PyObject_CallOneArg(make, k);
        if (made && (!PyTuple_Check(made) || PyTuple_GET_SIZE(made) < 4)) {
            PyErr_SetString(PyExc_TypeError,
                            "a CPU choice entry is (request, simplest, choices...)");
            Py_CLEAR(made);
        }
        if (made && PyDict_SetItem(table, k, made) == 0)
            entry = made;
        Py_XDECREF(made); /* the table holds it */
    }
    Py_DECREF(k);
    return entry;
}

static int nth_bit(uint32_t mask, long n) {
    for (int i = 0; i < LOOP_MAX_CPUS; i++)
        if (mask >> i & 1 && n-- == 0)
            return i;
    return -1;
}

/* The names of the Python state the loop reads and writes (emu/cpu.py: Cpu, CpuState). */
static PyObject *s_state, *s_view, *s_retired, *s_pending, *s_finished, *s_halted, *s_yielded,
    *s_pending_nmi, *s_nmis_left, *s_pending_ipis, *s_last_ip, *s_last_code, *s_shadow,
    *s_nmi_blocked, *s_footprint, *s_handling, *s_left, *s_delivered, *s_own_dirty,
    *s_view_touched, *s_pending_set, *s_versions, *s_verdict;

static int intern_names(void) {
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {{&s_state, "state"},         {&s_view, "view"},
                 {&s_retired, "retired"},     {&s_pending, "_pending"},
                 {&s_finished, "finished"},   {&s_halted, "halted"},
                 {&s_yielded, "yielded"},     {&s_pending_nmi, "pending_nmi"},
                 {&s_nmis_left, "nmis_left"}, {&s_pending_ipis, "pending_ipis"},
                 {&s_last_ip, "last_ip"},     {&s_last_code, "last_code"},
                 {&s_shadow, "shadow"},       {&s_nmi_blocked, "nmi_blocked"},
                 {&s_footprint, "footprint"}, {&s_packed, "packed"},
                 {&s_added, "added"},         {&s_cpu, "cpu"},
                 {&s_code, "_code"},          {&s_ticks, "_ticks"},
                 {&s_ips, "_ips"},            {&s_ends, "_ends"},
                 {&s_held_by, "pending"},     {&s_frombytes, "frombytes"},
                 {&s_handling, "handling"},   {&s_left, "left"},
                 {&s_delivered, "delivered"}, {&s_own_dirty, "own_dirty"},
                 {&s_view_touched, "view_touched"}, {&s_pending_set, "_pending_set"},
                 {&s_versions, "_versions"},  {&s_verdict, "verdict"}};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (!(*names[k].slot = PyUnicode_InternFromString(names[k].name)))
            return -1;
    return 0;
}

/* The fields of the records the loop makes without calling their __init__ (make_record), in
   each dataclass's order: emu/native_cpu.py (check_records) compares them with the classes'
   fields (module attribute RECORD_FIELDS) before a CPU binds its classes. */
static const char *const DELIVERY_FIELDS[] = {"tick",    "cpu",    "vector",    "rip",
                                              "handler", "source", "error_code"};
static const char *const SERIALIZE_FIELDS[] = {"tick", "cpu", "units", "ipi"};
static const char *const FRAME_FIELDS[] = {"vector", "rip", "delivered", "symbol"};
#define NFIELDS(a) ((int)(sizeof a / sizeof a[0]))
static PyObject *delivery_fields[NFIELDS(DELIVERY_FIELDS)],
    *serialize_fields[NFIELDS(SERIALIZE_FIELDS)], *frame_fields[NFIELDS(FRAME_FIELDS)];

static int intern_fields(PyObject **out, const char *const *names, int n) {
    for (int k = 0; k < n; k++)
        if (!(out[k] = PyUnicode_InternFromString(names[k])))
            return -1;
    return 0;
}

/* An instance of the frozen dataclass `cls` as its generated __init__ makes it, without
   calling it: object.__setattr__ of each field in `names` to the matching value (new
   references, consumed; NULL when making one failed). Its __init__ cost 2 us of Python for
   each INT3 delivery, IPI and serialization, a few hundred a run. New reference or NULL. */
static PyObject *make_record(PyObject *cls, PyObject *const *names, int n, PyObject **values) {
    PyObject *o = NULL;
    for (int k = 0; k < n; k++)
        if (!values[k])
            goto out;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "a record's class is not a type");
        goto out;
    }
    o = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    for (int k = 0; o && k < n; k++)
        if (PyObject_GenericSetAttr(o, names[k], values[k]))
            Py_CLEAR(o);
out:
    for (int k = 0; k < n; k++)
        Py_XDECREF(values[k]);
    return o;
}

/* A Delivery (emu/events.py: ExceptionEvent, InterruptEvent) with no error code (its default,
   emu/native_cpu.py: C_DEFAULTS). */
static PyObject *make_delivery(PyObject *cls, uint64_t tick, int cpu, long vector, uint64_t rip,
                               uint64_t handler, uint64_t source) {
    PyObject *v[] = {PyLong_FromUnsignedLongLong(tick), PyLong_FromLong(cpu),
                     PyLong_FromLong(vector),           PyLong_FromUnsignedLongLong(rip),
                     PyLong_FromUnsignedLongLong(handler), PyLong_FromUnsignedLongLong(source),
                     Py_NewRef(Py_None)};
    return make_record(cls, delivery_fields, NFIELDS(DELIVERY_FIELDS), v);
}

/* A Serialize event: `units` made visible, by the IPI `ipi` (-1: an instruction). */
static PyObject *make_serialize(PyObject *cls, uint64_t tick, int cpu, Py_ssize_t units,
                                long ipi) {
    PyObject *v[] = {PyLong_FromUnsignedLongLong(tick), PyLong_FromLong(cpu),
                     PyLong_FromSsize_t(units),
                     ipi < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(ipi)};
    return make_record(cls, serialize_fields, NFIELDS(SERIALIZE_FIELDS), v);
}

/* A HandlerFrame (emu/verdict.py) of a delivery that succeeded, no symbol yet (the defaults,
   emu/native_cpu.py: C_DEFAULTS). */
static PyObject *make_frame(PyObject *cls, long vector, uint64_t rip) {
    PyObject *v[] = {PyLong_FromLong(vector), PyLong_FromUnsignedLongLong(rip),
                     Py_NewRef(Py_True), PyUnicode_FromStringAndSize("", 0)};
    return make_record(cls, frame_fields, NFIELDS(FRAME_FIELDS), v);
}

/* RECORD_FIELDS: {"delivery": (...), "serialize": (...), "frame": (...)}, for check_records. */
static PyObject *record_fields(void) {
    struct {
        const char *key;
        PyObject **names;
        int n;
    } all[] = {{"delivery", delivery_fields, NFIELDS(DELIVERY_FIELDS)},
               {"serialize", serialize_fields, NFIELDS(SERIALIZE_FIELDS)},
               {"frame", frame_fields, NFIELDS(FRAME_FIELDS)}};
    PyObject *d = PyDict_New();
    for (size_t k = 0; d && k < sizeof all / sizeof all[0]; k++) {
        PyObject *t = PyTuple_New(all[k].n);
        for (int i = 0; t && i < all[k].n; i++)
            PyTuple_SET_ITEM(t, i, Py_NewRef(all[k].names[i]));
        if (!t || PyDict_SetItemString(d, all[k].key, t))
            Py_CLEAR(d);
        Py_XDECREF(t);
    }
    return d;
}

/* The truth of obj.name: 0, 1, or -1 with an error. */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* obj.name as an unsigned 64-bit integer; (uint64_t)-1 with an error set on failure. */
static uint64_t attr_u64(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return (uint64_t)-1;
    uint64_t u = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return u;
}

static int set_attr(PyObject *obj, PyObject *name, PyObject *value) {
    if (!value)
        return -1;
    int rc = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return rc;
}

/* The F_* flags of a CPU's Python state (load_cpu's, and again after a hypercall), its
   F_YIELDED kept as `*flags` has it. */
static int refresh_flags(PyObject *st, int *flags) {
    int finished = attr_true(st, s_finished), halted = attr_true(st, s_halted),
        nmi = attr_true(st, s_pending_nmi), left = attr_true(st, s_nmis_left),
        ipis = attr_true(st, s_pending_ipis), blocked = attr_true(st, s_nmi_blocked);
    if (finished < 0 || halted < 0 || nmi < 0 || left < 0 || ipis < 0 || blocked < 0)
        return -1;
    *flags = (*flags & F_YIELDED) | (finished ? F_FINISHED : 0) | (halted ? F_HALTED : 0) |
             (nmi ? F_NMI : 0) | (left && !nmi ? F_NMI_LEFT : 0) | (ipis ? F_IPI : 0) |
             (blocked ? F_NMI_BLOCKED : 0);
    return 0;
}

/* One CPU's Python state into the loop: its F_* flags, the last instruction and shadow its
   native half starts from, its retired count, and in quantum mode its view entry (a new
   reference, or NULL with none pending), in event mode its view's pending units. The
   state's `yielded` is cleared: a hook of the run the batch ends with sets it as on the
   reference's run, which starts with it clear. -1: an error. */
static int load_cpu(PyObject *cpu, PyObject *st, CpuObject *s, PyObject *view_entries,
                    PyObject *view_entry, int index, int event, int *flags, uint64_t *count,
                    PyObject **view) {
    int yielded = attr_true(st, s_yielded), shadow = attr_true(st, s_shadow);
    if (yielded < 0 || shadow < 0)
        return -1;
    *flags = yielded ? F_YIELDED : 0;
    if (refresh_flags(st, flags))
        return -1;
    uint64_t ip = attr_u64(st, s_last_ip);
    *count = attr_u64(cpu, s_retired);
    if (PyErr_Occurred())
        return -1;
    PyObject *code = PyObject_GetAttr(st, s_last_code);
    if (!code)
        return -1;
    char *bytes;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(code, &bytes, &len)) {
        Py_DECREF(code);
        return -1;
    }
    s->last_ip = ip;
    s->last_len = len < INVALID_INSN_SIZE ? (int)len : INVALID_INSN_SIZE;
    memcpy(s->last_code, bytes, s->last_len);
    Py_DECREF(code);
    s->shadow = shadow;
    PyObject *v = PyObject_GetAttr(cpu, s_view);
    PyObject *pending = v ? PyObject_GetAttr(v, s_pending) : NULL;
    Py_XDECREF(v);
    if (!pending)
        return -1;
    *view = NULL;
    if (event) { /* no view choices: a fetch of a pending unit is decided (Python's) */
        int rc = load_pending(s, pending);
        Py_DECREF(pending);
        if (rc)
            return -1;
        return yielded ? set_attr(st, s_yielded, Py_NewRef(Py_False)) : 0;
    }
    Py_ssize_t npending = PyObject_Size(pending);
    Py_DECREF(pending);
    if (npending < 0)
        return -1;
    if (npending) {
        PyObject *key = PyLong_FromSsize_t(npending);
        if (!key)
            return -1;
        *view = PyDict_GetItemWithError(view_entries, key); /* made before: borrowed */
        Py_DECREF(key);
        if (*view)
            Py_INCREF(*view);
        else if (PyErr_Occurred() ||
                 !(*view = PyObject_CallFunction(view_entry, "in", index, npending)))
            return -1;
        if (!PyTuple_Check(*view) || PyTuple_GET_SIZE(*view) != npending + 3) {
            PyErr_SetString(PyExc_TypeError, "a view entry is (request, simplest, choices...)");
            Py_CLEAR(*view);
            return -1;
        }
    }
    return yielded ? set_attr(st, s_yielded, Py_NewRef(Py_False)) : 0;
}

/* Event mode's arguments: MachineConfig.max_quantum, the footprint class and the source's
   step_done when footprints are measured (else NULL), the Serialize and InterruptEvent
   classes (NULL: such steps handed back) and MachineConfig.serializing_vectors. */
typedef struct {
    int on;
    long long max_quantum;
    PyObject *fp_cls, *step_done, *serialize_cls, *interrupt_cls, *serializing;
} EventArgs;

/* Machine._chosen_step's footprint, Footprint(cpu) made without a call of its __init__ (its
   fields set here: the cost of the Python call was most of the step's footprint), and in
   `e` the entries a step starts it with (`*n` of them, which go into it with the run's,
   add_run_footprint, or before the step is handed back): the CPU's own stack written; its
   IRQ line read when a pending IPI would be taken now (not halted: the loop hands halted CPUs
   back), its NMI line when an NMI would be. A new reference, or NULL with an error. */
static PyObject *make_footprint(PyObject *cls, int cpu, int irq_open, int nmi_open,
                                uint64_t e[3], size_t *n) {
    *n = 0;
    e[(*n)++] = IRQ_TAG | STACK_BIT | (uint64_t)cpu | FP_WRITTEN;
    if (irq_open)
        e[(*n)++] = IRQ_TAG | (uint64_t)cpu << 1;
    if (nmi_open)
        e[(*n)++] = IRQ_TAG | (uint64_t)cpu << 1 | 1;
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *fp = type->tp_alloc(type, 0), *v = NULL, *packed = NULL, *added = NULL;
    if (!fp || !(v = PyLong_FromLong(cpu)) || PyObject_SetAttr(fp, s_cpu, v) ||
        !(packed = PyBytes_FromStringAndSize(NULL, 0)) ||
        PyObject_SetAttr(fp, s_packed, packed) || !(added = PyList_New(0)) ||
        PyObject_SetAttr(fp, s_added, added))
        Py_CLEAR(fp);
    Py_XDECREF(v);
    Py_XDECREF(packed);
    Py_XDECREF(added);
    return fp;
}

/* The end of a step's footprint, as Machine._chosen_step's `finally` ends it: off the CPU
   (cpu.footprint = None), then to the source's step_done. With an error in flight it is kept
   (what goes wrong on the way is dropped for it). 0, or -1 with an error. */
static int footprint_done(PyObject *pycpu, PyObject *fp, PyObject *step_done) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_SetAttr(pycpu, s_footprint, Py_None) ? NULL
                                                                : PyObject_CallOneArg(step_done, fp);
    int ok = r != NULL;
    Py_XDECREF(r);
    if (et) {
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
        return -1;
    }
    return ok ? 0 : -1;
}

/* IRET (SDM 6.7.1): NMI blocking ends and the innermost delivered handler returns, with the
   failed deliveries that escalated to it, as NativeCpu._end does with cpu._leave_handler:
   state.left = what it left, cut from the end of state.handling. 0, or -1 with an error. */
static int leave_handler(PyObject *st) {
    PyObject *handling = PyObject_GetAttr(st, s_handling);
    if (!handling)
        return -1;
    int rc = -1;
    if (!PyList_Check(handling)) {
        PyErr_SetString(PyExc_TypeError, "CpuState.handling is a list");
        goto out;
    }
    Py_ssize_t n = PyList_GET_SIZE(handling), k = n;
    while (k > 0) { /* the delivered handler, innermost ... */
        int d = attr_true(PyList_GET_ITEM(handling, --k), s_delivered);
        if (d < 0)
            goto out;
        if (d)
            break;
    }
    while (k > 0) { /* ... and the deliveries that failed into it */
        int d = attr_true(PyList_GET_ITEM(handling, k - 1), s_delivered);
        if (d < 0)
            goto out;
        if (d)
            break;
        k--;
    }
    PyObject *left = PyList_GetSlice(handling, k, n);
    if (!left || PyList_SetSlice(handling, k, n, NULL)) {
        Py_XDECREF(left);
        goto out;
    }
    rc = set_attr(st, s_left, left) || set_attr(st, s_nmi_blocked, Py_NewRef(Py_False)) ? -1 : 0;
out:
    Py_DECREF(handling);
    return rc;
}

/* The #BP of an INT3 a run stopped with, delivered as Machine._after_run has
   InterruptDelivery._exception deliver it when the frame push succeeds in C: a trap, raised by
   the INT3 itself (the CPU's last instruction), the frame's RIP the one after it; the handler
   frame appended to state.handling and the ExceptionEvent recorded. 1 delivered, 0 not
   (the push is not C's: nothing changed, Python delivers), -1 with an error. */
static int deliver_bp(CpuObject *s, PyObject *st, int index) {
    if (!s->frame_cls || !s->events || !PyList_Check(s->events))
        return 0;
    uint64_t handler = 0;
    int r = push_frame(s, 3, s->bp_rip, -1, &handler);
    if (r <= 0)
        return r;
    PyObject *handling = PyObject_GetAttr(st, s_handling);
    if (!handling)
        return -1;
    unsigned long long raised = s->last_ip; /* the INT3's address */
    PyObject *frame = make_frame(s->frame_cls, 3, raised);
    int rc = !frame || PyList_Append(handling, frame) ? -1 : 1;
    Py_XDECREF(frame);
    Py_DECREF(handling);
    if (rc < 0)
        return -1;
    PyObject *ev = make_delivery(s->exception_cls, s->clock->tick, index, 3, s->bp_rip,
                                 handler, raised);
    rc = !ev || PyList_Append(s->events, ev) ? -1 : 1;
    Py_XDECREF(ev);
    return rc;
}

/* The pending units of Python's `cpu`'s view (FetchView._pending) into `self`, again. */
static int reload_pending(CpuObject *self, PyObject *cpu) {
    PyObject *v = PyObject_GetAttr(cpu, s_view);
    PyObject *pending = v ? PyObject_GetAttr(v, s_pending) : NULL;
    Py_XDECREF(v);
    int rc = pending ? load_pending(self, pending) : -1;
    Py_XDECREF(pending);
    return rc;
}

static int cmp_range(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

/* Cpu.invalidate over cpu.merged of the `n` ranges (start, end pairs) `r`, sorted and
   merged in place: each merged range a change of the view (view_changed), noted in
   state.view_touched. 0, or -1. */
static int drop_ranges(CpuObject *s, PyObject *st, int64_t *r, Py_ssize_t n) {
    if (!n)
        return 0;
    PyObject *touched = PyObject_GetAttr(st, s_view_touched);
    if (!touched)
        return -1;
    int rc = -1;
    if (!PyList_Check(touched)) {
        PyErr_SetString(PyExc_TypeError, "view_touched is a list");
        goto out;
    }
    qsort(r, n, 2 * sizeof *r, cmp_range);
    Py_ssize_t m = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (m && r[2 * k] <= r[2 * m - 1]) {
            if (r[2 * k + 1] > r[2 * m - 1])
                r[2 * m - 1] = r[2 * k + 1];
        } else {
            r[2 * m] = r[2 * k];
            r[2 * m + 1] = r[2 * k + 1];
            m++;
        }
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        if (view_changed(s, s->text_base + (uint64_t)r[2 * k],
                         s->text_base + (uint64_t)r[2 * k + 1]))
            goto out;
        PyObject *t = Py_BuildValue("(LL)", (long long)r[2 * k], (long long)r[2 * k + 1]);
        if (!t || PyList_Append(touched, t)) {
            Py_XDECREF(t);
            goto out;
        }
        Py_DECREF(t);
    }
    rc = 0;
out:
    Py_DECREF(touched);
    return rc;
}

/* A list of (start, end) ranges as `n` pairs in a new array, which the caller frees (NULL
   with an error). */
static int64_t *ranges_of(PyObject *list, Py_ssize_t *n) {
    *n = 0;
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "ranges: a list of (start, end)");
        return NULL;
    }
    Py_ssize_t len = PyList_GET_SIZE(list);
    int64_t *r = malloc((len ? len : 1) * 2 * sizeof *r);
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < len; k++) {
        long long a, b;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, k), "LL", &a, &b) || a < 0 || b < a) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "ranges: start <= end, from 0");
            free(r);
            return NULL;
        }
        r[2 * k] = a;
        r[2 * k + 1] = b;
    }
    *n = len;
    return r;
}

/* Machine._after_run's own stores, after a run whose only Python hook was the text-store
   hook (Cpu._on_text_store: the store is in the views and the events, its ranges in
   state.own_dirty): drop_ranges over them, and own_dirty emptied. 0, or -1. */
static int own_stores_done(CpuObject *s, PyObject *st) {
    PyObject *own = PyObject_GetAttr(st, s_own_dirty);
    if (!own)
        return -1;
    Py_ssize_t n = 0;
    int64_t *r = ranges_of(own, &n);
    int rc = !r || drop_ranges(s, st, r, n) ? -1 : PyList_SetSlice(own, 0, n, NULL);
    free(r);
    Py_DECREF(own);
    return rc;
}

/* Machine._serialize when units are pending in the CPU's view: every one made visible
   (FetchView.serialize: memory's bytes copied into the view, its pending units, their set
   and intermediate contents emptied), each unit's text grains read by the footprint `fp`
   (if any), the translations of the units that changed dropped (drop_ranges), and the
   Serialize event (the units, `ipi` or -1 for an instruction). 0, or -1. */
static int serialize_view(CpuObject *s, PyObject *pycpu, PyObject *st, PyObject *fp,
                          int index, const EventArgs *ea, long ipi) {
    if (!s->mem_text) {
        PyErr_SetString(PyExc_RuntimeError, "a serialization before bind_text");
        return -1;
    }
    PyObject *view = PyObject_GetAttr(pycpu, s_view);
    PyObject *pending = view ? PyObject_GetAttr(view, s_pending) : NULL;
    Py_ssize_t n = 0, nc = 0;
    int64_t *units = pending ? ranges_of(pending, &n) : NULL;
    int64_t *changed = units ? malloc((n ? n : 1) * 2 * sizeof *changed) : NULL;
    uint64_t *grains = NULL;
    size_t ng = 0;
    int rc = -1;
    if (!changed) {
        if (units)
            PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        int64_t a = units[2 * k], b = units[2 * k + 1];
        if ((uint64_t)b > s->view_size) {
            PyErr_SetString(PyExc_ValueError, "a pending unit outside the text");
            goto out;
        }
        uint8_t *v = (uint8_t *)s->view + a; /* (the view's writable buffer) */
        if (memcmp(v, s->mem_text + a, (size_t)(b - a))) {
            memcpy(v, s->mem_text + a, (size_t)(b - a));
            changed[2 * nc] = a;
            changed[2 * nc + 1] = b;
            nc++;
        }
        if (b > a)
            ng += (size_t)(((b - 1) >> TEXT_SHIFT) - (a >> TEXT_SHIFT) + 1);
    }
    PyObject *empty[3] = {PyList_New(0), PySet_New(NULL), PyDict_New()};
    int bad = !empty[0] || !empty[1] || !empty[2] ||
              PyObject_SetAttr(view, s_pending, empty[0]) ||
              PyObject_SetAttr(view, s_pending_set, empty[1]) ||
              PyObject_SetAttr(view, s_versions, empty[2]);
    for (int k = 0; k < 3; k++)
        Py_XDECREF(empty[k]);
    if (bad)
        goto out;
    s->npending = 0;
    if (fp && ng) { /* the view now holds what memory held then */
        grains = malloc(ng * sizeof *grains);
        if (!grains) {
            PyErr_NoMemory();
            goto out;
        }
        size_t g = 0;
        for (Py_ssize_t k = 0; k < n; k++)
            if (units[2 * k + 1] > units[2 * k])
                for (int64_t x = units[2 * k] >> TEXT_SHIFT;
                     x <= (units[2 * k + 1] - 1) >> TEXT_SHIFT; x++)
                    grains[g++] = TEXT_TAG | (uint64_t)x;
        if (fp_append(fp, grains, g))
            goto out;
    }
    if (drop_ranges(s, st, changed, nc))
        goto out;
    PyObject *ev = make_serialize(ea->serialize_cls, s->clock->tick, index, n, ipi);
    rc = !ev || PyList_Append(s->events, ev) ? -1 : 0;
    Py_XDECREF(ev);
out:
    free(units);
    free(changed);
    free(grains);
    Py_XDECREF(pending);
    Py_XDECREF(view);
    return rc;
}

/* The end of an event-mode run that serialized (or IRETed: also serializing), here instead
   of in Python: NativeCpu._end's IRET, then Machine._after_run's _serialize: with units
   pending in the CPU's view, serialize_view; with none, which makes no unit visible, touches
   no translation and adds nothing to the footprint, the Serialize event (units 0, an
   instruction). A serializing run with a Python hook in it, an error or a #BP is handed
   back. 0, or -1 with an error. */
static int serialized_here(CpuObject *s, PyObject *pycpu, PyObject *st, PyObject *fp,
                           int index, const EventArgs *ea) {
    if (!s->events || !PyList_Check(s->events)) { /* the list NativeCpu.events keeps here */
        PyErr_SetString(PyExc_RuntimeError, "a native CPU without its event list");
        return -1;
    }
    if (s->iret && leave_handler(st))
        return -1;
    int rc;
    if (s->npending) {
        rc = serialize_view(s, pycpu, st, fp, index, ea, -1);
    } else {
        PyObject *ev = make_serialize(ea->serialize_cls, s->clock->tick, index, 0, -1);
        rc = ev ? PyList_Append(s->events, ev) : -1;
        Py_XDECREF(ev);
    }
    return rc;
}

/* The pending IPI an IPI choice said to take, delivered as InterruptDelivery._take_ipi
   delivers it when the frame push succeeds in C: the highest vector out of
   state.pending_ipis, the frame's RIP the current one (also the event's source: an external
   event), the handler frame appended to state.handling, the InterruptEvent recorded, and at
   a serializing vector the view serialized (serialize_view; its Serialize event names the
   vector). 1 delivered, 0 not (nothing changed: Python delivers), -1 with an error. */
static int deliver_ipi(CpuObject *s, PyObject *pycpu, PyObject *st, PyObject *fp, int index,
                       const EventArgs *ea) {
    if (!ea->interrupt_cls || !ea->serialize_cls || !s->frame_cls || !s->events ||
        !PyList_Check(s->events))
        return 0;
    PyObject *ipis = PyObject_GetAttr(st, s_pending_ipis);
    if (!ipis)
        return -1;
    long vector = -1;
    int rc = 0;
    if (!PySet_Check(ipis)) /* (a set in CpuState) */
        goto out;
    Py_ssize_t pos = 0;
    PyObject *key;
    Py_hash_t hash;
    while (_PySet_NextEntry(ipis, &pos, &key, &hash)) { /* max(st.pending_ipis) */
        long v = PyLong_AsLong(key);
        if (v == -1 && PyErr_Occurred()) {
            rc = -1;
            goto out;
        }
        if (v > vector)
            vector = v;
    }
    if (vector < 0 || vector > 255)
        goto out;
    PyObject *vec = PyLong_FromLong(vector);
    int serializing = vec ? PySet_Contains(ea->serializing, vec) : -1;
    if (serializing < 0) {
        Py_XDECREF(vec);
        rc = -1;
        goto out;
    }
    uint64_t rip = 0, handler = 0;
    if (s->reg_read(s->uc, s->reg_rip, &rip)) {
        Py_DECREF(vec);
        PyErr_SetString(PyExc_RuntimeError, "uc_reg_read(RIP) failed");
        rc = -1;
        goto out;
    }
    rc = push_frame(s, (int)vector, rip, -1, &handler);
    if (rc <= 0) {
        Py_DECREF(vec);
        goto out;
    }
    rc = PySet_Discard(ipis, vec);
    Py_DECREF(vec);
    if (rc < 0)
        goto out;
    PyObject *handling = PyObject_GetAttr(st, s_handling);
    PyObject *frame = handling ? make_frame(s->frame_cls, vector, rip) : NULL;
    rc = !frame || PyList_Append(handling, frame) ? -1 : 1;
    Py_XDECREF(frame);
    Py_XDECREF(handling);
    unsigned long long tick = s->clock->tick;
    PyObject *ev = rc < 0 ? NULL : make_delivery(ea->interrupt_cls, tick, index, vector, rip,
                                                 handler, rip);
    rc = !ev || PyList_Append(s->events, ev) ? -1 : 1;
    Py_XDECREF(ev);
    if (rc > 0 && serializing)
        rc = serialize_view(s, pycpu, st, fp, index, ea, vector) ? -1 : 1;
out:
    Py_DECREF(ipis);
    return rc;
}

/* One event-mode step of CPU `s` (Python's `pycpu`), chosen already (Machine._chosen_step,
   _cpu_step and _event_run, for a CPU with no NMI pending): 0 when it ended here, else the
   status it is handed back with (LOOP_RAISED, LOOP_IPI, LOOP_FETCH, or LOOP_RAN with the
   run's uc_err in *err), -1 on an error. `st`: its state (cpu.state, read once per batch);
   `before`: the CPU's instructions retired before this run. */
static int event_step(CpuObject *s, PyObject *pycpu, PyObject *st, int index, int flags,
                      uint64_t before, const EventArgs *ea, PyObject *ientry, const Chooser *ch,
                      int reg_rflags, unsigned long long insn_budget, int *err) {
    uint64_t rflags = 0;
    if (!s->shadow && s->reg_read(s->uc, reg_rflags, &rflags)) {
        PyErr_SetString(PyExc_RuntimeError, "uc_reg_read(RFLAGS) failed");
        return -1;
    }
    int irq_open = !s->shadow && rflags & RFLAGS_IF, status = 0;
    PyObject *fp = NULL;
    uint64_t first[3]; /* the footprint's own entries, not in it yet (nfirst of them) */
    size_t nfirst = 0;
    if (ea->fp_cls) {
        fp = make_footprint(ea->fp_cls, index, irq_open, !(flags & F_NMI_BLOCKED), first,
                            &nfirst);
        if (!fp)
            return -1;
        if (PyObject_SetAttr(pycpu, s_footprint, fp)) {
            Py_DECREF(fp);
            return -1;
        }
    }
    if (flags & F_NMI_LEFT) { /* Machine._nmi_arrives */
        long v = decide_weighted(s->loop_nmi, ch, s->loop_weight);
        if (v < 0)
            goto fail;
        if (v) {
            status = LOOP_RAISED;
            goto handed;
        }
    }
    if (flags & F_IPI && irq_open) { /* Machine._maybe_interrupt */
        long v = decide(ientry, ch);
        if (v < 0)
            goto fail;
        if (v) {
            int d = deliver_ipi(s, pycpu, st, fp, index, ea);
            if (d < 0)
                goto fail;
            if (!d) {
                status = LOOP_IPI;
                goto handed;
            }
        }
    }
    long long decided_end = -1; /* Machine._observe_pending, when nothing is pending there */
    if (s->npending) {
        uint64_t rip = 0;
        if (s->reg_read(s->uc, s->reg_rip, &rip)) {
            PyErr_SetString(PyExc_RuntimeError, "uc_reg_read(RIP) failed");
            goto fail;
        }
        uint64_t off = rip - s->text_base;
        if (off < s->view_size) {
            if (is_pending(s, (int64_t)off, MAX_INSN_LENGTH)) {
                status = LOOP_FETCH;
                goto handed;
            }
            decided_end = (long long)off + MAX_INSN_LENGTH;
        }
    }
    s->left = s->shadow ? 1 : ea->max_quantum;
    clear_run(s);
    s->skip_valid = 1; /* the instruction it starts with was decided */
    s->decided_end = decided_end;
    s->nmi_armed = (flags & F_NMI_LEFT) != 0; /* nmi_before asks at the run's NMI points */
    int e = run_once(s);
    s->nmi_armed = 0;
    if (e < 0)
        goto fail;
    if (fp && add_run_footprint(s, fp, first, nfirst))
        goto fail;
    nfirst = 0;
    int verdict = 0;
    if (s->py_out) { /* a hypercall Python served: a verdict it gave is Python's to give */
        PyObject *v = PyObject_GetAttr(st, s_verdict);
        if (!v)
            goto fail;
        verdict = v != Py_None;
        Py_DECREF(v);
    }
    if (e || s->py_hooked || verdict || s->emulate || s->halted ||
        before + s->retired_run >= insn_budget || (s->serialize && (!ea->serialize_cls || s->bp))) {
        *err = e;
        status = LOOP_RAN;
        goto handed;
    }
    /* (stopped right after a store: nothing of the run is Python's) */
    if (s->stored && own_stores_done(s, st))
        goto fail;
    if (s->serialize && serialized_here(s, pycpu, st, fp, index, ea))
        goto fail;
    if (s->bp) { /* Machine._after_run's exception, delivered here when the push is C's */
        int d = deliver_bp(s, st, index);
        if (d < 0)
            goto fail;
        if (!d) {
            status = LOOP_RAN;
            goto handed;
        }
    }
    if (fp && footprint_done(pycpu, fp, ea->step_done)) {
        Py_DECREF(fp);
        return -1;
    }
    Py_XDECREF(fp);
    return 0;
handed: /* the footprint stays on cpu.footprint: the rest of the step is Python's */
    if (fp && nfirst && fp_append(fp, first, nfirst)) {
        footprint_done(pycpu, fp, ea->step_done);
        Py_DECREF(fp);
        return -1;
    }
    Py_XDECREF(fp);
    return status;
fail: /* (with an error in flight: the footprint goes as it is) */
    if (fp)
        footprint_done(pycpu, fp, ea->step_done);
    Py_XDECREF(fp);
    return -1;
}

/* steps(pycpus, cpus, retired, last, getrandbits|None, random|None, simple_from, follow,
         choose, cpu_table, make, quantum_table, ipi_table, view_tables, view_entry,
         (nmi_table, raises), path, limits, reg_rflags, resume, max_steps, event)
     -> (steps, status, cpu, value, last)
   pycpus: the Cpu objects (their state is read here and written back: retired, last_ip,
   last_code, shadow, yielded); cpus: their native halves; retired: each CPU's Retired or
   None; last: Machine._last (-1: none); getrandbits, random, simple_from, follow, choose: who
   answers (Chooser); cpu_table: {cpu_key: entry}, filled through
   make(cpu_key); quantum_table: each CPU's quantum entry, or () when max_quantum is 1;
   ipi_table: each CPU's IPI entry; view_tables: per CPU, {pending: entry} of the view
   choices made so far, and view_entry(cpu, pending) makes the others; nmi_table: each CPU's
   NMI_RAISE entry (drawn with its request's weight), raises: per CPU, what raises the NMI a
   choice inside a run says yes to (Machine._raise_nmi);
   path: Decisions.path; limits: (MachineConfig.insn_budget, the clock's limit); resume:
   (cpu, stage) of a step to finish first (stage 0: none; see `stage` below); event: () in
   quantum mode, else (max_quantum, Footprint, the source's step_done, Serialize), the
   footprint's two None when no footprints are measured, Serialize None to hand every
   serializing run back. Returns the
   steps done entirely here, why it stopped, the CPU of the step in progress (-1: none), its
   run's uc_err (LOOP_RAN) or the view choice (LOOP_VIEWED), and the last CPU chosen. */
static PyObject *py_steps(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *pycpus, *cpus, *retireds, *getrandbits, *random, *follow, *choose, *table, *make,
        *qtable, *itable, *vtables, *view_entry, *nmi_table, *raises, *path;
    long long last, max_steps, simple_from;
    unsigned long long insn_budget, tick_limit;
    int reg_rflags, resume_cpu, resume_stage;
    PyObject *event;
    if (!PyArg_ParseTuple(args, "O!O!O!LOOLO!OO!OO!O!O!O(O!O!)O!(KK)i(ii)LO!", &PyTuple_Type,
                          &pycpus, &PyTuple_Type, &cpus, &PyTuple_Type, &retireds, &last,
                          &getrandbits, &random, &simple_from, &PyTuple_Type, &follow, &choose,
                          &PyDict_Type, &table, &make, &PyTuple_Type, &qtable,
                          &PyTuple_Type, &itable, &PyTuple_Type, &vtables, &view_entry,
                          &PyTuple_Type, &nmi_table, &PyTuple_Type, &raises,
                          &PyList_Type, &path,
                          &insn_budget, &tick_limit, &reg_rflags, &resume_cpu, &resume_stage,
                          &max_steps, &PyTuple_Type, &event))
        return NULL;
    Chooser ch = {getrandbits, random, choose, path, follow,
                  simple_from < 0 ? -1 : (Py_ssize_t)simple_from};
    EventArgs ev = {0, 1, NULL, NULL, NULL, NULL, NULL};
    if (PyTuple_GET_SIZE(event)) {
        PyObject *cls, *done;
        if (!PyArg_ParseTuple(event, "LOOOOO!", &ev.max_quantum, &cls, &done, &ev.serialize_cls,
                              &ev.interrupt_cls, &PyFrozenSet_Type, &ev.serializing))
            return NULL;
        if ((cls == Py_None) != (done == Py_None) || ev.max_quantum < 1 || resume_stage ||
            (cls != Py_None && !PyType_Check(cls)))
            return PyErr_Format(PyExc_ValueError, "steps: bad event-mode arguments");
        if (ev.interrupt_cls == Py_None)
            ev.interrupt_cls = NULL;
        ev.on = 1;
        ev.fp_cls = cls == Py_None ? NULL : cls;
        ev.step_done = done == Py_None ? NULL : done;
        if (ev.serialize_cls == Py_None)
            ev.serialize_cls = NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(cpus);
    if (n < 1 || n > LOOP_MAX_CPUS || PyTuple_GET_SIZE(pycpus) != n ||
        PyTuple_GET_SIZE(retireds) != n || PyTuple_GET_SIZE(itable) != n ||
        PyTuple_GET_SIZE(vtables) != n || PyTuple_GET_SIZE(nmi_table) != n ||
        PyTuple_GET_SIZE(raises) != n || (getrandbits != Py_None && random == Py_None) ||
        (PyTuple_GET_SIZE(qtable) != 0 && PyTuple_GET_SIZE(qtable) != n))
        return PyErr_Format(PyExc_ValueError, "steps: %zd CPUs, or mismatched tables", n);
    if (resume_stage < 0 || resume_stage > 2 || (resume_stage && (resume_cpu < 0 ||
                                                                   resume_cpu >= n)))
        return PyErr_Format(PyExc_ValueError, "steps: no step of CPU %d to resume", resume_cpu);
    CpuObject *c[LOOP_MAX_CPUS] = {NULL};
    PyObject *st[LOOP_MAX_CPUS] = {NULL}, *vtable[LOOP_MAX_CPUS] = {NULL};
    int fl[LOOP_MAX_CPUS];
    uint64_t count[LOOP_MAX_CPUS], ran[LOOP_MAX_CPUS];
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cpu = PyTuple_GET_ITEM(cpus, i);
        if (!PyObject_TypeCheck(cpu, &CpuType)) {
            PyErr_Format(PyExc_TypeError, "steps: CPU %zd is not a native Cpu", i);
            goto done;
        }
        CpuObject *s = c[i] = (CpuObject *)cpu;
        st[i] = PyObject_GetAttr(PyTuple_GET_ITEM(pycpus, i), s_state);
        PyObject *vt = PyTuple_GET_ITEM(vtables, i);
        if (!PyDict_Check(vt)) {
            PyErr_SetString(PyExc_TypeError, "steps: a view table is a dict");
            goto done;
        }
        s->npending = 0;
        if (!st[i] || load_cpu(PyTuple_GET_ITEM(pycpus, i), st[i], s, vt, view_entry, (int)i,
                               ev.on, &fl[i], &count[i], &vtable[i]))
            goto done;
        ran[i] = 0;
        s->truth = PyTuple_GET_ITEM(retireds, i) != Py_None;
        if (hold_truth(s, PyTuple_GET_ITEM(retireds, i)))
            goto done;
        s->skip_valid = s->nmi_armed = 0; /* (event_step arms the NMI points of its runs) */
        s->loop_ch = &ch;
        s->loop_nmi = PyTuple_GET_ITEM(nmi_table, i);
        s->loop_raise = PyTuple_GET_ITEM(raises, i);
        PyObject *weight = PyTuple_Check(s->loop_nmi) && PyTuple_GET_SIZE(s->loop_nmi) > 0
                               ? PyObject_GetAttrString(PyTuple_GET_ITEM(s->loop_nmi, 0), "weight")
                               : NULL; /* the NMI_RAISE request's own (Request.weight) */
        s->loop_weight = weight ? PyFloat_AsDouble(weight) : -1.0;
        Py_XDECREF(weight);
        if (!weight || PyErr_Occurred()) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "steps: an NMI entry is (request, ...)");
            goto done;
        }
        s->event = ev.on;
        s->track_fp = ev.fp_cls != NULL;
        s->decided_end = -1;
    }
    ClockObject *clock = c[0]->clock;
    long long steps = 0;
    int status = LOOP_CAP, who = -1, err = 0; /* err: uc_err, or the view choice */
    uint32_t trivial = 0;
    PyObject *cached = NULL; /* the last CPU choice's entry (borrowed from the table) */
    uint64_t cached_key = 0;
    int stage = resume_stage; /* 0: a new step; 1, 2: resume_cpu's step, at its view choice
                                 or at its quantum (after Python delivered an IPI, or made a
                                 unit visible) */
    while (steps < max_steps) {
        int i = resume_cpu;
        if (!stage) {
            uint32_t runnable = 0, yielded = 0;
            int halted = 0;
            for (Py_ssize_t j = 0; j < n; j++) {
                if (fl[j] & F_FINISHED)
                    continue;
                halted |= fl[j] & F_HALTED;
                runnable |= 1u << j;
                if (fl[j] & F_YIELDED)
                    yielded |= 1u << j;
            }
            if (halted || !runnable) {
                status = LOOP_STEP; /* whether a halted CPU is runnable is Python's question */
                break;
            }
            long value = 0;
            if (runnable & (runnable - 1)) {
                uint64_t key = runnable | (uint64_t)yielded << LOOP_MAX_CPUS |
                               (uint64_t)(last + 1) << (2 * LOOP_MAX_CPUS);
                if (!cached || key != cached_key) {
                    cached = cpu_entry(table, make, key);
                    cached_key = key;
                    if (!cached)
                        goto done;
                }
                value = decide(cached, &ch);
                if (value < 0)
                    goto done;
            }
            i = nth_bit(runnable, value);
            last = i;
            if (fl[i] & F_NMI) { /* _maybe_interrupt's NMI */
                status = LOOP_CHOSEN;
                who = i;
                break;
            }
            if (ev.on) {
                int e = 0, r = event_step(c[i], PyTuple_GET_ITEM(pycpus, i), st[i], i, fl[i],
                                          count[i] + ran[i], &ev, PyTuple_GET_ITEM(itable, i),
                                          &ch, reg_rflags, insn_budget,
                                          &e);
                if (r < 0)
                    goto done;
                if (r) {
                    status = r;
                    who = i;
                    err = e;
                    break;
                }
                ran[i] += c[i]->retired_run;
                trivial |= 1u << i;
                if (fl[i] & F_IPI) { /* deliver_ipi may have taken the last one */
                    int left = attr_true(st[i], s_pending_ipis);
                    if (left < 0)
                        goto done;
                    if (!left)
                        fl[i] &= ~F_IPI;
                }
                if (c[i]->py_out) /* a hypercall: a CPU finished, an IPI or NMI pending */
                    for (Py_ssize_t j = 0; j < n; j++)
                        if (refresh_flags(st[j], &fl[j]))
                            goto done;
                if (c[i]->stored) /* the other views have the store pending now */
                    for (Py_ssize_t j = 0; j < n; j++)
                        if (j != i && reload_pending(c[j], PyTuple_GET_ITEM(pycpus, j)))
                            goto done;
                if (c[i]->iret) /* serialized_here left the handler */
                    fl[i] &= ~F_NMI_BLOCKED;
                fl[i] = c[i]->yielded ? fl[i] | F_YIELDED : fl[i] & ~F_YIELDED;
                steps++;
                if (clock->tick > tick_limit) {
                    status = LOOP_BUDGET;
                    break;
                }
                continue;
            }
            if (fl[i] & F_NMI_LEFT) { /* Machine._nmi_arrives */
                long v = decide_weighted(c[i]->loop_nmi, &ch, c[i]->loop_weight);
                if (v < 0)
                    goto done;
                if (v) {
                    status = LOOP_RAISED;
                    who = i;
                    break;
                }
            }
            if (fl[i] & F_IPI && !c[i]->shadow) { /* Machine._maybe_interrupt */
                uint64_t rflags = 0;
                if (c[i]->reg_read(c[i]->uc, reg_rflags, &rflags)) {
                    PyErr_SetString(PyExc_RuntimeError, "uc_reg_read(RFLAGS) failed");
                    goto done;
                }
                if (rflags & RFLAGS_IF) {
                    long v = decide(PyTuple_GET_ITEM(itable, i), &ch);
                    if (v < 0)
                        goto done;
                    if (v) {
                        status = LOOP_IPI;
                        who = i;
                        break;
                    }
                }
            }
        }
        CpuObject *s = c[i];
        PyObject *view = vtable[i];
        if (stage != 2 && view) { /* Machine._quantum_step */
            long v = decide(view, &ch);
            if (v < 0)
                goto done;
            if (v) {
                status = LOOP_VIEWED;
                who = i;
                err = (int)v;
                break;
            }
        }
        stage = 0;
        long long quantum = 1;
        if (PyTuple_GET_SIZE(qtable)) {
            long q = decide(PyTuple_GET_ITEM(qtable, i), &ch);
            if (q < 0)
                goto done;
            quantum = q + 1;
        }
        s->left = quantum;
        clear_run(s);
        int e = run_once(s);
        if (e < 0)
            goto done;
        if (e || s->py_hooked || s->stored || s->py_out || s->emulate || s->iret ||
            s->serialize || s->halted ||
            count[i] + ran[i] + s->retired_run >= insn_budget) {
            status = LOOP_RAN;
            who = i;
            err = e;
            break;
        }
        ran[i] += s->retired_run;
        trivial |= 1u << i;
        fl[i] = s->yielded ? fl[i] | F_YIELDED : fl[i] & ~F_YIELDED;
        steps++;
        if (clock->tick > tick_limit) {
            status = LOOP_BUDGET;
            break;
        }
    }
    /* back into the Python state: the truth records, then what the trivial runs changed
       (the run in progress, LOOP_RAN's, is NativeCpu.finish's to account) */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cpu = PyTuple_GET_ITEM(pycpus, i);
        CpuObject *s = c[i];
        if (trivial >> i & 1 &&
            (set_attr(cpu, s_retired, PyLong_FromUnsignedLongLong(count[i] + ran[i])) ||
             set_attr(st[i], s_last_ip, PyLong_FromUnsignedLongLong(s->last_ip)) ||
             set_attr(st[i], s_last_code,
                      PyBytes_FromStringAndSize((const char *)s->last_code, s->last_len)) ||
             set_attr(st[i], s_shadow, PyBool_FromLong(s->shadow))))
            goto done;
        /* (load_cpu cleared it; a hook may set it on the run in progress only) */
        if (!(status == LOOP_RAN && i == who) && fl[i] & F_YIELDED &&
            set_attr(st[i], s_yielded, Py_NewRef(Py_True)))
            goto done;
    }
    result = Py_BuildValue("LiiiL", steps, status, who, err, last);
done:
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c[i])
            c[i]->loop_ch = NULL; /* NativeCpu.run's NMI points ask Python again */
        Py_XDECREF(st[i]);
        Py_XDECREF(vtable[i]);
    }
    return result;
}

static PyObject *py_effect(PyObject *mod, PyObject *arg) {
    (void)mod;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE))
        return NULL;
    int e = effect_of(b.buf, (int)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromLong(e);
}

/* best_key(keys, plan, kind) -> key | None: SnapshotCache.best's pass over its keys, in C
   (emu/snapshot.py: the loop there is the reference). `keys` iterates (source kind, packed
   values) tuples; the result is the one of kind `kind` whose values are the longest that are
   all the first of `plan` (bytes), the first of equal length in iteration order. A cache
   keeps ~128 snapshots and a search looks it up once a run: the Python loop spent ~0.1 ms a
   lookup on iterating, not comparing. */
static PyObject *py_best_key(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *keys, *plan, *kind;
    if (!PyArg_ParseTuple(args, "OO!O", &keys, &PyBytes_Type, &plan, &kind))
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    if (!it)
        return NULL;
    const char *p = PyBytes_AS_STRING(plan);
    Py_ssize_t np = PyBytes_GET_SIZE(plan), most = -1;
    PyObject *best = NULL, *key;
    while ((key = PyIter_Next(it))) {
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(key, 1))) {
            PyErr_SetString(PyExc_TypeError, "best_key: a key is (kind, bytes)");
            Py_DECREF(key);
            break;
        }
        PyObject *values = PyTuple_GET_ITEM(key, 1);
        Py_ssize_t n = PyBytes_GET_SIZE(values);
        if (n > most && n <= np && memcmp(PyBytes_AS_STRING(values), p, (size_t)n) == 0) {
            int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(key, 0), kind, Py_EQ);
            if (same < 0) {
                Py_DECREF(key);
                break;
            }
            if (same) {
                Py_XSETREF(best, Py_NewRef(key));
                most = n;
            }
        }
        Py_DECREF(key);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_XDECREF(best);
        return NULL;
    }
    return best ? best : Py_NewRef(Py_None);
}

static PyMethodDef module_methods[] = {
    {"effect", py_effect, METH_O, "emu.x86.effect, as the hooks compute it (for tests)"},
    {"steps", py_steps, METH_VARARGS, "Machine._step's common case, step after step"},
    {"best_key", py_best_key, METH_VARARGS, "SnapshotCache.best's pass over its keys"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "emu._native",
                                    "The native machine of the fast engine.", -1,
                                    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&ClockType) < 0 || PyType_Ready(&CpuType) < 0 || intern_names() ||
        intern_fields(delivery_fields, DELIVERY_FIELDS, NFIELDS(DELIVERY_FIELDS)) ||
        intern_fields(serialize_fields, SERIALIZE_FIELDS, NFIELDS(SERIALIZE_FIELDS)) ||
        intern_fields(frame_fields, FRAME_FIELDS, NFIELDS(FRAME_FIELDS)))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&ClockType);
    Py_INCREF(&CpuType);
    if (PyModule_AddObject(m, "Clock", (PyObject *)&ClockType) ||
        PyModule_AddObject(m, "Cpu", (PyObject *)&CpuType) ||
        PyModule_AddObject(m, "RECORD_FIELDS", record_fields()) ||
        PyModule_AddStringConstant(m, "SOURCE_DIGEST", TEXTPOKE_SOURCE_DIGEST))
        return NULL;
    return m;
}
