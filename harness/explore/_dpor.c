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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CPUS 64

/* the attribute names read per step, interned once (PyInit__dpor) */
static PyObject *s_footprint, *s_cpu, *s_packed, *s_added;

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

static int add_loc(Steps *st, Py_ssize_t id, uint8_t flag) {
    if (st->nlocs == st->caplocs) {
        Py_ssize_t cap = st->caplocs ? 2 * st->caplocs : 4096;
        Py_ssize_t *l = realloc(st->ids, cap * sizeof *l);
        if (!l)
            return -1;
        st->ids = l;
        uint8_t *f = realloc(st->flags, cap);
        if (!f)
            return -1;
        st->flags = f;
        st->caplocs = cap;
    }
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

/* dpor._initials: the CPUs that can start the reversal of (i, j), in dpor.py's order. */
static PyObject *initials(const Steps *st, Py_ssize_t *const *clocks, Py_ssize_t i,
                          Py_ssize_t j, int ncpus) {
    int ci = st->steps[i].cpu;
    Py_ssize_t first[MAX_CPUS];
    for (int c = 0; c < ncpus; c++)
        first[c] = -1;
    for (Py_ssize_t k = i + 1; k <= j; k++)
        if (k == j || clocks[k][ci] < i) {
            int c = st->steps[k].cpu;
            if (first[c] < 0)
                first[c] = k;
        }
    int initial[MAX_CPUS], n = 0;
    for (int c = 0; c < ncpus; c++) {
        if (first[c] < 0)
            continue;
        int beaten = 0;
        for (int d = 0; d < ncpus && !beaten; d++)
            if (d != c && first[d] >= 0 && first[d] <= clocks[first[c]][d])
                beaten = 1;
        if (!beaten)
            initial[n++] = c;
    }
    /* sorted by (c is not j's CPU, first[c] > clocks[j][c], c) */
    int jc = st->steps[j].cpu;
    for (int a = 1; a < n; a++) {
        int x = initial[a], b = a - 1;
        int kx0 = x != jc, kx1 = first[x] > clocks[j][x];
        while (b >= 0) {
            int y = initial[b];
            int ky0 = y != jc, ky1 = first[y] > clocks[j][y];
            if (ky0 < kx0 || (ky0 == kx0 && (ky1 < kx1 || (ky1 == kx1 && y < x))))
                break;
            initial[b + 1] = y;
            b--;
        }
        initial[b + 1] = x;
    }
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

/* races(steps, since=0) -> [(i, j, cpus)]: dpor.races for a list of dpor.Step. */
static PyObject *py_races(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *arg;
    Py_ssize_t since = 0;
    if (!PyArg_ParseTuple(args, "O|n:races", &arg, &since))
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "races: a list of steps");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Steps st = {0};
    Table t = {0};
    Py_ssize_t **clocks = NULL, *pool = NULL, *preds = NULL, *clock_of = NULL;
    Py_ssize_t *last_write = NULL, *last_reads = NULL;
    PyObject *out = NULL;
    st.steps = calloc(n ? n : 1, sizeof(StepFp));
    if (!st.steps) {
        PyErr_NoMemory();
        goto done;
    }
    int ncpus = 1;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *fp = PyObject_GetAttr(PySequence_Fast_GET_ITEM(seq, j), s_footprint);
        if (!fp)
            goto done;
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
        if (!bad) {
            st.steps[j].cpu = (int)c;
            st.steps[j].start = st.nlocs;
            bad = add_footprint(&st, &t, j, packed, added);
            st.steps[j].n = st.nlocs - st.steps[j].start;
            if (c + 1 > ncpus)
                ncpus = (int)c + 1;
        }
        Py_XDECREF(cpu);
        Py_XDECREF(packed);
        Py_XDECREF(added);
        if (bad)
            goto done;
    }
    st.nsteps = n;
    /* per location id: the last step that wrote it (-1: none), and per CPU its last read
       since (-1: none), ncpus to an id (dpor.py's `last_write` and `reads`) */
    size_t nids = t.len ? t.len : 1;
    last_write = malloc(nids * sizeof *last_write);
    last_reads = malloc(nids * ncpus * sizeof *last_reads);
    if (!last_write || !last_reads) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t k = 0; k < nids; k++)
        last_write[k] = -1;
    for (size_t k = 0; k < nids * ncpus; k++)
        last_reads[k] = -1;
    /* clocks[j]: step j's vector clock; clock_of[c]: the index of CPU c's current one in
       `clocks` (-1: the initial all -1 one, `pool` row n) */
    clocks = malloc((n + 1) * sizeof *clocks);
    pool = malloc((size_t)(n + 1) * ncpus * sizeof *pool);
    preds = malloc((st.nlocs * ncpus + 1) * sizeof *preds);
    clock_of = malloc(ncpus * sizeof *clock_of);
    out = PyList_New(0);
    if (!clocks || !pool || !preds || !clock_of || !out) {
        if (out)
            Py_CLEAR(out);
        PyErr_NoMemory();
        goto done;
    }
    clocks[n] = pool + (size_t)n * ncpus;
    for (int c = 0; c < ncpus; c++) {
        clocks[n][c] = -1;
        clock_of[c] = n;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        int c = st.steps[j].cpu;
        const Py_ssize_t *before = clocks[clock_of[c]];
        Py_ssize_t np = 0;
        const Py_ssize_t *ids = st.ids + st.steps[j].start;
        const uint8_t *flags = st.flags + st.steps[j].start;
        for (Py_ssize_t k = 0; k < st.steps[j].n; k++) {
            Py_ssize_t w = last_write[ids[k]];
            if (w >= 0 && st.steps[w].cpu != c)
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
        Py_ssize_t *vc = clocks[j] = pool + (size_t)j * ncpus;
        memcpy(vc, before, ncpus * sizeof *vc);
        for (Py_ssize_t k = 0; k < np; k++)
            for (int d = 0; d < ncpus; d++)
                if (clocks[preds[k]][d] > vc[d])
                    vc[d] = clocks[preds[k]][d];
        vc[c] = j;
        for (Py_ssize_t k = 0; j >= since && k < np; k++) {
            Py_ssize_t i = preds[k];
            if (i > before[st.steps[i].cpu]) { /* not ordered before j by anything else */
                PyObject *lead = initials(&st, clocks, i, j, ncpus);
                PyObject *race = lead ? Py_BuildValue("nnN", i, j, lead) : NULL;
                if (!race || PyList_Append(out, race)) {
                    Py_XDECREF(race);
                    Py_CLEAR(out);
                    goto done;
                }
                Py_DECREF(race);
            }
        }
        clock_of[c] = j;
        for (Py_ssize_t k = 0; k < st.steps[j].n; k++) {
            Py_ssize_t *r = last_reads + ids[k] * ncpus;
            if (flags[k] & F_WRITE) {
                last_write[ids[k]] = j;
                for (int d = 0; d < ncpus; d++) /* reads.pop(loc) */
                    r[d] = -1;
            } else { /* read, not written */
                r[c] = j;
            }
        }
    }
done:
    Py_DECREF(seq);
    steps_free(&st);
    free(t.slots);
    free(last_write);
    free(last_reads);
    free(clocks);
    free(pool);
    free(preds);
    free(clock_of);
    return out;
}

static PyMethodDef methods[] = {
    {"races", py_races, METH_VARARGS, "dpor.races: the races of a run's steps"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "harness.explore._dpor",
                                    "The exhaustive search's race finder in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__dpor(void) {
    if (!(s_footprint = PyUnicode_InternFromString("footprint")) ||
        !(s_cpu = PyUnicode_InternFromString("cpu")) ||
        !(s_packed = PyUnicode_InternFromString("packed")) ||
        !(s_added = PyUnicode_InternFromString("added")))
        return NULL;
    return PyModule_Create(&module);
}
