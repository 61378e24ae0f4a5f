/*
 * The native trace pipeline (issue 15): flow building, PT encoding, packet parsing, the
 * decoder walk (forward and backward, text-poke records applied at their time, the candidate
 * deductions and `ambiguous`, INT3 handling) and the comparison with the ground truth.
 *
 * Each function is a line-by-line port of the reference Python (the file named above it), so
 * that both give the same bytes, steps, errors and messages; tests/test_engines_trace.py
 * checks that on every shipped scenario. Instruction classes come from the reference's own
 * classifier (capstone, insn.py), called once per distinct byte string through `InsnTable`;
 * the walker keeps the instructions it decoded per IP, for one image version, as insn_cache.py
 * does (and libxdc / perf's block caches): a record applied drops the IPs whose bytes it
 * touches.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* the digest of the sources this module was compiled from (emu/native_build.py; setup.py
   defines it): emu/engine.py refuses a build whose sources have changed since */
#ifndef TEXTPOKE_SOURCE_DIGEST
#define TEXTPOKE_SOURCE_DIGEST ""
#endif

#define INSN_MAX 15
#define RET_STACK 64
#define LOOKAHEAD 400
#define MAX_DOUBT 128 /* uncertain records at one instruction (the reference has no limit) */
/* raised past MAX_DOUBT: the caller decodes that stream with the reference instead */
static PyObject *TooMuchDoubt;
#define INF UINT64_MAX /* query.py: INFINITY (no TSC after the item) */

typedef unsigned __int128 u128;

/* insn.py: Cls, in this order */
enum { C_OTHER, C_COND, C_JMP, C_CALL, C_IJMP, C_ICALL, C_RET, C_IRET, C_INT };

/* ---------------------------------------------------------------- the class table (insn.py) */

typedef struct {
    uint8_t len; /* bytes in key */
    uint8_t key[INSN_MAX];
    uint8_t ok; /* 0: the bytes do not decode (classify() is None) */
    uint8_t size, cls;
    int32_t idx; /* its index in the table: what the walker's per-IP cache holds */
    int64_t rel;
    PyObject *text;
    const char *ctext; /* text's UTF-8, for messages */
} Cls;

#define CHUNK 1024 /* entries are allocated in chunks and never move */

typedef struct {
    PyObject_HEAD
    PyObject *classify; /* bytes -> (size, cls, rel, text) or None */
    int32_t *slots;     /* open addressing: entry index + 1, 0 empty */
    size_t cap, n;
    Cls **chunks;
    size_t nchunks;
} InsnTable;

static inline Cls *entry(InsnTable *t, int32_t idx) {
    return &t->chunks[idx / CHUNK][idx % CHUNK];
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL ^ n;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static int table_grow(InsnTable *t) {
    size_t ncap = t->cap ? t->cap * 2 : 4096;
    int32_t *ns = PyMem_Calloc(ncap, sizeof(int32_t));
    if (!ns) { PyErr_NoMemory(); return -1; }
    for (size_t i = 0; i < t->n; i++) {
        Cls *c = entry(t, (int32_t)i);
        size_t j = hash_bytes(c->key, c->len) & (ncap - 1);
        while (ns[j]) j = (j + 1) & (ncap - 1);
        ns[j] = (int32_t)i + 1;
    }
    PyMem_Free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

/* The class of the first instruction in `p[:n]` (n <= 15), a pointer that stays valid as
 * long as the table; NULL with an exception set. */
static Cls *classify(InsnTable *t, const uint8_t *p, size_t n) {
    if (n > INSN_MAX) n = INSN_MAX;
    uint64_t h = hash_bytes(p, n);
    if (t->cap) {
        size_t j = h & (t->cap - 1);
        while (t->slots[j]) {
            Cls *c = entry(t, t->slots[j] - 1);
            if (c->len == n && memcmp(c->key, p, n) == 0) return c;
            j = (j + 1) & (t->cap - 1);
        }
    }
    if ((t->n + 1) * 2 > t->cap && table_grow(t) < 0) return NULL;
    if (t->n == t->nchunks * CHUNK) {
        Cls **nc = PyMem_Realloc(t->chunks, (t->nchunks + 1) * sizeof(Cls *));
        if (!nc) { PyErr_NoMemory(); return NULL; }
        t->chunks = nc;
        if (!(nc[t->nchunks] = PyMem_Calloc(CHUNK, sizeof(Cls)))) {
            PyErr_NoMemory();
            return NULL;
        }
        t->nchunks++;
    }
    PyObject *r = PyObject_CallFunction(t->classify, "y#", (const char *)p, (Py_ssize_t)n);
    if (!r) return NULL;
    Cls c;
    memset(&c, 0, sizeof c);
    c.len = (uint8_t)n;
    memcpy(c.key, p, n);
    c.idx = (int32_t)t->n;
    if (r != Py_None) {
        unsigned size, cls;
        long long rel;
        PyObject *text;
        if (!PyArg_ParseTuple(r, "IILU", &size, &cls, &rel, &text)) { Py_DECREF(r); return NULL; }
        if (!(c.ctext = PyUnicode_AsUTF8(text))) { Py_DECREF(r); return NULL; }
        c.ok = 1;
        c.size = (uint8_t)size;
        c.cls = (uint8_t)cls;
        c.rel = rel;
        Py_INCREF(text);
        c.text = text;
    }
    Py_DECREF(r);
    Cls *e = entry(t, c.idx);
    *e = c;
    t->n++;
    size_t j = h & (t->cap - 1);
    while (t->slots[j]) j = (j + 1) & (t->cap - 1);
    t->slots[j] = c.idx + 1;
    return e;
}

static int table_init(InsnTable *self, PyObject *args, PyObject *kw) {
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "O", &fn)) return -1;
    Py_INCREF(fn);
    Py_XSETREF(self->classify, fn);
    return 0;
}

static void table_dealloc(InsnTable *self) {
    for (size_t i = 0; i < self->n; i++) Py_XDECREF(entry(self, (int32_t)i)->text);
    for (size_t i = 0; i < self->nchunks; i++) PyMem_Free(self->chunks[i]);
    PyMem_Free(self->chunks);
    PyMem_Free(self->slots);
    Py_XDECREF(self->classify);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject InsnTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "harness.trace.pt._native.InsnTable",
    .tp_basicsize = sizeof(InsnTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_doc = "instruction classes by byte string, from the reference classifier",
};

/* ------------------------------------------------------------------------------ buffers */

typedef struct {
    Py_buffer b;
    int held;
} Buf;

static int get_buf(PyObject *o, Buf *buf, Py_ssize_t itemsize) {
    if (PyObject_GetBuffer(o, &buf->b, PyBUF_SIMPLE) < 0) return -1;
    buf->held = 1;
    if (itemsize > 1 && buf->b.len % itemsize) {
        PyErr_SetString(PyExc_ValueError, "array length is not a multiple of its item size");
        return -1;
    }
    return 0;
}

static void rel_buf(Buf *buf) {
    if (buf->held) PyBuffer_Release(&buf->b);
    buf->held = 0;
}

/* a growable byte buffer */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} Out;

static int out_put(Out *o, const void *src, size_t n) {
    if (o->n + n > o->cap) {
        size_t nc = o->cap ? o->cap : 4096;
        while (nc < o->n + n) nc *= 2;
        uint8_t *np = PyMem_Realloc(o->p, nc);
        if (!np) { PyErr_NoMemory(); return -1; }
        o->p = np;
        o->cap = nc;
    }
    memcpy(o->p + o->n, src, n);
    o->n += n;
    return 0;
}

/* room for `n` more bytes, written in place (then counted in o->n by the writer) */
static int out_room(Out *o, size_t n) {
    if (o->n + n <= o->cap)
        return 0;
    uint8_t *np = PyMem_Realloc(o->p, o->n + n ? o->n + n : 1);
    if (!np) { PyErr_NoMemory(); return -1; }
    o->p = np;
    o->cap = o->n + n;
    return 0;
}

