/*
 * harness/explore/_dpor.c: dpor.py's `races`, in C (issue 15: the exhaustive search's time per
 * run went a fifth to finding the races of its steps, a Python loop over every location of
 * every footprint).
 *
 * A line-by-line port of dpor.dependences, races and _initials, which stay the reference:
 * tests/test_dpor_native.py compares both on recorded runs of every shipped scenario. The
 * locations are the ints of emu/footprint.py, read as the machine keeps them (Footprint.packed
 * and .added; a location listed again is merged into its first entry), not through the sets
 * Python builds. A hash table, looked up only while the footprints are read, gives each
 * location a dense id (a run lists a few hundred, ten thousand times); arrays by id keep its
 * last write and each CPU's last read since (dpor.py's `last_write` and `reads`).
 *
 * A run of the exhaustive search shares its first steps with the run it deviates from: with
 * `keep`, the finder returns its RaceLog (the steps as read, their clocks, a checkpoint of the
 * walk every CP_EVERY steps), and the next run passes it as `prior` to read and walk only its
 * own steps. `backtrack` finds the races and applies what they ask of the run's path in the
 * same pass (exhaustive.backtrack; its loop over dpor.backtrack_points is the reference).
 * `step_done` is ExhaustiveSource.step_done's loop, which the fast engine's C loop calls once a
 * scheduling step (its Steps kept out of the cyclic collector's sight: untrack_step);
 * `nodes` is taken_in's loop making the Nodes of a run's own choices (exhaustive.own_nodes;
 * node_of's loop is the reference), `same_requests` its walk over the choices a run shares
 * with its prefix (exhaustive._new_requests' loop is the reference).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the digest of the sources this module was compiled from (emu/native_build.py; setup.py
   defines it): emu/engine.py refuses a build whose sources have changed since */
#ifndef TEXTPOKE_SOURCE_DIGEST
#define TEXTPOKE_SOURCE_DIGEST ""
#endif

#define MAX_CPUS 64

/* the attribute names read per step, interned once (PyInit__dpor) */
static PyObject *s_footprint, *s_cpu, *s_packed, *s_added;
static PyObject *s_choices, *s_stepped, *s_steps, *s_kind, *s_request, *s_context, *s_node,
    *s_end, *s_arity, *s_value, *s_origin, *s_runnable, *s_todo;
/* exhaustive.Node's fields, in its dataclass's order (py_nodes) */
static const char *const NODE_FIELD_NAMES[] = {"kind", "arity", "value",  "simplest", "runnable",
                                               "todo", "done",  "origin", "request"};
#define NODE_FIELDS ((int)(sizeof NODE_FIELD_NAMES / sizeof NODE_FIELD_NAMES[0]))
static PyObject *node_fields[NODE_FIELDS];

typedef struct {
    uint64_t loc;
    int used;
    Py_ssize_t id;          /* the location's dense index: the order it was first listed */
    Py_ssize_t step, entry; /* the last step that listed it, and where (Steps.ids) */
} Slot;

/* The locations of a run, each given a dense id as it is first listed (the table is only
   looked up while the footprints are read: the race loop indexes per-id arrays). */
typedef struct {
    Slot *slots;
    size_t cap, len;
} Table;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int table_grow(Table *t) {
    size_t cap = t->cap ? 2 * t->cap : 1024;
    Slot *slots = calloc(cap, sizeof(Slot));
    if (!slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].used) {
            size_t h = mix(t->slots[i].loc) & (cap - 1);
            while (slots[h].used)
                h = (h + 1) & (cap - 1);
            slots[h] = t->slots[i];
        }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* The slot of `loc`, made (with the next id) when new; NULL: out of memory. */
static Slot *table_get(Table *t, uint64_t loc) {
    size_t h = 0;
    if (t->cap) {
        h = mix(loc) & (t->cap - 1);
        while (t->slots[h].used) {
            if (t->slots[h].loc == loc)
                return &t->slots[h];
            h = (h + 1) & (t->cap - 1);
        }
    }
    if (2 * (t->len + 1) > t->cap) { /* a new one: room first (at most half full) */
        if (table_grow(t))
            return NULL;
        h = mix(loc) & (t->cap - 1);
        while (t->slots[h].used)
            h = (h + 1) & (t->cap - 1);
    }
    Slot *s = &t->slots[h];
    s->used = 1;
    s->loc = loc;
    s->id = (Py_ssize_t)t->len;
    s->step = -1;
    t->len++;
    return s;
}

/* One step's footprint: its locations, each flagged read and/or written. */
typedef struct {
    int cpu;
    Py_ssize_t n, start; /* its entries in the steps' `ids` and `flags` */
    Py_ssize_t node;     /* its CPU choice (Step.node; -1: None), read for `backtrack` */
} StepFp;

#define F_READ 1
#define F_WRITE 2

typedef struct {
    StepFp *steps;
    Py_ssize_t nsteps;
    Py_ssize_t *ids; /* each entry's location id (Table) */
    uint8_t *flags;
    Py_ssize_t nlocs, caplocs;
} Steps;

/* Room for `need` items of `size` bytes in *buf, whose room is *cap (doubled, from `first`).
   0, or -1: out of memory (*buf as it was). */
static int reserve(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t size, Py_ssize_t first) {
    if (need <= *cap)
        return 0;
    Py_ssize_t c = *cap ? 2 * *cap : first;
    while (c < need)
        c *= 2;
    void *p = realloc(*buf, (size_t)c * size);
    if (!p)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}

/* Room for `need` entries in the steps' ids and flags (one room for both). */
static int reserve_locs(Steps *st, Py_ssize_t need) {
    Py_ssize_t cap = st->caplocs;
    return reserve((void **)&st->ids, &cap, need, sizeof *st->ids, 4096) ||
           reserve((void **)&st->flags, &st->caplocs, need, 1, 4096);
}

