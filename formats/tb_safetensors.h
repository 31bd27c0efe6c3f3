/* tb_safetensors.h - safetensors reader (mmap, validating) and streaming writer.
 *
 * Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header
 * length N, N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets:[b,e]},
 * "__metadata__": {str: str}}, then the data section; offsets are relative to
 * the data section.
 *
 * Reader: st_open() maps the file (or reads stdin for "-") and validates it
 * fully before returning: header bound, UTF-8, JSON, dtypes, dtype x shape =
 * byte length, offsets in bounds, contiguous and non-overlapping, no duplicate
 * names, metadata a string map. Errors are TB_EDATA "path: what is wrong"
 * (or TB_EIO for I/O). Tensor data pointers point into the mapping and live
 * until st_close().
 *
 * Writer: declare every tensor first (st_writer_add), then st_writer_begin()
 * writes the header and st_writer_write() streams the data tensor by tensor in
 * declaration order; nothing needs to be held in memory, so stdout works.
 *
 * Checkpoint: a directory with model.safetensors or a sharded checkpoint with
 * model.safetensors.index.json, seen as one set of tensors (tb_ckpt_*).
 */
#ifndef TB_SAFETENSORS_H
#define TB_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>

#include "tb_dtype.h"
#include "tb_io.h"

#define ST_MAX_DIMS TB_MAX_DIMS
#define ST_MAX_HEADER (100u << 20) /* 100 MB, the reference implementation's bound */

typedef struct {
    char *name;
    tb_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end;  /* byte offsets within the data section */
    const void *data;     /* into the mapping; nbytes = end - begin */
    size_t nbytes;
} st_tensor;

typedef struct {
    char *path;
    tb_mapped map;
    st_tensor *tensors;   /* in data-offset order */
    int n_tensors;
    int *by_name;         /* indices of tensors sorted by name */
    char **meta_keys, **meta_vals;
    int n_meta;
    uint64_t header_size;
} st_file;

int st_open(st_file *f, const char *path);
/* The tensor as a typed array (a view: no copy) for the kernels. */
tb_array st_array(const st_tensor *t);
/* Parse and validate a buffer already in memory; takes ownership of `map`
 * (it is released by st_close or on failure). `label` names it in errors. */
int st_open_mapped(st_file *f, const char *label, tb_mapped map);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key);

/* Convert a whole tensor to a new f32 array (caller frees). */
float *st_tensor_f32(const st_tensor *t);

/* Convert to a new f32 array, refusing NaN and infinities: TB_EDATA "tensor
 * 'x': element (r, c) is NaN" (2-D; else the flat index). For inputs a
 * computation must not run on, such as weights about to be pruned. */
int st_tensor_f32_finite(const st_tensor *t, float **out);

/* The first float tensor of f holding a NaN or infinity, in offset order, and
 * the element: 1 and *t, *at set; 0 if every value is finite. For naming the
 * culprit once a computation has gone non-finite (the scan reads the file). */
int st_find_nonfinite(const st_file *f, const st_tensor **t, int64_t *at);

/* ---- writer ---- */
typedef struct st_writer st_writer;

st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
int st_writer_meta(st_writer *w, const char *key, const char *value);
int st_writer_add(st_writer *w, const char *name, tb_dtype dt, int ndim, const int64_t *shape);
/* Writes the header; `label` names the destination in errors. */
int st_writer_begin(st_writer *w, FILE *fp, const char *label);
/* Next tensor's bytes, possibly in several calls; must total its size. */
int st_writer_write(st_writer *w, const void *data, size_t nbytes);
int st_writer_finish(st_writer *w);

/* One-call save of in-memory tensors through an atomic tb_outfile ("-" = stdout). */
typedef struct {
    const char *name;
    tb_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_entry;
int st_save(const char *path, const st_entry *entries, int n, const char *const *meta_kv, int n_meta);

/* ---- checkpoint (directory, index.json shards, or single file) ---- */
typedef struct {
    char *path;
    st_file *shards;
    int n_shards;
} tb_ckpt;

int tb_ckpt_open(tb_ckpt *c, const char *path);
void tb_ckpt_close(tb_ckpt *c);
const st_tensor *tb_ckpt_find(const tb_ckpt *c, const char *name);
int tb_ckpt_count(const tb_ckpt *c);



/* SHA-256 over every shard's bytes, in shard order: the identity of a model's
 * weights, recorded by later stages (hex, 64 chars + NUL). */
int tb_ckpt_sha256(const tb_ckpt *c, char hex[65]);

#endif