static PyObject *out_bytes(Out *o) {
    PyObject *r = PyBytes_FromStringAndSize((const char *)o->p, (Py_ssize_t)o->n);
    PyMem_Free(o->p);
    o->p = NULL;
    return r;
}

/* ------------------------------------------------------------------------- flow (flow.py) */

typedef struct {
    uint64_t tick, src, resume, handler;
    size_t b, order;
} Ev;

static int ev_cmp(const void *a, const void *b) {
    const Ev *x = a, *y = b;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    return x->order < y->order ? -1 : (x->order > y->order);
}

/* flow(ticks, ips, ends, code, events, final_rip) -> (ticks, ips, conts, starts, ends, evs):
 * cpu_flow over the packed retired log; events = [(tick, source, resume, handler)]. An item's
 * code is code[starts[i]:ends[i]] (empty for an asynchronous branch, whose ev is its index
 * in `events`; -1 for an instruction). */
static PyObject *py_flow(PyObject *mod, PyObject *args) {
    PyObject *oticks, *oips, *oends, *ocode, *oevents;
    unsigned long long final_rip;
    if (!PyArg_ParseTuple(args, "OOOOOK", &oticks, &oips, &oends, &ocode, &oevents, &final_rip))
        return NULL;
    Buf bt = {0}, bi = {0}, be = {0}, bc = {0};
    Out ot = {0}, oi = {0}, oc = {0}, os = {0}, oe = {0}, ov = {0};
    Ev *evs = NULL;
    PyObject *res = NULL;
    if (get_buf(oticks, &bt, 8) || get_buf(oips, &bi, 8) || get_buf(oends, &be, 4) ||
        get_buf(ocode, &bc, 1))
        goto done;
    size_t n = (size_t)bt.b.len / 8;
    const uint64_t *ticks = bt.b.buf, *ips = bi.b.buf;
    const uint32_t *ends = be.b.buf;
    const uint8_t *code = bc.b.buf;
    if ((size_t)bi.b.len / 8 != n || (size_t)be.b.len / 4 != n) {
        PyErr_SetString(PyExc_ValueError, "retired arrays of different lengths");
        goto done;
    }
    for (size_t j = 0; j < n; j++) { /* code[START(j) .. ends[j]) is read below */
        if (ends[j] > (size_t)bc.b.len || (j && ends[j] < ends[j - 1])) {
            PyErr_SetString(PyExc_ValueError, "retired ends outside the code or going down");
            goto done;
        }
    }
    Py_ssize_t ne = PySequence_Length(oevents);
    if (ne < 0) goto done;
    evs = PyMem_Calloc(ne ? ne : 1, sizeof(Ev));
    if (!evs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < ne; k++) {
        PyObject *e = PySequence_GetItem(oevents, k);
        if (!e) goto done;
        unsigned long long a, s, r, h;
        int ok = PyArg_ParseTuple(e, "KKKK", &a, &s, &r, &h);
        Py_DECREF(e);
        if (!ok) goto done;
        evs[k] = (Ev){a, s, r, h, 0, (size_t)k};
        size_t lo = 0, hi = n; /* bisect_right(ticks, a) */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (a < ticks[mid]) hi = mid; else lo = mid + 1;
        }
        evs[k].b = lo;
    }
    qsort(evs, ne, sizeof(Ev), ev_cmp);
    /* at most an item per instruction and per event: the outputs are sized once */
    size_t most = n + (size_t)ne, k_out = 0;
    if (out_room(&ot, most * 8) || out_room(&oi, most * 8) || out_room(&oc, most * 8) ||
        out_room(&os, most * 4) || out_room(&oe, most * 4) || out_room(&ov, most * 4))
        goto done;
    uint64_t *pt = (uint64_t *)ot.p, *pi = (uint64_t *)oi.p, *pc = (uint64_t *)oc.p;
    uint32_t *ps = (uint32_t *)os.p, *pe = (uint32_t *)oe.p;
    int32_t *pv = (int32_t *)ov.p;
#define START(j) ((j) ? ends[(j) - 1] : 0)
#define NXT(j) ((j) + 1 < n ? ips[(j) + 1] : (uint64_t)final_rip)
#define PUT(t, ip, cont, s, e, ev) do { \
        pt[k_out] = (t); pi[k_out] = (ip); pc[k_out] = (cont); \
        ps[k_out] = (s); pe[k_out] = (e); pv[k_out] = (ev); k_out++; \
    } while (0)
    size_t i = 0;
    for (Py_ssize_t k = 0; k < ne;) {
        size_t b = evs[k].b;
        Py_ssize_t kend = k;
        while (kend < ne && evs[kend].b == b) kend++;
        if (b > i) {
            for (size_t j = i; j + 1 < b; j++) PUT(ticks[j], ips[j], NXT(j), START(j), ends[j], -1);
            size_t j = b - 1;
            uint32_t s = START(j);
            int trapped = ends[j] > s && (code[s] == 0xcc || code[s] == 0xcd) &&
                          evs[k].src == ips[j];
            if (!trapped) PUT(ticks[j], ips[j], evs[k].resume, s, ends[j], -1);
        }
        for (Py_ssize_t q = k; q < kend; q++)
            PUT(evs[q].tick, evs[q].src, evs[q].handler, 0, 0, (int32_t)evs[q].order);
        i = b;
        k = kend;
    }
    for (size_t j = i; j < n; j++) PUT(ticks[j], ips[j], NXT(j), START(j), ends[j], -1);
#undef PUT
#undef NXT
#undef START
    ot.n = oi.n = oc.n = k_out * 8;
    os.n = oe.n = ov.n = k_out * 4;
    res = Py_BuildValue("(NNNNNN)", out_bytes(&ot), out_bytes(&oi), out_bytes(&oc),
                        out_bytes(&os), out_bytes(&oe), out_bytes(&ov));
done:
    PyMem_Free(ot.p); PyMem_Free(oi.p); PyMem_Free(oc.p);
    PyMem_Free(os.p); PyMem_Free(oe.p); PyMem_Free(ov.p);
    PyMem_Free(evs);
    rel_buf(&bt); rel_buf(&bi); rel_buf(&be); rel_buf(&bc);
    return res;
}

/* ------------------------------------------------------------------ the flow as C arrays */

typedef struct {
    Buf bt, bi, bc, bs, be, bv, bcode;
    const uint64_t *tick, *ip, *cont;
    const uint32_t *start, *end;
    const int32_t *ev;
    const uint8_t *code;
    size_t n;
} Flow;

static int flow_get(PyObject *o, Flow *f) {
    /* o = (ticks, ips, conts, starts, ends, evs, code) */
    PyObject *a[7];
    if (!PyArg_ParseTuple(o, "OOOOOOO", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]))
        return -1;
    if (get_buf(a[0], &f->bt, 8) || get_buf(a[1], &f->bi, 8) || get_buf(a[2], &f->bc, 8) ||
        get_buf(a[3], &f->bs, 4) || get_buf(a[4], &f->be, 4) || get_buf(a[5], &f->bv, 4) ||
        get_buf(a[6], &f->bcode, 1))
        return -1;
    f->n = (size_t)f->bt.b.len / 8;
    if ((size_t)f->bi.b.len / 8 != f->n || (size_t)f->bc.b.len / 8 != f->n ||
        (size_t)f->bs.b.len / 4 != f->n || (size_t)f->be.b.len / 4 != f->n ||
        (size_t)f->bv.b.len / 4 != f->n) {
        PyErr_SetString(PyExc_ValueError, "flow arrays of different lengths");
        return -1;
    }
    f->tick = f->bt.b.buf; f->ip = f->bi.b.buf; f->cont = f->bc.b.buf;
    f->start = f->bs.b.buf; f->end = f->be.b.buf; f->ev = f->bv.b.buf;
    f->code = f->bcode.b.buf;
    for (size_t i = 0; i < f->n; i++)
        if (f->start[i] > f->end[i] || f->end[i] > (size_t)f->bcode.b.len) {
            PyErr_SetString(PyExc_ValueError, "flow code range outside the code buffer");
            return -1;
        }
    return 0;
}