static int add_loc(Steps *st, Py_ssize_t id, uint8_t flag) {
    if (reserve_locs(st, st->nlocs + 1))
        return -1;
    st->ids[st->nlocs] = id;
    st->flags[st->nlocs++] = flag;
    return 0;
}

/* emu/footprint.py: WRITTEN, the flag of a written location */
#define FP_WRITTEN (1ULL << 63)

/* One entry of step j's footprint (a location, WRITTEN flagged when written) into `st`: a
   location the step listed already gets the flag or-ed in. 0, or -1: out of memory. */
static int add_entry(Steps *st, Table *t, Py_ssize_t j, uint64_t e) {
    uint8_t flag = e & FP_WRITTEN ? F_WRITE : F_READ;
    Slot *s = table_get(t, e & ~FP_WRITTEN);
    if (!s)
        return -1;
    if (s->step == j) {
        st->flags[s->entry] |= flag;
        return 0;
    }
    s->step = j;
    s->entry = st->nlocs;
    return add_loc(st, s->id, flag);
}

/* Step j's footprint (Footprint.packed, then .added) into `st`. 0, or -1 with an error. */
static int add_footprint(Steps *st, Table *t, Py_ssize_t j, PyObject *packed,
                         PyObject *added) {
    if (!PyBytes_Check(packed) || PyBytes_GET_SIZE(packed) % 8 || !PyList_Check(added)) {
        PyErr_Format(PyExc_TypeError, "races: step %zd's footprint is not packed bytes and "
                     "a list", j);
        return -1;
    }
    const char *p = PyBytes_AS_STRING(packed);
    for (Py_ssize_t k = 0; k < PyBytes_GET_SIZE(packed); k += 8) {
        uint64_t e;
        memcpy(&e, p + k, 8);
        if (add_entry(st, t, j, e)) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(added); k++) {
        uint64_t e = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(added, k));
        if (e == (uint64_t)-1 && PyErr_Occurred())
            return -1;
        if (add_entry(st, t, j, e)) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void steps_free(Steps *st) {
    free(st->steps);
    free(st->ids);
    free(st->flags);
}

/* dpor._initials: the CPUs that can start the reversal of (i, j), in dpor.py's order, into
   `initial`; how many. */
static int initials_into(const Steps *st, const Py_ssize_t *clocks, Py_ssize_t i,
                         Py_ssize_t j, int ncpus, int *initial) {
    int ci = st->steps[i].cpu;
    Py_ssize_t first[MAX_CPUS];
    for (int c = 0; c < ncpus; c++)
        first[c] = -1;
    for (Py_ssize_t k = i + 1; k <= j; k++)
        if (k == j || clocks[k * ncpus + ci] < i) {
            int c = st->steps[k].cpu;
            if (first[c] < 0)
                first[c] = k;
        }
    int n = 0;
    for (int c = 0; c < ncpus; c++) {
        if (first[c] < 0)
            continue;
        int beaten = 0;
        for (int d = 0; d < ncpus && !beaten; d++)
            if (d != c && first[d] >= 0 && first[d] <= clocks[first[c] * ncpus + d])
                beaten = 1;
        if (!beaten)
            initial[n++] = c;
    }
    /* sorted by (c is not j's CPU, first[c] > clocks[j][c], c) */
    int jc = st->steps[j].cpu;
    for (int a = 1; a < n; a++) {
        int x = initial[a], b = a - 1;
        int kx0 = x != jc, kx1 = first[x] > clocks[j * ncpus + x];
        while (b >= 0) {
            int y = initial[b];
            int ky0 = y != jc, ky1 = first[y] > clocks[j * ncpus + y];
            if (ky0 < kx0 || (ky0 == kx0 && (ky1 < kx1 || (ky1 == kx1 && y < x))))
                break;
            initial[b + 1] = y;
            b--;
        }
        initial[b + 1] = x;
    }
    return n;
}

static PyObject *initials(const Steps *st, const Py_ssize_t *clocks, Py_ssize_t i,
                          Py_ssize_t j, int ncpus) {
    int initial[MAX_CPUS];
    int n = initials_into(st, clocks, i, j, ncpus, initial);
    PyObject *out = PyList_New(n);
    for (int a = 0; out && a < n; a++) {
        PyObject *v = PyLong_FromLong(initial[a]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, a, v);
    }
    return out;
}

static int cmp_ssize(const void *a, const void *b) {
    Py_ssize_t x = *(const Py_ssize_t *)a, y = *(const Py_ssize_t *)b;
    return (x > y) - (x < y);
}

/* What finding a run's races leaves for the runs that deviate from it (`races(..., keep=True)`):
   its steps as read, their vector clocks, and every CP_EVERY steps the race loop's state (each
   location's last write and last reads, each CPU's last step). A run that deviates from it
   shares its first `since` steps (dpor.first_new_step), and so all of this up to there: its
   race loop starts from the checkpoint before `since`, replays the few steps between, and reads
   only its own steps' footprints (`prior`). */
#define CP_EVERY 32

typedef struct {
    PyObject_HEAD
    Table t;
    Steps st;
    int ncpus;
    Py_ssize_t n;
    Py_ssize_t *pool;   /* step j's vector clock at pool + j * ncpus */
    Py_ssize_t *raw;    /* per step: its footprint's entries as listed (the prior's check) */
    Py_ssize_t *cps;    /* checkpoint k (before step k * CP_EVERY): nids, then last_write[nids],
                           last_reads[nids * ncpus], clock_of[ncpus] */
    Py_ssize_t *cp_at;  /* where checkpoint k starts in `cps` */
    Py_ssize_t ncp, cps_len, cps_cap, cp_at_cap;
} RaceLog;

/* The log emptied (every buffer freed), then made ready for `n` steps. -1: out of memory. */
static int racelog_start(RaceLog *log, Py_ssize_t n) {
    steps_free(&log->st);
    free(log->t.slots);
    free(log->pool);
    free(log->raw);
    free(log->cps);
    free(log->cp_at);
    memset((char *)log + sizeof(PyObject), 0, sizeof(RaceLog) - sizeof(PyObject));
    if (n < 0)
        return 0;
    log->n = n;
    log->st.steps = calloc(n ? n : 1, sizeof(StepFp));
    log->raw = calloc(n ? n : 1, sizeof *log->raw);
    return log->st.steps && log->raw ? 0 : -1;
}

static void racelog_dealloc(RaceLog *log) {
    racelog_start(log, -1);
    Py_TYPE(log)->tp_free((PyObject *)log);
}

static PyTypeObject RaceLogType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "harness.explore._dpor.RaceLog",
    .tp_basicsize = sizeof(RaceLog),
    .tp_dealloc = (destructor)racelog_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What finding a run's races leaves for the runs that deviate from it.",
};

