/* A CPU's text pages as Unicorn fetches them (the fast engine's in event mode; the reference
   CPU, and the fast one in quantum mode, fetch from the view and drop translations instead:
   NativeCpu.fetch_from_pages has why).

   Why. Unicorn keeps a translation of guest code keyed by the physical page its bytes came
   from, and the harness had to drop it (UC_CTL_TB_REMOVE_CACHE) whenever the CPU's view of
   those bytes changed: a poke made visible, a snapshot restored, the next run after a reset.
   An exhaustive search changes views constantly but among few contents: 5,000 schedules of
   the static_key search translated 161,635 blocks (34 a schedule, ~13 us each with the code
   hook), of only 61 view contents and 500 distinct (contents, address) blocks. So each text
   page is fetched not from the view but from a slot of a pool, one slot per (page, contents)
   seen: a page whose view bytes changed is mapped to the slot holding the new bytes (made the
   first time they are seen), and the slot it left keeps its translations for the next time
   the page holds those bytes again.

   The rules that keep translations true:
   - a slot's bytes never change while the pool holds them (filled once, before any fetch);
   - a page is looked up by its exact bytes (a hash finds candidates, memcmp decides);
   - remapping a page flushes the CPU's TLB, which also clears Unicorn's jump cache (keyed by
     the virtual PC alone); a lookup then finds the block by its physical page;
   - a full pool is emptied only together with every translation (UC_CTL_TB_FLUSH).
   The view stays the truth: every change to it is marked (fetch_pages_mark, where the
   reference engine drops translations) and synced before the next run. */
#include "fetch_pages.h"

#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

struct FetchPages {
    uint8_t *pool;
    uint32_t nslots, used, npages;
    uint32_t *page_slot;  /* per page: the slot it is fetched from, NONE before a sync */
    uint8_t *is_marked;   /* per page */
    uint32_t *marked;     /* the marked pages, each once */
    uint32_t nmarked;
    uint32_t *slot_page;  /* per slot: its page */
    uint64_t *slot_hash;  /* per slot: its bytes' hash */
    uint32_t *table;      /* open addressing: slot + 1, 0 empty; a power of two >= 2 * nslots */
    uint32_t table_mask;
    FetchPagesStats stats;
};

static uint64_t page_hash(uint32_t page, const uint8_t *bytes) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ page;
    for (uint32_t i = 0; i < FETCH_PAGE; i += 8) {
        uint64_t w;
        memcpy(&w, bytes + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
    }
    return h;
}

static void mark_all(FetchPages *f) {
    f->nmarked = 0;
    for (uint32_t p = 0; p < f->npages; p++) {
        f->is_marked[p] = 1;
        f->marked[f->nmarked++] = p;
    }
}

FetchPages *fetch_pages_new(uint8_t *pool, uint32_t nslots, uint32_t npages) {
    if (!pool || !npages || nslots <= npages || nslots > (UINT32_MAX >> 2))
        return NULL;
    FetchPages *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    uint32_t size = 1;
    while (size < 2 * nslots)
        size <<= 1;
    f->pool = pool;
    f->nslots = nslots;
    f->npages = npages;
    f->table_mask = size - 1;
    f->page_slot = malloc(npages * sizeof *f->page_slot);
    f->is_marked = calloc(npages, 1);
    f->marked = malloc(npages * sizeof *f->marked);
    f->slot_page = malloc(nslots * sizeof *f->slot_page);
    f->slot_hash = malloc(nslots * sizeof *f->slot_hash);
    f->table = calloc(size, sizeof *f->table);
    if (!f->page_slot || !f->is_marked || !f->marked || !f->slot_page || !f->slot_hash ||
        !f->table) {
        fetch_pages_free(f);
        return NULL;
    }
    for (uint32_t p = 0; p < npages; p++)
        f->page_slot[p] = NONE;
    mark_all(f);
    return f;
}

void fetch_pages_free(FetchPages *f) {
    if (!f)
        return;
    free(f->page_slot);
    free(f->is_marked);
    free(f->marked);
    free(f->slot_page);
    free(f->slot_hash);
    free(f->table);
    free(f);
}

void fetch_pages_mark(FetchPages *f, uint64_t start, uint64_t end) {
    if (end <= start)
        return;
    uint64_t last = (end - 1) / FETCH_PAGE;
    for (uint64_t p = start / FETCH_PAGE; p <= last && p < f->npages; p++)
        if (!f->is_marked[p]) {
            f->is_marked[p] = 1;
            f->marked[f->nmarked++] = (uint32_t)p;
        }
}

/* The slot holding `bytes` for `page`, made if none does; NONE when the pool is full. */
static uint32_t intern(FetchPages *f, uint32_t page, const uint8_t *bytes) {
    uint64_t h = page_hash(page, bytes);
    uint32_t i = (uint32_t)(h ^ (h >> 32)) & f->table_mask;
    for (; f->table[i]; i = (i + 1) & f->table_mask) {
        uint32_t s = f->table[i] - 1;
        if (f->slot_hash[s] == h && f->slot_page[s] == page &&
            !memcmp(f->pool + (uint64_t)s * FETCH_PAGE, bytes, FETCH_PAGE))
            return s;
    }
    if (f->used == f->nslots)
        return NONE;
    uint32_t s = f->used++;
    memcpy(f->pool + (uint64_t)s * FETCH_PAGE, bytes, FETCH_PAGE);
    f->slot_page[s] = page;
    f->slot_hash[s] = h;
    f->table[i] = s + 1;
    f->stats.made++;
    return s;
}

enum fetch_sync fetch_pages_sync(FetchPages *f, const uint8_t *view) {
    if (!f->nmarked)
        return FETCH_SAME;
    f->stats.syncs++;
    enum fetch_sync out = FETCH_SAME;
    for (uint32_t k = 0; k < f->nmarked; k++) {
        uint32_t p = f->marked[k];
        const uint8_t *bytes = view + (uint64_t)p * FETCH_PAGE;
        uint32_t cur = f->page_slot[p];
        if (cur != NONE && !memcmp(f->pool + (uint64_t)cur * FETCH_PAGE, bytes, FETCH_PAGE))
            continue;
        uint32_t s = intern(f, p, bytes);
        if (s == NONE) { /* full: emptied, and every page interned again from the view */
            memset(f->table, 0, (f->table_mask + 1) * sizeof *f->table);
            f->used = 0;
            for (uint32_t q = 0; q < f->npages; q++)
                f->page_slot[q] = NONE;
            mark_all(f);
            f->stats.emptied++;
            out = FETCH_EMPTIED;
            k = (uint32_t)-1; /* (nslots > npages: every page fits) */
            continue;
        }
        f->page_slot[p] = s;
        f->stats.switches++;
        if (out == FETCH_SAME)
            out = FETCH_REMAPPED;
    }
    for (uint32_t k = 0; k < f->nmarked; k++)
        f->is_marked[f->marked[k]] = 0;
    f->nmarked = 0;
    return out;
}

uint64_t fetch_pages_where(const FetchPages *f, uint64_t off) {
    uint32_t s = off / FETCH_PAGE < f->npages ? f->page_slot[off / FETCH_PAGE] : NONE;
    return s == NONE ? UINT64_MAX : (uint64_t)s * FETCH_PAGE + off % FETCH_PAGE;
}

FetchPagesStats fetch_pages_stats(const FetchPages *f) {
    FetchPagesStats s = f->stats;
    s.slots = f->nslots;
    s.used = f->used;
    return s;
}