static void flow_rel(Flow *f) {
    rel_buf(&f->bt); rel_buf(&f->bi); rel_buf(&f->bc); rel_buf(&f->bs); rel_buf(&f->be);
    rel_buf(&f->bv); rel_buf(&f->bcode);
}

/* -------------------------------------------- the encoder (encoder.py, last_ip.py, tnt.py) */

enum { IPB_SUPPRESSED = 0, IPB_16 = 1, IPB_32 = 2, IPB_SEXT48 = 3, IPB_48 = 4, IPB_FULL = 6 };
static const int PAYLOAD_BYTES[8] = {0, 2, 4, 6, 6, -1, 8, -1};
enum { OP_TIP = 0x0D, OP_PGE = 0x11, OP_PGD = 0x01, OP_FUP = 0x1D };
static const uint8_t PSB[16] = {2, 0x82, 2, 0x82, 2, 0x82, 2, 0x82,
                                2, 0x82, 2, 0x82, 2, 0x82, 2, 0x82};

typedef struct {
    Out out;
    uint64_t last_ip;
    uint8_t bits[64];
    int nbits, limit;
    int64_t tsc_period, clock_last; /* timing.py: last < 0 means never stamped */
    uint64_t stack[RET_STACK];
    int depth;
    size_t last_psb;
    int ret_compression, cbr;
} Enc;

static int emit_ip(Enc *e, int opcode, int has_ip, uint64_t ip) {
    uint8_t buf[9];
    int ipb;
    uint64_t payload;
    if (!has_ip) {
        ipb = 0; payload = 0;
    } else { /* LastIp.compress */
        uint64_t last = e->last_ip;
        e->last_ip = ip;
        uint64_t top = ip >> 47;
        if (ip >> 16 == last >> 16) { ipb = IPB_16; payload = ip & 0xFFFF; }
        else if (ip >> 32 == last >> 32) { ipb = IPB_32; payload = ip & 0xFFFFFFFF; }
        else if (top == 0 || top == (1 << 17) - 1) { ipb = IPB_SEXT48; payload = ip & ((1ULL << 48) - 1); }
        else if (ip >> 48 == last >> 48) { ipb = IPB_48; payload = ip & ((1ULL << 48) - 1); }
        else { ipb = IPB_FULL; payload = ip; }
    }
    int nb = PAYLOAD_BYTES[ipb];
    buf[0] = (uint8_t)(ipb << 5 | opcode);
    for (int i = 0; i < nb; i++) buf[1 + i] = (uint8_t)(payload >> (8 * i));
    return out_put(&e->out, buf, 1 + nb);
}

static int flush_tnt(Enc *e) {
    if (!e->nbits) return 0;
    uint64_t payload = 1;
    for (int i = 0; i < e->nbits; i++) payload = payload << 1 | e->bits[i];
    int n = e->nbits;
    e->nbits = 0;
    if (n <= 6) {
        uint8_t b = (uint8_t)(payload << 1);
        return out_put(&e->out, &b, 1);
    }
    uint8_t buf[8] = {0x02, 0xA3};
    for (int i = 0; i < 6; i++) buf[2 + i] = (uint8_t)(payload >> (8 * i));
    return out_put(&e->out, buf, 8);
}

static int emit_tsc(Enc *e, uint64_t now) {
    uint8_t buf[8] = {0x19};
    for (int i = 0; i < 7; i++) buf[1 + i] = (uint8_t)(now >> (8 * i));
    return out_put(&e->out, buf, 8);
}

static int enc_time(Enc *e, uint64_t now) {
    if (e->clock_last < 0 || (int64_t)now - e->clock_last >= e->tsc_period) {
        if (flush_tnt(e) || emit_tsc(e, now)) return -1;
        e->clock_last = (int64_t)now;
    }
    return 0;
}

static int enc_psb(Enc *e, uint64_t now, int has_ip, uint64_t ip) {
    if (flush_tnt(e)) return -1;
    e->last_psb = e->out.n;
    if (out_put(&e->out, PSB, 16)) return -1;
    e->last_ip = 0;
    e->depth = 0;
    if (emit_tsc(e, now)) return -1;
    e->clock_last = (int64_t)now;
    uint8_t cbr[4] = {0x02, 0x03, (uint8_t)e->cbr, 0};
    if (out_put(&e->out, cbr, 4)) return -1;
    if (has_ip) {
        static const uint8_t mode[2] = {0x99, 0x01};
        if (out_put(&e->out, mode, 2) || emit_ip(e, OP_FUP, 1, ip)) return -1;
    }
    static const uint8_t end[2] = {0x02, 0x23};
    return out_put(&e->out, end, 2);
}

static int branch_bit(Enc *e, uint64_t now, int taken) {
    if (enc_time(e, now)) return -1;
    e->bits[e->nbits++] = (uint8_t)taken;
    return e->nbits == e->limit ? flush_tnt(e) : 0;
}

static int enc_tip(Enc *e, uint64_t now, uint64_t target) {
    if (flush_tnt(e) || enc_time(e, now)) return -1;
    return emit_ip(e, OP_TIP, 1, target);
}

static void enc_push(Enc *e, uint64_t ret) {
    if (e->depth == RET_STACK) {
        memmove(e->stack, e->stack + 1, (RET_STACK - 1) * sizeof(uint64_t));
        e->depth--;
    }
    e->stack[e->depth++] = ret;
}

static int enc_insn(Enc *e, InsnTable *t, uint64_t tick, uint64_t ip, const uint8_t *code,
                    size_t n, uint64_t cont) {
    Cls *c = classify(t, code, n);
    if (!c) return -1;
    if (!c->ok) return 0; /* garbage: no branch packet */
    uint64_t nlip = ip + c->size;
    switch (c->cls) {
    case C_COND: return branch_bit(e, tick, cont != nlip);
    case C_CALL: if (c->rel != 0) enc_push(e, nlip); return 0;
    case C_ICALL: enc_push(e, nlip); return enc_tip(e, tick, cont);
    case C_IJMP: return enc_tip(e, tick, cont);
    case C_RET:
        if (e->ret_compression && e->depth && e->stack[e->depth - 1] == cont) {
            e->depth--;
            return branch_bit(e, tick, 1);
        }
        return enc_tip(e, tick, cont);
    case C_IRET: return enc_tip(e, tick, cont);
    default: return 0;
    }
}

/* encode(flow, final_rip, (tsc_period, psb_period, ret_compression, long_tnt, cbr), table)
 * -> bytes: encode_cpu. */