/* Step j's CPU and footprint, read from the dpor.Step into the log. -1 with an error. */
static int read_step(RaceLog *log, PyObject *step, Py_ssize_t j, long *cpu_out,
                     Py_ssize_t *raw_out) {
    PyObject *fp = PyObject_GetAttr(step, s_footprint);
    if (!fp)
        return -1;
    PyObject *node = PyObject_GetAttr(step, s_node);
    if (!node) {
        Py_DECREF(fp);
        return -1;
    }
    Py_ssize_t at = node == Py_None ? -1 : PyLong_AsSsize_t(node);
    Py_DECREF(node);
    if (at == -1 && PyErr_Occurred()) {
        Py_DECREF(fp);
        return -1;
    }
    if (at < -1) {
        Py_DECREF(fp);
        PyErr_Format(PyExc_ValueError, "races: step %zd's choice is at %zd", j, at);
        return -1;
    }
    PyObject *cpu = PyObject_GetAttr(fp, s_cpu);
    PyObject *packed = PyObject_GetAttr(fp, s_packed);
    PyObject *added = PyObject_GetAttr(fp, s_added);
    Py_DECREF(fp);
    long c = cpu ? PyLong_AsLong(cpu) : -1;
    int bad = !cpu || !packed || !added || PyErr_Occurred();
    if (!bad && (c < 0 || c >= MAX_CPUS)) {
        PyErr_Format(PyExc_ValueError, "races: step %zd of CPU %ld", j, c);
        bad = 1;
    }
    if (!bad && log) {
        log->st.steps[j].cpu = (int)c;
        log->st.steps[j].node = at;
        log->st.steps[j].start = log->st.nlocs;
        bad = add_footprint(&log->st, &log->t, j, packed, added);
        log->st.steps[j].n = log->st.nlocs - log->st.steps[j].start;
    }
    if (!bad) {
        *cpu_out = c;
        *raw_out = PyBytes_GET_SIZE(packed) / 8 + PyList_GET_SIZE(added);
    }
    Py_XDECREF(cpu);
    Py_XDECREF(packed);
    Py_XDECREF(added);
    return bad ? -1 : 0;
}

/* One step's effect on the last writes and reads, and on its CPU's last step. */
static void apply_step(const Steps *st, Py_ssize_t j, int ncpus, Py_ssize_t *last_write,
                       Py_ssize_t *last_reads, Py_ssize_t *clock_of) {
    int c = st->steps[j].cpu;
    const Py_ssize_t *ids = st->ids + st->steps[j].start;
    const uint8_t *flags = st->flags + st->steps[j].start;
    for (Py_ssize_t k = 0; k < st->steps[j].n; k++) {
        Py_ssize_t *r = last_reads + ids[k] * ncpus;
        if (flags[k] & F_WRITE) {
            last_write[ids[k]] = j;
            for (int d = 0; d < ncpus; d++) /* reads.pop(loc) */
                r[d] = -1;
        } else { /* read, not written */
            r[c] = j;
        }
    }
    clock_of[c] = j;
}

static int checkpoint(RaceLog *log, Py_ssize_t nids, const Py_ssize_t *last_write,
                      const Py_ssize_t *last_reads, const Py_ssize_t *clock_of) {
    int ncpus = log->ncpus;
    Py_ssize_t size = 1 + nids * (1 + ncpus) + ncpus;
    if (reserve((void **)&log->cps, &log->cps_cap, log->cps_len + size, sizeof *log->cps,
                16384) ||
        reserve((void **)&log->cp_at, &log->cp_at_cap, log->ncp + 1, sizeof *log->cp_at, 64))
        return -1;
    Py_ssize_t *p = log->cps + log->cps_len;
    log->cp_at[log->ncp++] = log->cps_len;
    log->cps_len += size;
    p[0] = nids;
    memcpy(p + 1, last_write, nids * sizeof *p);
    memcpy(p + 1 + nids, last_reads, nids * ncpus * sizeof *p);
    memcpy(p + 1 + nids * (1 + ncpus), clock_of, ncpus * sizeof *p);
    return 0;
}

/* The log starts as `prior`'s first `since` steps: its locations (their ids), the steps'
   entries, clocks and raw counts, and the checkpoints before `since`. -1: out of memory. */
