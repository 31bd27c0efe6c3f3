/* tb_opts.h - parsing of option values shared by the tools.
 * Each returns TB_OK or TB_EUSAGE with a message naming the option. */
#ifndef TB_OPTS_H
#define TB_OPTS_H

#include <stdint.h>

int tb_parse_long(const char *opt, const char *s, long min, long max, long *out);
int tb_parse_int(const char *opt, const char *s, int min, int max, int *out);
int tb_parse_double(const char *opt, const char *s, double min, double max, double *out);
/* "N:M" with 1 <= N < M <= max_m */
int tb_parse_nm(const char *opt, const char *s, int max_m, int *n, int *m);

/* The command line as one string ("tb-nm -s x --pattern 2:4"), recorded in
 * output metadata so every file says how it was made. Caller frees. */
char *tb_join_args(int argc, char **argv);

#endif
