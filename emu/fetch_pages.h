/* A CPU's text pages as Unicorn fetches them: each page from a slot of a pool that holds one
   (page, contents) each, so that translations outlive the view changes they used to be
   dropped for (emu/fetch_pages.c has why). Pure C, no Python: emu/_native.c owns one per CPU
   and makes the uc_ctl calls a sync asks for. */
#ifndef TEXTPOKE_FETCH_PAGES_H
#define TEXTPOKE_FETCH_PAGES_H

#include <stdint.h>

#define FETCH_PAGE 4096u

typedef struct FetchPages FetchPages;

typedef struct {
    uint32_t slots, used;   /* the pool's size, and the slots holding contents */
    uint64_t syncs;         /* fetch_pages_sync calls that found a page marked */
    uint64_t switches;      /* pages that changed slot */
    uint64_t made;          /* slots filled with contents not in the pool */
    uint64_t emptied;       /* times the pool was full and emptied */
} FetchPagesStats;

enum fetch_sync {
    FETCH_SAME = 0,     /* every page fetches from where it did */
    FETCH_REMAPPED = 1, /* a page fetches from another slot: flush the TLB */
    FETCH_EMPTIED = 2,  /* the pool was emptied: flush the translations, then the TLB */
};

/* `pool`: nslots pages of host memory, mapped into Unicorn; nslots > npages. NULL when out of
   memory or the sizes are wrong. Every page starts marked, with no slot. */
FetchPages *fetch_pages_new(uint8_t *pool, uint32_t nslots, uint32_t npages);
void fetch_pages_free(FetchPages *f);
/* The view's bytes in [start, end) (text offsets) may have changed. */
void fetch_pages_mark(FetchPages *f, uint64_t start, uint64_t end);
/* Before a run: each marked page of `view` (npages * FETCH_PAGE bytes) given the slot that
   holds its contents; what the caller must flush for it. */
enum fetch_sync fetch_pages_sync(FetchPages *f, const uint8_t *view);
/* The pool offset of text offset `off`; UINT64_MAX outside the text or before a sync. */
uint64_t fetch_pages_where(const FetchPages *f, uint64_t off);
FetchPagesStats fetch_pages_stats(const FetchPages *f);

#endif