static int take_prior(RaceLog *log, const RaceLog *prior, Py_ssize_t since) {
    log->t.cap = prior->t.cap;
    log->t.len = prior->t.len;
    log->t.slots = malloc(prior->t.cap * sizeof(Slot));
    if (!log->t.slots)
        return -1;
    memcpy(log->t.slots, prior->t.slots, prior->t.cap * sizeof(Slot));
    for (size_t i = 0; i < log->t.cap; i++)
        log->t.slots[i].step = -1; /* the prior's later steps listed some: not this run's */
    Py_ssize_t nl = since < prior->n ? prior->st.steps[since].start : prior->st.nlocs;
    if (reserve_locs(&log->st, nl))
        return -1;
    log->st.nlocs = nl;
    memcpy(log->st.ids, prior->st.ids, nl * sizeof *log->st.ids);
    memcpy(log->st.flags, prior->st.flags, nl);
    memcpy(log->st.steps, prior->st.steps, since * sizeof(StepFp));
    memcpy(log->raw, prior->raw, since * sizeof *log->raw);
    Py_ssize_t ncp = (since + CP_EVERY - 1) / CP_EVERY; /* those before `since` */
    for (Py_ssize_t k = 0; k < ncp && k < prior->ncp; k++) {
        const Py_ssize_t *p = prior->cps + prior->cp_at[k];
        if (checkpoint(log, p[0], p + 1, p + 1 + p[0], p + 1 + p[0] * (1 + log->ncpus)))
            return -1;
    }
    return 0;
}

/* Where a race found goes: the list of races (dpor.races), or, for `backtrack`, what it asks
   of the path's nodes, applied there (dpor.backtrack_points, then exhaustive.backtrack). */
typedef struct {
    PyObject *out;   /* races: [(i, j, cpus)] */
    PyObject *path;  /* backtrack: the path's nodes (a list), else NULL */
    PyObject *added; /* backtrack: where a value to try was added (a list), or None */
    Table seen;      /* backtrack: the (choice, CPUs) pairs applied already (SEEN_CPUS) */
} Sink;

/* A pair of a choice and a set of CPUs is applied once (again it adds nothing); the set is a
   bit mask, kept beside the choice in one 64-bit key while the CPUs fit in SEEN_CPUS bits. */
#define SEEN_CPUS 20

/* The path index of the CPU choice before step t (the nearest at or before it; -1: none):
   dpor._choice_before. */
static Py_ssize_t choice_before(const Steps *st, Py_ssize_t t) {
    for (; t >= 0; t--)
        if (st->steps[t].node >= 0)
            return st->steps[t].node;
    return -1;
}

/* exhaustive.backtrack's body for one point: at the node at `index` of the path (its origin,
   if a deviation's copy), the values of the `lead` CPUs it can run, or every value when it can
   run none, into its todo; the index into `added` when that grew. 0, or -1 with an error. */