static PyObject *py_encode(PyObject *mod, PyObject *args) {
    PyObject *oflow;
    unsigned long long final_rip;
    long long tsc_period, psb_period;
    int retc, long_tnt, cbr;
    InsnTable *t;
    if (!PyArg_ParseTuple(args, "OK(LLppi)O!", &oflow, &final_rip, &tsc_period, &psb_period,
                          &retc, &long_tnt, &cbr, &InsnTableType, &t))
        return NULL;
    Flow f;
    memset(&f, 0, sizeof f);
    Enc e;
    memset(&e, 0, sizeof e);
    e.limit = long_tnt ? 47 : 6;
    e.tsc_period = tsc_period;
    e.clock_last = -1;
    e.ret_compression = retc;
    e.cbr = cbr;
    PyObject *res = NULL;
    if (flow_get(oflow, &f)) goto done;
    if (enc_psb(&e, 0, 0, 0)) goto done;
    static const uint8_t mode[2] = {0x99, 0x01};
    if (out_put(&e.out, mode, 2) || emit_ip(&e, OP_PGE, 1, f.n ? f.ip[0] : final_rip))
        goto done;
    for (size_t k = 0; k < f.n; k++) {
        if (k && (long long)(e.out.n - e.last_psb) >= psb_period)
            if (enc_psb(&e, f.tick[k], 1, f.ip[k])) goto done;
        if (f.ev[k] >= 0) { /* Encoder.event */
            if (flush_tnt(&e) || enc_time(&e, f.tick[k]) || emit_ip(&e, OP_FUP, 1, f.ip[k]) ||
                emit_ip(&e, OP_TIP, 1, f.cont[k]))
                goto done;
        } else if (enc_insn(&e, t, f.tick[k], f.ip[k], f.code + f.start[k],
                            f.end[k] - f.start[k], f.cont[k])) {
            goto done;
        }
    }
    if (flush_tnt(&e) || enc_time(&e, f.n ? f.tick[f.n - 1] : 0) ||
        emit_ip(&e, OP_FUP, 1, final_rip) || emit_ip(&e, OP_PGD, 0, 0))
        goto done;
    res = out_bytes(&e.out);
done:
    PyMem_Free(e.out.p);
    flow_rel(&f);
    return res;
}

/* ----------------------------------------------------- errors (packets.py, query.py, ...) */

enum { E_NONE, E_DECODE, E_AMBIGUOUS, E_IMAGE, E_PACKET };

typedef struct {
    int kind;
    uint64_t offset;
    int has_ip;
    uint64_t ip;
    char msg[320];
    size_t rec; /* E_AMBIGUOUS: the record (sorted index); E_IMAGE: the record's address */
    uint64_t addr, lo, hi;
} Err;

static int err_set(Err *e, int kind, uint64_t offset, int has_ip, uint64_t ip,
                   const char *fmt, ...) {
    e->kind = kind;
    e->offset = offset;
    e->has_ip = has_ip;
    e->ip = ip;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------- the query layer (query.py) */

enum { K_BIT, K_TIP, K_FUP, K_PGE, K_PGD, K_PSB, K_STATUS_FUP };
static const char *KIND_NAME[] = {"tnt", "tip", "fup", "tip.pge", "tip.pgd", "psb", "psb.fup"};

typedef struct {
    uint8_t kind, bit, has_ip;
    uint64_t offset, ip, time, next_tsc;
} Item;

typedef struct {
    Item *v;
    size_t n, cap;
} Items;

static int items_put(Items *its, Item it) {
    if (its->n == its->cap) {
        size_t nc = its->cap ? its->cap * 2 : 1024;
        Item *nv = PyMem_Realloc(its->v, nc * sizeof(Item));
        if (!nv) { PyErr_NoMemory(); return -1; }
        its->v = nv;
        its->cap = nc;
    }
    its->v[its->n++] = it;
    return 0;
}

static const char *bin3(int v, char *buf) {
    buf[0] = '0' + (v >> 2 & 1);
    buf[1] = '0' + (v >> 1 & 1);
    buf[2] = '0' + (v & 1);
    buf[3] = 0;
    return buf;
}

#define NEED(n_, what) do { if (pos + (n_) > len) return err_set(bad, E_PACKET, pos, 0, 0, \
        "truncated %s: needs %d bytes, %zu left", what, (int)(n_), len - pos); } while (0)

/* items_until_error: `its` gets the items before the first malformed or misplaced packet;
 * returns -1 with `bad` set for that packet (no Python exception), -2 on a Python error. */
static int parse(const uint8_t *buf, size_t len, Items *its, Err *bad) {
    uint64_t last_ip = 0, time = 0;
    int in_psb = 0;
    size_t waiting = 0; /* items from `waiting` on have no next TSC yet */
    size_t pos = 0;
    char b3[4];
    while (pos < len) {
        uint8_t b0 = buf[pos];
        size_t size;
        Item it = {0};
        it.offset = pos;
        it.time = time;
        it.next_tsc = INF;
        if (b0 == 0x00) { pos += 1; continue; }
        if ((b0 & 1) == 0 && b0 != 0x02) { /* short TNT */
            unsigned payload = b0 >> 1;
            int n = 0;
            while ((payload >> (n + 1)) != 0) n++; /* bit_length - 1 */
            if (n < 1) return err_set(bad, E_PACKET, pos, 0, 0, "TNT-8 without branch bits");
            if (in_psb) return err_set(bad, E_DECODE, pos, 0, 0, "TNT inside PSB+");
            it.kind = K_BIT;
            for (int i = n - 1; i >= 0; i--) {
                it.bit = payload >> i & 1;
                if (items_put(its, it)) return -2;
            }
            pos += 1;
            continue;
        }
        int op = b0 & 0x1F;
        if (op == OP_TIP || op == OP_PGE || op == OP_PGD || op == OP_FUP) {
            int ipb = b0 >> 5;
            if (PAYLOAD_BYTES[ipb] < 0)
                return err_set(bad, E_PACKET, pos, 0, 0, "reserved IPBytes %s in 0x%02x",
                               bin3(ipb, b3), b0);
            int nb = PAYLOAD_BYTES[ipb];
            NEED(1 + nb, "IP packet");
            uint64_t payload = 0;
            for (int i = 0; i < nb; i++) payload |= (uint64_t)buf[pos + 1 + i] << (8 * i);
            size = 1 + nb;
            /* LastIp.decompress */
            int has = 1;
            uint64_t ip = 0;
            switch (ipb) {
            case IPB_SUPPRESSED: has = 0; break;
            case IPB_16: ip = (last_ip & ~0xFFFFULL) | payload; break;
            case IPB_32: ip = (last_ip & ~0xFFFFFFFFULL) | payload; break;
            case IPB_SEXT48: ip = payload >> 47 ? payload | ~((1ULL << 48) - 1) : payload; break;
            case IPB_48: ip = (last_ip & ~((1ULL << 48) - 1)) | payload; break;
            default: ip = payload;
            }
            if (has) last_ip = ip;
            int kind;
            if (op == OP_FUP) {
                kind = in_psb ? K_STATUS_FUP : K_FUP;
            } else if (in_psb) {
                return err_set(bad, E_DECODE, pos, 0, 0, "%s inside PSB+",
                               op == OP_TIP ? "Tip" : op == OP_PGE ? "TipPge" : "TipPgd");
            } else {
                kind = op == OP_TIP ? K_TIP : op == OP_PGE ? K_PGE : K_PGD;
            }
            if (!has && kind != K_PGD)
                return err_set(bad, E_DECODE, pos, 0, 0, "%s with a suppressed IP",
                               KIND_NAME[kind]);
            it.kind = (uint8_t)kind;
            it.has_ip = (uint8_t)has;
            it.ip = ip;
            if (items_put(its, it)) return -2;
            pos += size;
            continue;
        }
        if (b0 == 0x19) {
            NEED(8, "TSC");
            uint64_t tsc = 0;
            for (int i = 0; i < 7; i++) tsc |= (uint64_t)buf[pos + 1 + i] << (8 * i);
            if (tsc < time)
                return err_set(bad, E_DECODE, pos, 0, 0,
                               "TSC %llu runs backwards (the last TSC was %llu)",
                               (unsigned long long)tsc, (unsigned long long)time);
            time = tsc;
            for (size_t w = waiting; w < its->n; w++) its->v[w].next_tsc = time;
            waiting = its->n;
            pos += 8;
            continue;
        }
        if (b0 == 0x99) {
            NEED(2, "MODE");
            int leaf = buf[pos + 1];
            if (leaf >> 5 != 0)
                return err_set(bad, E_PACKET, pos, 0, 0, "MODE leaf %d is not MODE.Exec",
                               leaf >> 5);
            pos += 2;
            continue;
        }
        if (b0 == 0x02) {
            NEED(2, "extended packet");
            uint8_t b1 = buf[pos + 1];
            if (b1 == 0x82) {
                NEED(16, "PSB");
                if (memcmp(buf + pos, PSB, 16) != 0)
                    return err_set(bad, E_PACKET, pos, 0, 0, "broken PSB pattern");
                if (in_psb) return err_set(bad, E_DECODE, pos, 0, 0, "PSB inside PSB+");
                in_psb = 1;
                last_ip = 0;
                it.kind = K_PSB;
                if (items_put(its, it)) return -2;
                pos += 16;
                continue;
            }
            if (b1 == 0x23) {
                if (!in_psb) return err_set(bad, E_DECODE, pos, 0, 0, "PSBEND without PSB");
                in_psb = 0;
                pos += 2;
                continue;
            }
            if (b1 == 0xA3) {
                NEED(8, "TNT-64");
                uint64_t payload = 0;
                for (int i = 0; i < 6; i++) payload |= (uint64_t)buf[pos + 2 + i] << (8 * i);
                int n = 0;
                while ((payload >> (n + 1)) != 0) n++;
                if (n < 1) return err_set(bad, E_PACKET, pos, 0, 0, "TNT-64 without branch bits");
                if (in_psb) return err_set(bad, E_DECODE, pos, 0, 0, "TNT inside PSB+");
                it.kind = K_BIT;
                for (int i = n - 1; i >= 0; i--) {
                    it.bit = payload >> i & 1;
                    if (items_put(its, it)) return -2;
                }
                pos += 8;
                continue;
            }
            if (b1 == 0x03) { NEED(4, "CBR"); pos += 4; continue; }
            if (b1 == 0xF3)
                return err_set(bad, E_DECODE, pos, 0, 0,
                               "internal buffer overflow (OVF) in the trace");
            return err_set(bad, E_PACKET, pos, 0, 0, "unknown extended opcode 02 %02x", b1);
        }
        return err_set(bad, E_PACKET, pos, 0, 0, "unknown opcode 0x%02x", b0);
    }
    if (in_psb) return err_set(bad, E_DECODE, len, 0, 0, "trace ends inside PSB+");
    return 0;
}

