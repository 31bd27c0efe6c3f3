/* st_fixture - write a safetensors file with one tensor of every dtype, for
 * the interop test (tests/py/st_interop.py reads it with the official Python
 * package and checks every byte against the same pattern).
 *
 * usage: st_fixture OUT|-     (tensors "t.<DTYPE>", shape [3, 5], byte k of
 * tensor number i is (k * 131 + i * 17 + 7) mod 256; metadata {"fixture": "1"}) */
#include <stdio.h>
#include <stdlib.h>

#include "tb_log.h"
#include "tb_safetensors.h"

int main(int argc, char **argv)
{
    tb_log_init("st_fixture");
    if (argc != 2) return tb_usage_error("usage: st_fixture OUT|-");
    st_entry e[TB_DTYPE_COUNT];
    char names[TB_DTYPE_COUNT][32];
    unsigned char *bufs[TB_DTYPE_COUNT];
    for (int i = 0; i < TB_DTYPE_COUNT; i++) {
        size_t n = 15 * tb_dtype_size((tb_dtype)i);
        bufs[i] = malloc(n);
        for (size_t k = 0; k < n; k++) bufs[i][k] = (unsigned char)((k * 131 + (size_t)i * 17 + 7) & 0xff);
        if (i == TB_BOOL)
            for (size_t k = 0; k < n; k++) bufs[i][k] &= 1; /* BOOL bytes must be 0 or 1 */
        snprintf(names[i], sizeof names[i], "t.%s", tb_dtype_name((tb_dtype)i));
        e[i] = (st_entry){names[i], (tb_dtype)i, 2, {3, 5}, bufs[i]};
    }
    const char *meta[] = {"fixture", "1"};
    int rc = st_save(argv[1], e, TB_DTYPE_COUNT, meta, 1);
    for (int i = 0; i < TB_DTYPE_COUNT; i++) free(bufs[i]);
    return rc ? tb_report_error() : 0;
}