static int apply_point(Sink *sink, Py_ssize_t index, const int *lead, int n) {
    if (index >= PyList_GET_SIZE(sink->path)) {
        PyErr_Format(PyExc_IndexError, "backtrack: choice %zd of a path of %zd", index,
                     PyList_GET_SIZE(sink->path));
        return -1;
    }
    PyObject *node = PyList_GET_ITEM(sink->path, index);
    PyObject *origin = PyObject_GetAttr(node, s_origin);
    if (!origin)
        return -1;
    if (origin != Py_None)
        node = origin;
    PyObject *runnable = PyObject_GetAttr(node, s_runnable);
    PyObject *todo = runnable ? PyObject_GetAttr(node, s_todo) : NULL;
    int rc = -1;
    if (!todo)
        goto done;
    if (!PyTuple_Check(runnable) || !PySet_Check(todo)) {
        PyErr_SetString(PyExc_TypeError, "backtrack: a node's runnable is a tuple, its todo "
                        "a set");
        goto done;
    }
    Py_ssize_t had = PySet_GET_SIZE(todo);
    int can = 0;
    for (int a = 0; a < n; a++)
        for (Py_ssize_t r = 0; r < PyTuple_GET_SIZE(runnable); r++) {
            long c = PyLong_AsLong(PyTuple_GET_ITEM(runnable, r));
            if (c == -1 && PyErr_Occurred())
                goto done;
            if (c != lead[a])
                continue;
            PyObject *v = PyLong_FromSsize_t(r);
            int bad = !v || PySet_Add(todo, v);
            Py_XDECREF(v);
            if (bad)
                goto done;
            can = 1;
            break;
        }
    if (!can) {
        PyObject *arity = PyObject_GetAttr(node, s_arity);
        long m = arity ? PyLong_AsLong(arity) : -1;
        Py_XDECREF(arity);
        if (m == -1 && PyErr_Occurred())
            goto done;
        for (long v = 0; v < m; v++) {
            PyObject *x = PyLong_FromLong(v);
            int bad = !x || PySet_Add(todo, x);
            Py_XDECREF(x);
            if (bad)
                goto done;
        }
    }
    if (sink->added != Py_None && PySet_GET_SIZE(todo) != had) {
        PyObject *i = PyLong_FromSsize_t(index);
        int bad = !i || PyList_Append(sink->added, i);
        Py_XDECREF(i);
        if (bad)
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(origin);
    Py_XDECREF(runnable);
    Py_XDECREF(todo);
    return rc;
}

/* The race (i, j) to the sink: as (i, j, cpus) to its list, or, for `backtrack`, its points
   applied: dpor.backtrack_points' choices before step i and before the start of i's block,
   each with the race's initials. 0, or -1 with an error. */
static int emit(Sink *sink, const Steps *st, const Py_ssize_t *pool, Py_ssize_t i,
                Py_ssize_t j, int ncpus) {
    if (!sink->path) {
        PyObject *lead = initials(st, pool, i, j, ncpus);
        PyObject *race = lead ? Py_BuildValue("nnN", i, j, lead) : NULL;
        int bad = !race || PyList_Append(sink->out, race);
        Py_XDECREF(race);
        return bad ? -1 : 0;
    }
    int lead[MAX_CPUS];
    int n = initials_into(st, pool, i, j, ncpus, lead);
    uint64_t mask = 0;
    for (int a = 0; a < n; a++)
        mask |= 1ULL << lead[a];
    Py_ssize_t start = i;
    while (start > 0 && st->steps[start - 1].cpu == st->steps[i].cpu)
        start--;
    Py_ssize_t ts[2] = {i, start};
    for (int k = 0; k < (start != i ? 2 : 1); k++) {
        Py_ssize_t node = choice_before(st, ts[k]);
        if (node < 0)
            continue;
        if (ncpus <= SEEN_CPUS) {
            Slot *seen = table_get(&sink->seen, (uint64_t)node << SEEN_CPUS | mask);
            if (!seen) {
                PyErr_NoMemory();
                return -1;
            }
            if (seen->step >= 0)
                continue;
            seen->step = 0;
        }
        if (apply_point(sink, node, lead, n))
            return -1;
    }
    return 0;
}

/* The races of a list of dpor.Step (from `since` on) to `sink`: the RaceLog of the run (a new
   reference), or NULL with an error. `prior`: the RaceLog of a run whose first `since` steps
   are these steps' first `since` (their footprints are not read). */
static RaceLog *find(PyObject *arg, Py_ssize_t since, PyObject *prior_obj, int keep,
                     Sink *sink) {
    if (prior_obj != Py_None && !PyObject_TypeCheck(prior_obj, &RaceLogType)) {
        PyErr_SetString(PyExc_TypeError, "races: prior must be a RaceLog or None");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(arg, "races: a list of steps");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (since < 0)
        since = 0;
    const RaceLog *prior = prior_obj == Py_None ? NULL : (const RaceLog *)prior_obj;
    if (prior && (since == 0 || since > n || since > prior->n))
        prior = NULL; /* nothing shared, or more than it has: from the first step */
    Py_ssize_t *preds = NULL, *last_write = NULL, *last_reads = NULL;
    Py_ssize_t clock_of[MAX_CPUS], minus[MAX_CPUS];
    RaceLog *result = NULL;
    RaceLog *log = PyObject_New(RaceLog, &RaceLogType);
    if (!log) {
        Py_DECREF(seq);
        return NULL;
    }
    memset((char *)log + sizeof(PyObject), 0, sizeof(RaceLog) - sizeof(PyObject));
    if (racelog_start(log, n))
        goto nomem;
again:;
    Py_ssize_t start = prior ? since : 0; /* the first step whose footprint is read */
    int ncpus = prior ? prior->ncpus : 1;
    log->ncpus = ncpus;
    if (prior) {
        if (take_prior(log, prior, since))
            goto nomem;
        /* the prior's check: the last shared step is the same CPU with the same entries */
        long c;
        Py_ssize_t raw;
        if (read_step(NULL, PySequence_Fast_GET_ITEM(seq, since - 1), since - 1, &c, &raw))
            goto done;
        if (c != prior->st.steps[since - 1].cpu || raw != prior->raw[since - 1]) {
            PyErr_Format(PyExc_ValueError, "races: step %zd is not the prior run's", since - 1);
            goto done;
        }
    }
    for (Py_ssize_t j = start; j < n; j++) {
        long c;
        if (read_step(log, PySequence_Fast_GET_ITEM(seq, j), j, &c, &log->raw[j]))
            goto done;
        if (c + 1 > ncpus) {
            if (prior) { /* a CPU the prior's clocks have no room for: from the first step */
                if (racelog_start(log, n))
                    goto nomem;
                prior = NULL;
                goto again;
            }
            ncpus = (int)c + 1;
        }
    }
    log->st.nsteps = n;
    log->ncpus = ncpus;
    /* per location id: the last step that wrote it (-1: none), and per CPU its last read
       since (-1: none), ncpus to an id (dpor.py's `last_write` and `reads`) */
    size_t nids = log->t.len ? log->t.len : 1;
    last_write = malloc(nids * sizeof *last_write);
    last_reads = malloc(nids * ncpus * sizeof *last_reads);
    log->pool = malloc((size_t)(n ? n : 1) * ncpus * sizeof *log->pool);
    preds = malloc((log->st.nlocs * ncpus + 1) * sizeof *preds);
    if (!last_write || !last_reads || !log->pool || !preds)
        goto nomem;
    if (keep) { /* room for this run's checkpoints at once (not doubled into, copy by copy) */
        Py_ssize_t first = prior ? since : 0;
        Py_ssize_t ncp = (n + CP_EVERY - 1) / CP_EVERY - (first + CP_EVERY - 1) / CP_EVERY;
        if (ncp > 0 &&
            (reserve((void **)&log->cps, &log->cps_cap,
                     log->cps_len + ncp * (1 + (Py_ssize_t)nids * (1 + ncpus) + ncpus),
                     sizeof *log->cps, 16384) ||
             reserve((void **)&log->cp_at, &log->cp_at_cap, log->ncp + ncp, sizeof *log->cp_at,
                     64)))
            goto nomem;
    }
    for (size_t k = 0; k < nids; k++)
        last_write[k] = -1;
    for (size_t k = 0; k < nids * ncpus; k++)
        last_reads[k] = -1;
    for (int c = 0; c < ncpus; c++)
        clock_of[c] = minus[c] = -1;
    if (prior) { /* the state before `since`: the checkpoint before it, then the steps between */
        memcpy(log->pool, prior->pool, since * ncpus * sizeof *log->pool);
        Py_ssize_t k = (since - 1) / CP_EVERY;
        const Py_ssize_t *p = prior->cps + prior->cp_at[k];
        Py_ssize_t had = p[0];
        memcpy(last_write, p + 1, had * sizeof *p);
        memcpy(last_reads, p + 1 + had, had * ncpus * sizeof *p);
        memcpy(clock_of, p + 1 + had * (1 + ncpus), ncpus * sizeof *p);
        for (Py_ssize_t j = k * CP_EVERY; j < since; j++)
            apply_step(&log->st, j, ncpus, last_write, last_reads, clock_of);
    }
    const Steps *st = &log->st;
    Py_ssize_t *pool = log->pool;
    for (Py_ssize_t j = start; j < n; j++) {
        if (keep && j % CP_EVERY == 0 &&
            checkpoint(log, (Py_ssize_t)nids, last_write, last_reads, clock_of))
            goto nomem;
        int c = st->steps[j].cpu;
        const Py_ssize_t *before = clock_of[c] >= 0 ? pool + clock_of[c] * ncpus : minus;
        Py_ssize_t np = 0;
        const Py_ssize_t *ids = st->ids + st->steps[j].start;
        const uint8_t *flags = st->flags + st->steps[j].start;
        for (Py_ssize_t k = 0; k < st->steps[j].n; k++) {
            Py_ssize_t w = last_write[ids[k]];
            if (w >= 0 && st->steps[w].cpu != c)
                preds[np++] = w;
            if (flags[k] & F_WRITE) {
                const Py_ssize_t *r = last_reads + ids[k] * ncpus;
                for (int d = 0; d < ncpus; d++)
                    if (d != c && r[d] >= 0)
                        preds[np++] = r[d];
            }
        }
        if (np > 16) /* as a set, in sorted order (a step has a few: insertion sort) */
            qsort(preds, np, sizeof *preds, cmp_ssize);
        else
            for (Py_ssize_t a = 1; a < np; a++) {
                Py_ssize_t x = preds[a], b = a - 1;
                for (; b >= 0 && preds[b] > x; b--)
                    preds[b + 1] = preds[b];
                preds[b + 1] = x;
            }
        Py_ssize_t u = 0;
        for (Py_ssize_t k = 0; k < np; k++)
            if (!u || preds[u - 1] != preds[k])
                preds[u++] = preds[k];
        np = u;
        Py_ssize_t *vc = pool + j * ncpus;
        memcpy(vc, before, ncpus * sizeof *vc);
        for (Py_ssize_t k = 0; k < np; k++)
            for (int d = 0; d < ncpus; d++)
                if (pool[preds[k] * ncpus + d] > vc[d])
                    vc[d] = pool[preds[k] * ncpus + d];
        vc[c] = j;
        for (Py_ssize_t k = 0; j >= since && k < np; k++) {
            Py_ssize_t i = preds[k];
            if (i > before[st->steps[i].cpu]) { /* not ordered before j by anything else */
                if (emit(sink, st, pool, i, j, ncpus))
                    goto done;
            }
        }
        apply_step(st, j, ncpus, last_write, last_reads, clock_of);
    }
    result = (RaceLog *)Py_NewRef(log);
    goto done;
nomem:
    PyErr_NoMemory();
done:
    Py_DECREF(seq);
    Py_DECREF(log);
    free(last_write);
    free(last_reads);
    free(preds);
    return result;
}

/* races(steps, since=0, prior=None, keep=False) -> [(i, j, cpus)], or with `keep`
   ([(i, j, cpus)], RaceLog): dpor.races for a list of dpor.Step (`find`). */
static PyObject *py_races(PyObject *mod, PyObject *args, PyObject *kwargs) {
    (void)mod;
    static char *kwlist[] = {"steps", "since", "prior", "keep", NULL};
    PyObject *steps, *prior = Py_None;
    Py_ssize_t since = 0;
    int keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|nOp:races", kwlist, &steps, &since,
                                     &prior, &keep))
        return NULL;
    Sink sink = {.out = PyList_New(0)};
    if (!sink.out)
        return NULL;
    RaceLog *log = find(steps, since, prior, keep, &sink);
    PyObject *result = !log ? NULL : keep ? Py_BuildValue("OO", sink.out, (PyObject *)log)
                                          : Py_NewRef(sink.out);
    Py_XDECREF(log);
    Py_DECREF(sink.out);
    return result;
}