/* --------------------------------------------------------------------- the image (image.py) */

typedef struct {
    uint64_t tick, addr;
    const uint8_t *old, *new_;
    size_t len, oldlen;
} Rec;

typedef struct {
    uint64_t base;
    uint8_t *mem;
    size_t len;
    const Rec *recs;
    size_t nrecs, applied;
    int32_t *cache; /* ip - base -> class slot + 1 (0: not cached); NULL: no cache */
    size_t cache_gen;
} Image;

/* Image._write; -1 with `err` (E_IMAGE) if outside. Drops the cached IPs it touches
 * (InsnCache.sync). */
static int img_write(Image *im, uint64_t addr, const uint8_t *data, size_t n, Err *err) {
    if (addr < im->base || (u128)(addr - im->base) + n > im->len) {
        err->kind = E_IMAGE;
        err->addr = addr;
        return -1;
    }
    size_t off = addr - im->base;
    memcpy(im->mem + off, data, n);
    if (im->cache) {
        size_t from = off >= INSN_MAX - 1 ? off - (INSN_MAX - 1) : 0;
        memset(im->cache + from, 0, (off + n - from) * sizeof(int32_t));
    }
    return 0;
}

static int img_advance(Image *im, uint64_t time, Err *err) {
    while (im->applied < im->nrecs && im->recs[im->applied].tick < time) {
        const Rec *r = &im->recs[im->applied];
        if (img_write(im, r->addr, r->new_, r->len, err)) return -1;
        im->applied++;
    }
    return 0;
}

static int img_settled(const Image *im, uint64_t hi) {
    return im->applied == im->nrecs || im->recs[im->applied].tick > hi;
}

/* Image.read: bytes at ip (up to n), count in *got (0: outside) */
static const uint8_t *img_read(const Image *im, uint64_t ip, size_t n, size_t *got) {
    uint64_t off = ip - im->base;
    if (ip < im->base || off >= im->len) { *got = 0; return NULL; }
    *got = im->len - off < n ? im->len - off : n;
    return im->mem + off;
}

/* ------------------------------------------------------------------ the walker (decoder.py) */

typedef struct {
    const uint8_t *code;
    size_t n;
    Cls *insn;
} Fetched;

typedef struct Walker {
    const Items *its;
    Image im;
    size_t max_steps, nsteps;
    int speculative;
    size_t k;
    int has_ip;
    uint64_t ip, lo, hi;
    uint64_t stack[RET_STACK];
    int depth;
    InsnTable *t;
    const Flow *flow; /* main walker: compared step by step; NULL in a clone */
    PyObject *steps;  /* a list when the caller wants the steps themselves */
    int64_t diverged; /* first step that differs from the flow, -1: none yet */
    uint64_t dv_ip, dv_offset;
    uint8_t dv_code[INSN_MAX];
    size_t dv_len;
    uint8_t forced_buf[INSN_MAX]; /* a clone's forced candidate bytes */
    Err *err;
} Walker;

static const uint8_t EMPTY[1] = {0};

static void push(Walker *w, uint64_t ret) {
    if (w->depth == RET_STACK) {
        memmove(w->stack, w->stack + 1, (RET_STACK - 1) * sizeof(uint64_t));
        w->depth--;
    }
    w->stack[w->depth++] = ret;
}

/* a step of the main walker: kept (steps), compared with the flow */
static int add_step(Walker *w, uint64_t ip, const uint8_t *code, size_t n, uint64_t offset,
                    int has_target, uint64_t target) {
    size_t i = w->nsteps++;
    if (w->flow && w->diverged < 0 && i < w->flow->n) {
        const Flow *f = w->flow;
        size_t fl = f->end[i] - f->start[i];
        if (f->ip[i] != ip || fl != n || memcmp(f->code + f->start[i], code, n) != 0) {
            w->diverged = (int64_t)i;
            w->dv_ip = ip;
            w->dv_offset = offset;
            memcpy(w->dv_code, code, n);
            w->dv_len = n;
        }
    }
    if (w->steps) {
        PyObject *s = has_target
            ? Py_BuildValue("(Ky#KK)", (unsigned long long)ip, (const char *)code, (Py_ssize_t)n,
                            (unsigned long long)offset, (unsigned long long)target)
            : Py_BuildValue("(Ky#KO)", (unsigned long long)ip, (const char *)code, (Py_ssize_t)n,
                            (unsigned long long)offset, Py_None);
        if (!s) return -2;
        int r = PyList_Append(w->steps, s);
        Py_DECREF(s);
        if (r) return -2;
    }
    return 0;
}

#define LAST_OFFSET(its) ((its)->n ? (its)->v[(its)->n - 1].offset : 0)

/* Walker.take: -1 with err (E_DECODE) */
static int take(Walker *w, int kind, const char *why, const Item **out) {
    const Items *its = w->its;
    if (w->k >= its->n)
        return err_set(w->err, E_DECODE, LAST_OFFSET(its), w->has_ip, w->ip,
                       "trace ends; %s needs a %s", why, KIND_NAME[kind]);
    const Item *it = &its->v[w->k];
    if (it->kind != kind)
        return err_set(w->err, E_DECODE, it->offset, w->has_ip, w->ip,
                       "%s needs a %s, the trace has %s", why, KIND_NAME[kind],
                       KIND_NAME[it->kind]);
    w->k++;
    w->lo = it->time;
    w->hi = it->next_tsc;
    *out = it;
    return 0;
}

static int settle(Walker *w, uint64_t lo, uint64_t hi) {
    if (img_advance(&w->im, lo, w->err)) return -1;
    return img_settled(&w->im, hi);
}

static int step(Walker *w, const Fetched *forced); /* 1: stepped, 0: end, <0: error */

