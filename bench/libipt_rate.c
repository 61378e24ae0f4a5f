/* libipt 2.0.5's own decoding speed, in C, for bench/decode.py: the pt_insn or pt_blk decoder
 * over one PT stream with a static image (the text from a file, pt_image_add_file), decoding
 * until the end of the stream or its first error, `rounds` times. Prints
 * "<instructions> <seconds of the fastest round> <last status>".
 * No header is needed (Debian's libipt2 has none): the prototypes are intel-pt.h's, and the
 * structures are opaque buffers of their 2.0.5 sizes (harness/trace/libipt.py has the same
 * numbers). Built and run by bench/decode.py; not part of the package. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CONFIG_SIZE = 280, INSN_SIZE = 40, BLOCK_SIZE = 48, EVENT_SIZE = 64 };
enum { PTS_EVENT_PENDING = 1 << 0, PTS_EOS = 1 << 2, PTE_EOS = 7 };

void *pt_image_alloc(const char *name);
int pt_image_add_file(void *image, const char *file, uint64_t off, uint64_t size,
                      const void *asid, uint64_t vaddr);
void *pt_insn_alloc_decoder(const void *config);
void pt_insn_free_decoder(void *dec);
int pt_insn_set_image(void *dec, void *image);
int pt_insn_sync_forward(void *dec);
int pt_insn_next(void *dec, void *insn, size_t size);
int pt_insn_event(void *dec, void *event, size_t size);
void *pt_blk_alloc_decoder(const void *config);
void pt_blk_free_decoder(void *dec);
int pt_blk_set_image(void *dec, void *image);
int pt_blk_sync_forward(void *dec);
int pt_blk_next(void *dec, void *block, size_t size);
int pt_blk_event(void *dec, void *event, size_t size);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s insn|blk STREAM TEXT TEXT_SIZE VADDR ROUNDS\n", argv[0]);
        return 2;
    }
    int blk = strcmp(argv[1], "blk") == 0;
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 2; }
    static uint8_t stream[1 << 24];
    size_t len = fread(stream, 1, sizeof stream, f);
    fclose(f);
    uint64_t text_size = strtoull(argv[4], 0, 0), vaddr = strtoull(argv[5], 0, 0);
    int rounds = atoi(argv[6]);
    void *image = pt_image_alloc("text");
    if (pt_image_add_file(image, argv[3], 0, text_size, NULL, vaddr) < 0) {
        fprintf(stderr, "pt_image_add_file failed\n");
        return 2;
    }
    uint8_t config[CONFIG_SIZE] = {0}, item[BLOCK_SIZE], event[EVENT_SIZE];
    uint8_t *begin = stream, *end = stream + len;
    size_t size = CONFIG_SIZE;
    memcpy(config, &size, 8);
    memcpy(config + 8, &begin, 8);
    memcpy(config + 16, &end, 8);
    double best = 1e30;
    long count = 0;
    int status = 0;
    for (int r = 0; r < rounds; r++) {
        double t = now();
        void *dec = blk ? pt_blk_alloc_decoder(config) : pt_insn_alloc_decoder(config);
        blk ? pt_blk_set_image(dec, image) : pt_insn_set_image(dec, image);
        status = blk ? pt_blk_sync_forward(dec) : pt_insn_sync_forward(dec);
        count = 0;
        for (;;) {
            if (status < 0)
                break;
            while (status & PTS_EVENT_PENDING) {
                status = blk ? pt_blk_event(dec, event, EVENT_SIZE)
                             : pt_insn_event(dec, event, EVENT_SIZE);
                if (status < 0)
                    break;
            }
            if (status < 0 || (status & PTS_EOS))
                break;
            status = blk ? pt_blk_next(dec, item, BLOCK_SIZE) : pt_insn_next(dec, item, INSN_SIZE);
            if (status < 0)
                break;
            if (blk) {
                uint16_t ninsn;
                memcpy(&ninsn, item + 28, 2);
                count += ninsn;
            } else {
                count++;
            }
        }
        blk ? pt_blk_free_decoder(dec) : pt_insn_free_decoder(dec);
        t = now() - t;
        if (t < best)
            best = t;
    }
    printf("%ld %.9f %d\n", count, best, status);
    return 0;
}