/* backtrack(path, steps, since=0, prior=None, added=None, keep=False) -> RaceLog or None:
   exhaustive.backtrack under the fast engine, the races found and what they ask of the path
   applied in one pass, in C (its reference is backtrack_points' loop in exhaustive.py, over
   dpor.races). A point that repeats one already applied (the same choice and CPUs: a run asks
   ~120, ~87 of them distinct, in static_key) is skipped; it would add nothing. With `keep`,
   the run's RaceLog (as `races`). */
static PyObject *py_backtrack(PyObject *mod, PyObject *args, PyObject *kwargs) {
    (void)mod;
    static char *kwlist[] = {"path", "steps", "since", "prior", "added", "keep", NULL};
    PyObject *steps, *prior = Py_None;
    Py_ssize_t since = 0;
    int keep = 0;
    Sink sink = {.added = Py_None};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O|nOOp:backtrack", kwlist, &PyList_Type,
                                     &sink.path, &steps, &since, &prior, &sink.added, &keep))
        return NULL;
    if (sink.added != Py_None && !PyList_Check(sink.added)) {
        PyErr_SetString(PyExc_TypeError, "backtrack: added must be a list or None");
        return NULL;
    }
    RaceLog *log = find(steps, since, prior, keep, &sink);
    free(sink.seen.slots);
    if (!log)
        return NULL;
    if (keep)
        return (PyObject *)log;
    Py_DECREF(log);
    Py_RETURN_NONE;
}

/* A finished step's objects out of the cyclic collector's sight: the Step (node, footprint,
   end) and its Footprint (cpu, packed, and `added`, a list of ints) hold ints, bytes and
   each other only, so no cycle can go through them, and they are final (the footprint is off
   its CPU). The snapshot cache keeps tens of thousands of them (a snapshot's source holds
   its run's steps), which every collection scanned: a worker's slice ended with ~60,000 of
   them among the ~100,000 objects its first collection then scanned. An object of another
   form (an instance dict, an `added` that is not a list of ints) stays tracked. */