/* Walker._consistent: 1 if the candidate decodes on for LOOKAHEAD steps, 0 if the trace
 * contradicts it; -1/-2 for an error that is not a contradiction (ImageError, Python). */
static int consistent(Walker *w, const Fetched *cand) {
    Walker c = *w;
    Err cerr;
    memset(&cerr, 0, sizeof cerr);
    c.err = &cerr;
    c.speculative = 1;
    c.flow = NULL;
    c.steps = NULL;
    c.im.cache = NULL;
    c.im.mem = PyMem_Malloc(w->im.len ? w->im.len : 1);
    if (!c.im.mem) { PyErr_NoMemory(); return -2; }
    memcpy(c.im.mem, w->im.mem, w->im.len);
    Fetched forced = *cand;
    memcpy(c.forced_buf, cand->code, cand->n);
    forced.code = c.forced_buf;
    int r = step(&c, &forced);
    if (r == 1) { /* w.run(LOOKAHEAD): the clone has an IP, so no sync */
        int done = 0;
        while ((r = step(&c, NULL)) == 1)
            if (++done >= LOOKAHEAD) break;
    }
    PyMem_Free(c.im.mem);
    if (r >= 0) return 1;
    if (r == -2) return -2;
    if (cerr.kind == E_DECODE) return 0;
    if (cerr.kind == E_AMBIGUOUS) return 1; /* a later doubt is no contradiction */
    *w->err = cerr; /* an ImageError: it reaches decode() */
    return -1;
}

/* Walker.fetch; the instruction in *out; -1/-2 on error */
static int fetch(Walker *w, uint64_t ip, uint64_t offset, Fetched *out) {
    Image *im = &w->im;
    int settled = settle(w, w->lo, w->hi);
    if (settled < 0) return -1;
    size_t off = ip - im->base;
    if (settled && im->cache && ip >= im->base && off < im->len && im->cache[off]) {
        out->insn = entry(w->t, im->cache[off] - 1);
        out->code = img_read(im, ip, INSN_MAX, &out->n);
        return 0;
    }
    size_t n;
    const uint8_t *code = img_read(im, ip, INSN_MAX, &n);
    if (!n) return err_set(w->err, E_DECODE, offset, 1, ip, "the flow left the image");
    if (settled) {
        Cls *c = classify(w->t, code, n);
        if (!c) return -2;
        out->code = code; out->n = n; out->insn = c;
        if (im->cache) im->cache[off] = c->idx + 1;
        return 0;
    }
    /* uncertain(lo, hi, ip) */
    size_t doubt[MAX_DOUBT], nd = 0;
    for (size_t r = im->applied; r < im->nrecs; r++) {
        const Rec *rec = &im->recs[r];
        if (rec->tick > w->hi) break;
        if (rec->tick >= w->lo && (u128)rec->addr < (u128)ip + INSN_MAX &&
            (u128)ip < (u128)rec->addr + rec->len) {
            if (nd == MAX_DOUBT) {
                PyErr_SetString(TooMuchDoubt, "more uncertain text-poke records at one "
                                "instruction than the native decoder takes");
                return -2;
            }
            doubt[nd++] = r;
        }
    }
    if (!nd) {
        Cls *c = classify(w->t, code, n);
        if (!c) return -2;
        out->code = code; out->n = n; out->insn = c;
        return 0;
    }
    /* candidates: each prefix of the uncertain records applied */
    uint8_t cbytes[MAX_DOUBT + 1][INSN_MAX];
    size_t cj[MAX_DOUBT + 1], ckey[MAX_DOUBT + 1], ncand = 0;
    Cls *cins[MAX_DOUBT + 1];
    for (size_t j = 0; j <= nd; j++) {
        uint8_t *c = cbytes[ncand];
        memcpy(c, code, n);
        for (size_t q = 0; q < j; q++) { /* read_with */
            const Rec *rec = &im->recs[doubt[q]];
            for (size_t b = 0; b < rec->len; b++) {
                __int128 pos = (__int128)rec->addr + (__int128)b - (__int128)ip;
                if (pos >= 0 && pos < (__int128)n) c[pos] = rec->new_[b];
            }
        }
        Cls *i = classify(w->t, c, n);
        if (!i) return -2;
        size_t klen = i->ok ? i->size : n;
        if (klen > n) klen = n;
        if (i->ok && i->cls == C_INT) continue;
        int seen = 0;
        for (size_t q = 0; q < ncand && !seen; q++)
            seen = ckey[q] == klen && memcmp(cbytes[q], c, klen) == 0;
        if (seen) continue;
        cj[ncand] = j;
        ckey[ncand] = klen;
        cins[ncand] = i;
        ncand++;
    }
    if (!ncand) {
        Cls *c = classify(w->t, code, n);
        if (!c) return -2;
        out->code = code; out->n = n; out->insn = c;
        return 0;
    }
    size_t alive[MAX_DOUBT + 1], nalive = 0;
    if (ncand > 1 && !w->speculative) {
        for (size_t q = 0; q < ncand; q++) {
            Fetched f = {cbytes[q], n, cins[q]};
            int r = consistent(w, &f);
            if (r < 0) return r;
            if (r) alive[nalive++] = q;
        }
    }
    if (!nalive)
        for (size_t q = 0; q < ncand; q++) alive[nalive++] = q;
    if (nalive > 1) {
        size_t j = cj[alive[1]];
        size_t r = doubt[j ? j - 1 : 0];
        Err *e = w->err;
        e->kind = E_AMBIGUOUS;
        e->offset = offset;
        e->has_ip = 1;
        e->ip = ip;
        e->rec = r;
        e->lo = w->lo;
        e->hi = w->hi;
        e->msg[0] = 0;
        return -1;
    }
    size_t q = alive[0];
    memcpy(w->forced_buf, cbytes[q], n);
    out->code = w->forced_buf;
    out->n = n;
    out->insn = cins[q];
    return 0;
}

static int straight_on(Walker *w);

static int step(Walker *w, const Fetched *forced) {
    const Items *its = w->its;
    size_t n = its->n;
    const Item *it;
    while (w->k < n && (its->v[w->k].kind == K_PSB || its->v[w->k].kind == K_STATUS_FUP)) {
        it = &its->v[w->k];
        if (it->kind == K_PSB) w->depth = 0;
        else if (it->ip != w->ip)
            return err_set(w->err, E_DECODE, it->offset, w->has_ip, w->ip,
                           "PSB+ says the flow is at 0x%llx", (unsigned long long)it->ip);
        w->k++;
    }
    if (w->k >= n)
        return err_set(w->err, E_DECODE, LAST_OFFSET(its), w->has_ip, w->ip,
                       "trace ends without TIP.PGD");
    const Item *nxt = &its->v[w->k];
    uint64_t ip = w->ip;
    if (!forced && nxt->kind == K_FUP && nxt->ip == ip) { /* async, here */
        char why[64];
        if (take(w, K_FUP, "async", &it)) return -1;
        if (w->k < n && its->v[w->k].kind == K_PGD) {
            if (take(w, K_PGD, "end", &it)) return -1;
            return 0;
        }
        snprintf(why, sizeof why, "the FUP at 0x%llx", (unsigned long long)ip);
        if (take(w, K_TIP, why, &it)) return -1;
        int r = add_step(w, ip, EMPTY, 0, nxt->offset, 1, it->ip);
        if (r) return r;
        w->ip = it->ip;
        return 1;
    }
    if (w->nsteps >= w->max_steps)
        return err_set(w->err, E_DECODE, nxt->offset, 1, ip,
                       "more than %zu steps without reaching the end of the trace", w->max_steps);
    Fetched f;
    if (forced) f = *forced;
    else {
        int fr = fetch(w, ip, nxt->offset, &f);
        if (fr) return fr;
    }
    Cls *insn = f.insn;
    if (!insn->ok) {
        char hex[2 * INSN_MAX + 1];
        for (size_t i = 0; i < f.n; i++) sprintf(hex + 2 * i, "%02x", f.code[i]);
        hex[2 * f.n] = 0;
        return err_set(w->err, E_DECODE, nxt->offset, 1, ip,
                       "bytes %s in the image do not decode", hex);
    }
    uint64_t offset = nxt->offset;
    const char *text = insn->ctext;
    int r = add_step(w, ip, f.code, insn->size < f.n ? insn->size : f.n, offset, 0, 0);
    if (r) return r;
    uint64_t nlip = ip + insn->size;
    int c = insn->cls;
    if (c == C_OTHER || c == C_COND || c == C_JMP) {
        if (c == C_COND) {
            if (take(w, K_BIT, text, &it)) return -1;
            w->ip = it->bit ? nlip + insn->rel : nlip;
        } else {
            w->ip = nlip + insn->rel;
        }
        if (!forced && !w->speculative) {
            r = straight_on(w);
            if (r) return r;
        }
    } else if (c == C_CALL) {
        if (insn->rel) push(w, nlip);
        w->ip = nlip + insn->rel;
    } else if (c == C_IJMP || c == C_ICALL || c == C_IRET) {
        if (c == C_ICALL) push(w, nlip);
        if (take(w, K_TIP, text, &it)) return -1;
        w->ip = it->ip;
    } else if (c == C_RET) {
        if (w->k < n && its->v[w->k].kind == K_BIT) {
            if (take(w, K_BIT, "ret", &it)) return -1;
            if (!it->bit || !w->depth)
                return err_set(w->err, E_DECODE, its->v[w->k - 1].offset, 1, ip,
                               "bad return compression");
            w->ip = w->stack[--w->depth];
        } else {
            if (take(w, K_TIP, "ret", &it)) return -1;
            w->ip = it->ip;
        }
    } else {
        return err_set(w->err, E_DECODE, offset, 1, ip,
                       "%s in the image but no FUP in the trace", text);
    }
    return 1;
}

