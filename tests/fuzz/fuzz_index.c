/* fuzz_index.c - the sharded checkpoint index (model.safetensors.index.json
 * read by tb_ckpt_open): the input is written as the index of a scratch
 * directory that holds two valid shards (made at start-up with st_save), a
 * symlink to /dev/zero and a FIFO, so names that escape the directory or are
 * not regular files are reachable. Seeds: corpus/index. */
#include "fuzz_util.h"
#include "tb_safetensors.h"

#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = fuzz_dir();
    char p[512];
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    st_entry e1[2] = {{"model.embed_tokens.weight", TB_F32, 2, {2, 2}, a}, {"model.norm.weight", TB_F32, 1, {2}, b}};
    st_entry e2[1] = {{"lm_head.weight", TB_F32, 2, {1, 2}, b}};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    if (st_save(p, e1, 2, NULL, 0)) abort();
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    if (st_save(p, e2, 1, NULL, 0)) abort();
    snprintf(p, sizeof p, "%s/zero.safetensors", dir);
    if (symlink("/dev/zero", p)) abort();
    snprintf(p, sizeof p, "%s/fifo.safetensors", dir);
    if (mkfifo(p, 0600)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write("model.safetensors.index.json", data, size);
    tb_ckpt c;
    if (tb_ckpt_open(&c, fuzz_dir()) == TB_OK) {
        for (int s = 0; s < c.n_shards; s++)
            for (int i = 0; i < c.shards[s].n_tensors; i++)
                if (!tb_ckpt_find(&c, c.shards[s].tensors[i].name)) abort();
        char hex[65];
        tb_ckpt_sha256(&c, hex);
        tb_ckpt_close(&c);
    }
    fuzz_check_errmsg();
    return 0;
}