static void untrack_step(PyObject *step, PyObject *fp) {
    PyObject *added = PyObject_GetAttr(fp, s_added);
    if (!added) {
        PyErr_Clear();
        return;
    }
    int ints = PyList_CheckExact(added);
    for (Py_ssize_t k = 0; ints && k < PyList_GET_SIZE(added); k++)
        ints = PyLong_CheckExact(PyList_GET_ITEM(added, k));
    if (ints && !Py_TYPE(fp)->tp_dictoffset && !Py_TYPE(step)->tp_dictoffset) {
        PyObject *objs[] = {step, fp, added};
        for (int k = 0; k < 3; k++)
            if (PyObject_IS_GC(objs[k]) && PyObject_GC_IsTracked(objs[k]))
                PyObject_GC_UnTrack(objs[k]);
    }
    Py_DECREF(added);
}

/* step_done(log, cpu_kind, step_cls, footprint): ExhaustiveSource.step_done (its reference,
   in exhaustive.py) on its StepLog, for the fast engine: one call per scheduling step, made
   from the C loop. The step's CPU choice is the last of kind `cpu_kind` with a context among
   the choices made since the last step; the Step is made without a call of its __init__,
   and is not tracked by the cyclic collector (untrack_step). */
static PyObject *py_step_done(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "step_done(log, cpu_kind, step_cls, footprint)");
        return NULL;
    }
    PyObject *src = args[0], *cpu_kind = args[1], *fp = args[3];
    PyTypeObject *step_cls = (PyTypeObject *)args[2];
    if (!PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "step_done: step_cls must be a class");
        return NULL;
    }
    PyObject *choices = PyObject_GetAttr(src, s_choices);
    PyObject *stepped_obj = choices ? PyObject_GetAttr(src, s_stepped) : NULL;
    PyObject *steps = stepped_obj ? PyObject_GetAttr(src, s_steps) : NULL;
    PyObject *node = NULL, *end_obj = NULL, *step = NULL, *result = NULL;
    if (!steps)
        goto done;
    if (!PyList_Check(choices) || !PyList_Check(steps)) {
        PyErr_SetString(PyExc_TypeError, "step_done: the log's choices and steps are lists");
        goto done;
    }
    Py_ssize_t stepped = PyLong_AsSsize_t(stepped_obj);
    if (stepped == -1 && PyErr_Occurred())
        goto done;
    Py_ssize_t end = PyList_GET_SIZE(choices);
    for (Py_ssize_t k = end - 1; k >= stepped && !node; k--) {
        PyObject *c = PyList_GET_ITEM(choices, k);
        PyObject *kind = PyObject_GetAttr(c, s_kind);
        if (!kind)
            goto done;
        int is_cpu = kind == cpu_kind;
        Py_DECREF(kind);
        if (!is_cpu)
            continue;
        PyObject *req = PyObject_GetAttr(c, s_request);
        if (!req)
            goto done;
        PyObject *ctx = req == Py_None ? Py_NewRef(Py_None) : PyObject_GetAttr(req, s_context);
        Py_DECREF(req);
        if (!ctx)
            goto done;
        if (ctx != Py_None && !(node = PyLong_FromSsize_t(k))) {
            Py_DECREF(ctx);
            goto done;
        }
        Py_DECREF(ctx);
    }
    if (!(end_obj = PyLong_FromSsize_t(end)) || !(step = step_cls->tp_alloc(step_cls, 0)) ||
        PyObject_SetAttr(step, s_node, node ? node : Py_None) ||
        PyObject_SetAttr(step, s_footprint, fp) || PyObject_SetAttr(step, s_end, end_obj) ||
        PyList_Append(steps, step) || PyObject_SetAttr(src, s_stepped, end_obj))
        goto done;
    untrack_step(step, fp);
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(choices);
    Py_XDECREF(stepped_obj);
    Py_XDECREF(steps);
    Py_XDECREF(node);
    Py_XDECREF(end_obj);
    Py_XDECREF(step);
    return result;
}

/* nodes(node_cls, choices, start, known, entry, cpu_kind, reduce) -> [Node]
   taken_in's loop over a run's own choices (from `start`), in C: exhaustive.node_of of each,
   `todo` every value, or with `reduce` a CPU choice's own value only. `known` is node_of's
   {id(request): (request, simplest, runnable)}; `entry(request, known)` (exhaustive._entry)
   gives a request's entry and keeps it there. Each Node is made as its dataclass __init__
   would make it (its nine slots set in field order), without the call: a z1 run takes in
   ~1,900 choices. New reference, or NULL with an error. */
static PyObject *py_nodes(PyObject *mod, PyObject *args) {
    (void)mod;
    PyTypeObject *cls;
    PyObject *choices, *known, *entry, *cpu_kind;
    Py_ssize_t start;
    int reduce;
    if (!PyArg_ParseTuple(args, "O!O!nO!OOp", &PyType_Type, &cls, &PyList_Type, &choices,
                          &start, &PyDict_Type, &known, &entry, &cpu_kind, &reduce))
        return NULL;
    Py_ssize_t end = PyList_GET_SIZE(choices);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t k = start < 0 ? 0 : start; out && k < end; k++) {
        PyObject *c = PyList_GET_ITEM(choices, k);
        PyObject *kind = PyObject_GetAttr(c, s_kind), *arity = PyObject_GetAttr(c, s_arity),
                 *value = PyObject_GetAttr(c, s_value), *req = PyObject_GetAttr(c, s_request),
                 *key = NULL, *got = NULL, *todo = NULL, *done = NULL, *node = NULL;
        if (!kind || !arity || !value || !req || !(key = PyLong_FromVoidPtr(req)))
            goto fail;
        got = PyDict_GetItemWithError(known, key);
        if (got)
            Py_INCREF(got);
        else if (PyErr_Occurred() || !(got = PyObject_CallFunctionObjArgs(entry, req, known,
                                                                           NULL)))
            goto fail;
        if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 3) {
            PyErr_SetString(PyExc_TypeError, "nodes: an entry is (request, simplest, runnable)");
            goto fail;
        }
        if (!(done = PySet_New(NULL)) || PySet_Add(done, value) || !(todo = PySet_New(NULL)))
            goto fail;
        if (!reduce || kind != cpu_kind) {
            long n = PyLong_AsLong(arity);
            if (n == -1 && PyErr_Occurred())
                goto fail;
            for (long v = 0; v < n; v++) {
                PyObject *x = PyLong_FromLong(v);
                int rc = x ? PySet_Add(todo, x) : -1;
                Py_XDECREF(x);
                if (rc)
                    goto fail;
            }
        } else if (PySet_Add(todo, value))
            goto fail;
        PyObject *fields[] = {kind, arity, value, PyTuple_GET_ITEM(got, 1),
                              PyTuple_GET_ITEM(got, 2), todo, done, Py_None, req};
        if (!(node = cls->tp_alloc(cls, 0)))
            goto fail;
        for (int f = 0; f < NODE_FIELDS; f++)
            if (PyObject_GenericSetAttr(node, node_fields[f], fields[f]))
                goto fail;
        if (PyList_Append(out, node))
            goto fail;
        goto next;
    fail:
        Py_CLEAR(out);
    next:
        Py_XDECREF(kind);
        Py_XDECREF(arity);
        Py_XDECREF(value);
        Py_XDECREF(req);
        Py_XDECREF(key);
        Py_XDECREF(got);
        Py_XDECREF(todo);
        Py_XDECREF(done);
        Py_XDECREF(node);
    }
    return out;
}

