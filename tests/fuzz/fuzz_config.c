/* fuzz_config.c - config.json (tb_config_parse) and the parameter count of
 * whatever it accepts (tb_config_param_count). Seeds: the shipped configs. */
#include "fuzz_util.h"
#include "tb_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = (char *)fuzz_dup(data, size);
    tb_config c;
    if (tb_config_parse(&c, "config.json", text) == TB_OK) {
        long long n = tb_config_param_count(&c);
        if (n <= 0) abort(); /* an accepted config has a positive, representable count */
    }
    fuzz_check_errmsg();
    free(text);
    return 0;
}
