/* fuzz_tbm.c - the .tbm model index (tb_tbm_open with checksum verification):
 * the input is written as DIR/model.tbm beside a valid shard "layers.tb" (a
 * copy of tests/fuzz/layers.tb), a symlink to /dev/zero, a FIFO and a
 * subdirectory, so file, base and shard names that escape the directory or are
 * not regular files are reachable. Every tensor an accepted index names is
 * looked up. Seeds: corpus/tbm (tb-merge outputs, partial and whole). */
#include "fuzz_util.h"
#include "tb_tbm.h"

#include <cjson/cJSON.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = fuzz_dir();
    char p[512];
    /* tests/fuzz/layers.tb (mkseeds.py): the shard the seeds index, byte for byte */
    const char *src = getenv("TB_FUZZ_SHARD") ? getenv("TB_FUZZ_SHARD") : "tests/fuzz/layers.tb";
    tb_mapped m;
    if (tb_map_file(src, &m)) { fprintf(stderr, "fuzz_tbm: %s\n", tb_errmsg()); abort(); }
    fuzz_write("layers.tb", m.data, m.size);
    tb_unmap(&m);
    snprintf(p, sizeof p, "%s/zero.tb", dir);
    if (symlink("/dev/zero", p)) abort();
    snprintf(p, sizeof p, "%s/fifo.tb", dir);
    if (mkfifo(p, 0600)) abort();
    snprintf(p, sizeof p, "%s/sub", dir);
    if (mkdir(p, 0700)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("model.tbm", data, size);
    tb_tbm t;
    if (tb_tbm_open(&t, path, 1) == TB_OK) {
        const cJSON *tensors = cJSON_GetObjectItemCaseSensitive((const cJSON *)t.json, "tensors");
        for (const cJSON *e = tensors ? tensors->child : NULL; e; e = e->next) {
            tb_tbm_find_dense(&t, e->string);
            tb_tbm_find_packed(&t, e->string);
        }
        if (t.base) { /* confinement: inside DIR or refused (nothing is allowed here) */
            tb_ckpt c;
            if (tb_tbm_open_base(&t, &c) == TB_OK) tb_ckpt_close(&c);
            tb_err_clear();
        }
        tb_tbm_close(&t);
    }
    fuzz_check_errmsg();
    return 0;
}