/* Walker._straight_on: a fast path of `step` over cached instructions; the walker's k, ip,
 * lo, hi are written back only at the end, as the reference does (an ImageError inside it
 * reports the walker as it was when it began). */
static int straight_on(Walker *w) {
    int s = settle(w, w->lo, w->hi);
    if (s <= 0) return s < 0 ? -1 : 0;
    const Items *its = w->its;
    size_t n = its->n, k = w->k;
    uint64_t ip = w->ip, lo = w->lo, hi = w->hi;
    Image *im = &w->im;
    while (k < n && w->nsteps < w->max_steps) {
        const Item *nxt = &its->v[k];
        int kind = nxt->kind;
        if ((kind == K_FUP && nxt->ip == ip) || kind == K_PSB || kind == K_STATUS_FUP) break;
        uint64_t off = ip - im->base;
        if (!im->cache || ip < im->base || off >= im->len || !im->cache[off]) break;
        Cls *insn = entry(w->t, im->cache[off] - 1);
        if (!insn->ok) break;
        int c = insn->cls;
        size_t got;
        const uint8_t *code = img_read(im, ip, INSN_MAX, &got);
        size_t len = insn->size < got ? insn->size : got;
        if (c == C_COND) {
            if (kind != K_BIT) break;
            int r = add_step(w, ip, code, len, nxt->offset, 0, 0);
            if (r) return r;
            k++;
            ip += nxt->bit ? insn->size + insn->rel : insn->size;
            if (nxt->time != lo || nxt->next_tsc != hi) {
                lo = nxt->time;
                hi = nxt->next_tsc;
                s = settle(w, lo, hi);
                if (s < 0) return -1;
                if (!s) break;
            }
        } else if (c == C_OTHER || c == C_JMP) {
            int r = add_step(w, ip, code, len, nxt->offset, 0, 0);
            if (r) return r;
            ip += insn->size + insn->rel;
        } else {
            break;
        }
    }
    w->k = k;
    w->ip = ip;
    w->lo = lo;
    w->hi = hi;
    return 0;
}

/* Walker.run with no limit: 0 at TIP.PGD, <0 on error */
static int run(Walker *w) {
    const Items *its = w->its;
    if (!w->has_ip) { /* sync */
        while (w->k < its->n && its->v[w->k].kind != K_PGE) {
            int kd = its->v[w->k].kind;
            if (kd == K_BIT || kd == K_TIP || kd == K_FUP)
                return err_set(w->err, E_DECODE, its->v[w->k].offset, 0, 0,
                               "%s before TIP.PGE", KIND_NAME[kd]);
            w->k++;
        }
        if (w->k == its->n)
            return err_set(w->err, E_DECODE, 0, 0, 0, "no TIP.PGE: tracing never starts");
        const Item *it;
        if (take(w, K_PGE, "start", &it)) return -1;
        w->ip = it->ip;
        w->has_ip = 1;
    }
    int r;
    while ((r = step(w, NULL)) == 1) {
    }
    return r;
}

static PyObject *err_tuple(const Err *e) {
    static const char *names[] = {"", "decode", "ambiguous", "image", "packet"};
    PyObject *ip = e->has_ip ? PyLong_FromUnsignedLongLong(e->ip) : Py_NewRef(Py_None);
    if (!ip) return NULL;
    return Py_BuildValue("(sKNsnKK)", names[e->kind], (unsigned long long)e->offset, ip, e->msg,
                         (Py_ssize_t)e->rec, (unsigned long long)e->lo,
                         (unsigned long long)e->hi);
}

/* decode(stream, base, text, records, backward, max_steps, flow, table, want_steps)
 *   -> (steps, ended, error, divergence, step_list)
 * records: [(tick, addr, old, new)] in the image's (tick-sorted) order. error: None or
 * (kind, offset, ip, message, record, lo, hi) with kind "decode", "packet", "ambiguous" or
 * "image" (Image(): a record outside the text, nothing decoded). divergence: None or
 * (index, ip, code, offset) of the first step that differs from `flow` (None: no flow). */