/* NODE_FIELDS: exhaustive.Node's fields in the order `nodes` sets them (exhaustive.py
   checks them against the dataclass before it lets C make nodes). */
static PyObject *node_field_names(void) {
    PyObject *t = PyTuple_New(NODE_FIELDS);
    for (int f = 0; t && f < NODE_FIELDS; f++)
        PyTuple_SET_ITEM(t, f, Py_NewRef(node_fields[f]));
    return t;
}

/* same_requests(prefix, choices, start) -> k: taken_in's walk over the choices a run shares
   with its search's prefix, in C: the first k >= start, below both lengths, where the run's
   choice answered another request than the prefix's node (`request`), else the shorter
   length. A run repeats ~300 choices of its prefix and almost all are the same request
   object; taken_in looks at those that are not. */
static PyObject *py_same_requests(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *prefix, *choices;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyList_Type, &prefix, &PyList_Type, &choices, &k))
        return NULL;
    if (k < 0)
        k = 0;
    for (; k < PyList_GET_SIZE(prefix) && k < PyList_GET_SIZE(choices); k++) {
        PyObject *a = PyObject_GetAttr(PyList_GET_ITEM(prefix, k), s_request);
        if (!a)
            return NULL;
        PyObject *b = PyObject_GetAttr(PyList_GET_ITEM(choices, k), s_request);
        int same = a == b; /* identity: the same request object makes the same choice */
        Py_DECREF(a);
        if (!b)
            return NULL;
        Py_DECREF(b);
        if (!same)
            break;
    }
    return PyLong_FromSsize_t(k);
}

static PyMethodDef methods[] = {
    {"nodes", py_nodes, METH_VARARGS, "taken_in's nodes of a run's own choices, in C"},
    {"same_requests", py_same_requests, METH_VARARGS,
     "taken_in's walk over the choices a run shares with its prefix, in C"},
    {"step_done", (PyCFunction)(void (*)(void))py_step_done, METH_FASTCALL,
     "ExhaustiveSource.step_done, in C"},
    {"races", (PyCFunction)(void (*)(void))py_races, METH_VARARGS | METH_KEYWORDS,
     "dpor.races: the races of a run's steps (from a prior run's RaceLog, and keeping one)"},
    {"backtrack", (PyCFunction)(void (*)(void))py_backtrack, METH_VARARGS | METH_KEYWORDS,
     "exhaustive.backtrack: what a run's races ask of its path, applied there, in C"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "harness.explore._dpor",
                                    "The exhaustive search's race finder and step recorder "
                                    "in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__dpor(void) {
    if (!(s_footprint = PyUnicode_InternFromString("footprint")) ||
        !(s_cpu = PyUnicode_InternFromString("cpu")) ||
        !(s_packed = PyUnicode_InternFromString("packed")) ||
        !(s_added = PyUnicode_InternFromString("added")) ||
        !(s_choices = PyUnicode_InternFromString("choices")) ||
        !(s_stepped = PyUnicode_InternFromString("stepped")) ||
        !(s_steps = PyUnicode_InternFromString("steps")) ||
        !(s_kind = PyUnicode_InternFromString("kind")) ||
        !(s_request = PyUnicode_InternFromString("request")) ||
        !(s_context = PyUnicode_InternFromString("context")) ||
        !(s_node = PyUnicode_InternFromString("node")) ||
        !(s_end = PyUnicode_InternFromString("end")) ||
        !(s_arity = PyUnicode_InternFromString("arity")) ||
        !(s_value = PyUnicode_InternFromString("value")) ||
        !(s_origin = PyUnicode_InternFromString("origin")) ||
        !(s_runnable = PyUnicode_InternFromString("runnable")) ||
        !(s_todo = PyUnicode_InternFromString("todo")))
        return NULL;
    for (int f = 0; f < NODE_FIELDS; f++)
        if (!(node_fields[f] = PyUnicode_InternFromString(NODE_FIELD_NAMES[f])))
            return NULL;
    if (PyType_Ready(&RaceLogType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddObjectRef(m, "RaceLog", (PyObject *)&RaceLogType) < 0)
        Py_CLEAR(m);
    if (m && PyModule_AddObject(m, "NODE_FIELDS", node_field_names()) < 0)
        Py_CLEAR(m);
    if (m && PyModule_AddStringConstant(m, "SOURCE_DIGEST", TEXTPOKE_SOURCE_DIGEST) < 0)
        Py_CLEAR(m);
    return m;
}
