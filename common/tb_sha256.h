/* tb_sha256.h - SHA-256 (FIPS 180-4), for model and shard checksums. */
#ifndef TB_SHA256_H
#define TB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t block[64];
    size_t fill;
} tb_sha256;

void tb_sha256_init(tb_sha256 *s);
void tb_sha256_update(tb_sha256 *s, const void *data, size_t n);
void tb_sha256_final(tb_sha256 *s, uint8_t digest[32]);
/* Whether the CPU's SHA instructions may be used (allow 1, the default) or
 * the portable code must be (0, for tests comparing the two); returns 1 if
 * the accelerated path is now in use. Not thread-safe: call before hashing. */
int tb_sha256_accelerated(int allow);
/* digest as 64 lowercase hex characters + NUL */
void tb_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