static PyObject *py_decode(PyObject *mod, PyObject *args) {
    PyObject *ostream, *otext, *orecs, *oflow, *t;
    unsigned long long base;
    int backward, want_steps;
    Py_ssize_t max_steps;
    if (!PyArg_ParseTuple(args, "OKOOpnOO!p", &ostream, &base, &otext, &orecs, &backward,
                          &max_steps, &oflow, &InsnTableType, &t, &want_steps))
        return NULL;
    Buf bs = {0}, btext = {0};
    Flow f;
    memset(&f, 0, sizeof f);
    Items its = {0};
    Rec *recs = NULL;
    PyObject *seq = NULL, *res = NULL, *steps = NULL;
    Err err, bad;
    memset(&err, 0, sizeof err);
    memset(&bad, 0, sizeof bad);
    Walker w;
    memset(&w, 0, sizeof w);
    int have_flow = oflow != Py_None;
    if (get_buf(ostream, &bs, 1) || get_buf(otext, &btext, 1)) goto done;
    if (have_flow && flow_get(oflow, &f)) goto done;
    seq = PySequence_Fast(orecs, "records must be a sequence");
    if (!seq) goto done;
    Py_ssize_t nr = PySequence_Fast_GET_SIZE(seq);
    recs = PyMem_Calloc(nr ? nr : 1, sizeof(Rec));
    if (!recs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nr; i++) {
        unsigned long long tick, addr;
        const char *old, *new_;
        Py_ssize_t lold, lnew;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KKy#y#", &tick, &addr, &old,
                              &lold, &new_, &lnew))
            goto done;
        recs[i] = (Rec){tick, addr, (const uint8_t *)old, (const uint8_t *)new_, (size_t)lnew,
                        (size_t)lold};
    }
    /* the image */
    w.im.base = base;
    w.im.len = (size_t)btext.b.len;
    w.im.mem = PyMem_Malloc(w.im.len ? w.im.len : 1);
    w.im.cache = PyMem_Calloc(w.im.len ? w.im.len : 1, sizeof(int32_t));
    if (!w.im.mem || !w.im.cache) { PyErr_NoMemory(); goto done; }
    memcpy(w.im.mem, btext.b.buf, w.im.len);
    w.im.recs = recs;
    w.im.nrecs = (size_t)nr;
    w.err = &err;
    w.diverged = -1;
    if (want_steps && !(steps = w.steps = PyList_New(0))) goto done;
    int r = 0;
    if (backward) /* the end snapshot minus every record, newest first */
        for (Py_ssize_t i = nr - 1; i >= 0 && !r; i--)
            r = img_write(&w.im, recs[i].addr, recs[i].old, recs[i].oldlen, &err);
    int ended = 0;
    if (r) {
        snprintf(err.msg, sizeof err.msg, "text-poke record at 0x%llx is outside the image",
                 (unsigned long long)err.addr);
    } else {
        int pr = parse(bs.b.buf, (size_t)bs.b.len, &its, &bad);
        if (pr == -2) goto done;
        w.its = &its;
        w.t = (InsnTable *)t;
        w.max_steps = (size_t)max_steps;
        w.flow = have_flow ? &f : NULL;
        r = run(&w);
        if (r == -2) goto done;
        if (r == 0) {
            ended = 1;
        } else if (err.kind == E_IMAGE) { /* applied when its time came: a DecodeError */
            size_t k = w.k < its.n ? w.k : its.n - 1;
            uint64_t addr = err.addr;
            err_set(&err, E_DECODE, its.n ? its.v[k].offset : 0, w.has_ip, w.ip,
                    "text-poke record at 0x%llx is outside the image", (unsigned long long)addr);
        } else if (err.kind == E_DECODE && bad.kind != E_NONE &&
                   err.offset >= LAST_OFFSET(&its)) {
            err = bad; /* out of items because a packet was malformed: that packet */
        }
    }
    PyObject *oerr = err.kind ? err_tuple(&err) : Py_NewRef(Py_None);
    if (!oerr) goto done;
    PyObject *odiv = w.diverged < 0 ? Py_NewRef(Py_None)
        : Py_BuildValue("(LKy#K)", (long long)w.diverged, (unsigned long long)w.dv_ip,
                        (const char *)w.dv_code, (Py_ssize_t)w.dv_len,
                        (unsigned long long)w.dv_offset);
    if (!odiv) { Py_DECREF(oerr); goto done; }
    res = Py_BuildValue("(nONNO)", (Py_ssize_t)w.nsteps, ended ? Py_True : Py_False, oerr, odiv,
                        steps ? steps : Py_None);
done:
    Py_XDECREF(steps);
    PyMem_Free(w.im.mem);
    PyMem_Free(w.im.cache);
    PyMem_Free(its.v);
    PyMem_Free(recs);
    Py_XDECREF(seq);
    flow_rel(&f);
    rel_buf(&bs);
    rel_buf(&btext);
    return res;
}

/* --------------------------------------------------------------- the torn oracle's filter */

/* inside(ips, ranges) -> array('q') of indices i with ips[i] inside any [start, end) of the
 * sorted, disjoint ranges: the only instructions oracles.torn_execution must look at. */
static PyObject *py_inside(PyObject *mod, PyObject *args) {
    PyObject *oips, *oranges;
    if (!PyArg_ParseTuple(args, "OO", &oips, &oranges)) return NULL;
    Buf bi = {0}, br = {0};
    Out o = {0};
    PyObject *res = NULL;
    if (get_buf(oips, &bi, 8) || get_buf(oranges, &br, 16)) goto done;
    const uint64_t *ips = bi.b.buf, *rg = br.b.buf;
    size_t n = (size_t)bi.b.len / 8, nr = (size_t)br.b.len / 16;
    for (size_t i = 0; i < n; i++) {
        uint64_t ip = ips[i];
        size_t lo = 0, hi = nr; /* the first range whose end is above ip */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (rg[2 * mid + 1] <= ip) lo = mid + 1; else hi = mid;
        }
        if (lo < nr && rg[2 * lo] <= ip) {
            int64_t v = (int64_t)i;
            if (out_put(&o, &v, 8)) goto done;
        }
    }
    res = out_bytes(&o);
done:
    PyMem_Free(o.p);
    rel_buf(&bi);
    rel_buf(&br);
    return res;
}

/* ---------------------------------------------------------- the check memo's times' order */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* first index of sorted v[0..n) whose value is above t (above_or_equal: at or above t) */
static size_t bound_u64(const uint64_t *v, size_t n, uint64_t t, int above_or_equal) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (above_or_equal ? v[mid] < t : v[mid] <= t) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* order(own, times) -> bytes of u64 triples, one per time: its rank among the distinct
 * `times`, and bisect_left and bisect_right of it in `own` (strictly increasing ticks): what
 * check_memo._order, the reference, makes. */
static PyObject *py_order(PyObject *mod, PyObject *args) {
    PyObject *oown, *otimes;
    if (!PyArg_ParseTuple(args, "OO", &oown, &otimes)) return NULL;
    Buf bo = {0}, bt = {0};
    uint64_t *sorted = NULL, *out = NULL;
    PyObject *res = NULL;
    if (get_buf(oown, &bo, 8) || get_buf(otimes, &bt, 8)) goto done;
    const uint64_t *own = bo.b.buf, *times = bt.b.buf;
    size_t n = (size_t)bo.b.len / 8, m = (size_t)bt.b.len / 8, u = 0;
    sorted = PyMem_Malloc((m ? m : 1) * 8);
    out = PyMem_Malloc((m ? m : 1) * 24);
    if (!sorted || !out) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(sorted, times, m * 8);
    qsort(sorted, m, 8, cmp_u64);
    for (size_t i = 0; i < m; i++) /* the distinct times, ascending */
        if (!u || sorted[u - 1] != sorted[i]) sorted[u++] = sorted[i];
    for (size_t i = 0; i < m; i++) {
        out[3 * i] = bound_u64(sorted, u, times[i], 1);
        out[3 * i + 1] = bound_u64(own, n, times[i], 1);
        out[3 * i + 2] = bound_u64(own, n, times[i], 0);
    }
    res = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)(m * 24));
done:
    PyMem_Free(sorted);
    PyMem_Free(out);
    rel_buf(&bo);
    rel_buf(&bt);
    return res;
}

static PyMethodDef methods[] = {
    {"flow", py_flow, METH_VARARGS, "a CPU's flow from its packed retired log (flow.cpu_flow)"},
    {"encode", py_encode, METH_VARARGS, "a CPU's PT stream from its flow (encoder.encode_cpu)"},
    {"decode", py_decode, METH_VARARGS,
     "decode a stream over the image and compare with the flow (decoder.decode, "
     "verify.compare)"},
    {"inside", py_inside, METH_VARARGS, "indices of the IPs inside the patch sites"},
    {"order", py_order, METH_VARARGS, "where each time falls among a CPU's ticks (check_memo)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "harness.trace.pt._native",
    "The native trace pipeline (issue 15): flow, encoder, parser, decoder, compare.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&InsnTableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&InsnTableType);
    if (PyModule_AddObject(m, "InsnTable", (PyObject *)&InsnTableType) < 0) {
        Py_DECREF(&InsnTableType);
        Py_DECREF(m);
        return NULL;
    }
    TooMuchDoubt = PyErr_NewException("harness.trace.pt._native.TooMuchDoubt",
                                      PyExc_RuntimeError, NULL);
    if (!TooMuchDoubt || PyModule_AddObject(m, "TooMuchDoubt", Py_NewRef(TooMuchDoubt)) < 0) {
        Py_XDECREF(TooMuchDoubt);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "SOURCE_DIGEST", TEXTPOKE_SOURCE_DIGEST) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
