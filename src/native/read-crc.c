/*
 * read-crc: reads of store copies with their checksums, on one thread of libuv's pool, for the
 * snapshot read path (src/snapshot/copy-read.ts): a large snapshot read of copied chunks then
 * costs the event loop one hand-off instead of a read and a checksum per chunk, as an origin read
 * of the same size does (its file read also goes to the pool).
 *
 *   readCrcBatch(fds, buffers, positions, crcs, sums, done) -> undefined: for each i, fills
 *       buffers[i] (a Buffer) from fds[i] at positions[i] (looping over short reads; the end of
 *       the file is an error), then crcs[i] (Uint32Array) = its CRC-32 (zlib's) and
 *       sums[i * blocks + k] (Uint32Array, blocks = sums.length / buffers.length, 4 KiB blocks) =
 *       the CRC-32 of its k-th 4 KiB block; then done(errors): errors[i] 0, or the errno of
 *       buffers[i]'s read (EIO for a read that ended short). Buffers that follow each other in a
 *       file are read with one preadv.
 *
 * Nothing here decides what a checksum means: the caller compares them with the recorded ones.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>
#include "async-job.h"

uint32_t nbdsnap_crc32(uint32_t crc, const uint8_t *p, size_t n);
uint32_t nbdsnap_crc32_blocks(const uint8_t *p, size_t n, uint32_t block, uint32_t *out);

#define BLOCK 4096
#define MAX_IOV 64

typedef struct {
  async_job job; /* buffers, crcs, sums and done kept while the pool thread works */
  uint32_t count, blocks;
  int *fd;
  uint8_t **data;
  size_t *length;
  int64_t *position;
  int *err;
  uint32_t *crcs, *sums;
} read_batch;

static void rb_free(napi_env env, read_batch *b) {
  async_job_release(env, &b->job);
  free(b->fd);
  free(b->data);
  free(b->length);
  free(b->position);
  free(b->err);
  free(b);
}

/* Items i .. i+n-1 read with one preadv when they follow each other on the same file. */
static void rb_execute(napi_env env, void *arg) {
  (void)env;
  read_batch *b = arg;
  for (uint32_t i = 0; i < b->count;) {
    uint32_t n = 1;
    while (i + n < b->count && n < MAX_IOV && b->fd[i + n] == b->fd[i] &&
           b->position[i + n] == b->position[i + n - 1] + (int64_t)b->length[i + n - 1])
      n++;
    struct iovec iov[MAX_IOV];
    size_t left = 0;
    for (uint32_t k = 0; k < n; k++) {
      iov[k].iov_base = b->data[i + k];
      iov[k].iov_len = b->length[i + k];
      left += b->length[i + k];
    }
    struct iovec *v = iov;
    int cnt = (int)n, e = 0;
    off_t pos = (off_t)b->position[i];
    while (left > 0) {
      ssize_t r = preadv(b->fd[i], v, cnt, pos);
      if (r < 0) {
        if (errno == EINTR) continue;
        e = errno;
        break;
      }
      if (r == 0) {
        e = EIO; /* the end of the file: the copy is not all there */
        break;
      }
      left -= (size_t)r;
      pos += r;
      while (cnt > 0 && (size_t)r >= v->iov_len) {
        r -= (ssize_t)v->iov_len;
        v++;
        cnt--;
      }
      if (cnt > 0 && r > 0) {
        v->iov_base = (char *)v->iov_base + r;
        v->iov_len -= (size_t)r;
      }
    }
    for (uint32_t k = 0; k < n; k++) {
      uint32_t j = i + k;
      b->err[j] = e;
      if (e == 0) {
        if (b->blocks > 0 && (b->length[j] + BLOCK - 1) / BLOCK <= b->blocks)
          b->crcs[j] = nbdsnap_crc32_blocks(b->data[j], b->length[j], BLOCK, b->sums + (size_t)j * b->blocks);
        else
          b->crcs[j] = nbdsnap_crc32(0, b->data[j], b->length[j]);
      }
    }
    i += n;
  }
}

static void rb_complete(napi_env env, napi_status status, void *arg) {
  read_batch *b = arg;
  napi_value errors;
  napi_create_array_with_length(env, b->count, &errors);
  for (uint32_t i = 0; i < b->count; i++) {
    napi_value e;
    napi_create_int32(env, status == napi_ok ? b->err[i] : EIO, &e);
    napi_set_element(env, errors, i, e);
  }
  napi_value cb = async_job_end(env, &b->job);
  rb_free(env, b);
  async_job_call(env, cb, 1, &errors);
}

static napi_value fail(napi_env env, read_batch *b, const char *msg) {
  if (b != NULL) rb_free(env, b);
  napi_throw_type_error(env, "EINVAL", msg);
  return NULL;
}

static napi_value read_crc_batch_fn(napi_env env, napi_callback_info info) {
  static const char *usage = "readCrcBatch(fds, buffers, positions, crcs: Uint32Array, sums: Uint32Array, done)";
  napi_value argv[6];
  uint32_t count, n1, n2;
  bool arr;
  if (!native_args(env, info, 6, argv) || !native_is_function(env, argv[5]) ||
      napi_is_array(env, argv[1], &arr) != napi_ok || !arr || napi_get_array_length(env, argv[1], &count) != napi_ok ||
      count == 0 || napi_get_array_length(env, argv[0], &n1) != napi_ok || n1 != count ||
      napi_get_array_length(env, argv[2], &n2) != napi_ok || n2 != count)
    return fail(env, NULL, usage);
  napi_typedarray_type t1, t2;
  size_t clen, slen;
  void *cdata, *sdata;
  if (napi_get_typedarray_info(env, argv[3], &t1, &clen, &cdata, NULL, NULL) != napi_ok || t1 != napi_uint32_array ||
      clen < count || napi_get_typedarray_info(env, argv[4], &t2, &slen, &sdata, NULL, NULL) != napi_ok ||
      t2 != napi_uint32_array)
    return fail(env, NULL, usage);
  read_batch *b = calloc(1, sizeof *b);
  if (b == NULL) return fail(env, NULL, "readCrcBatch: out of memory");
  b->count = count;
  b->blocks = (uint32_t)(slen / count);
  b->crcs = cdata;
  b->sums = sdata;
  b->fd = calloc(count, sizeof *b->fd);
  b->data = calloc(count, sizeof *b->data);
  b->length = calloc(count, sizeof *b->length);
  b->position = calloc(count, sizeof *b->position);
  b->err = calloc(count, sizeof *b->err);
  if (b->fd == NULL || b->data == NULL || b->length == NULL || b->position == NULL || b->err == NULL)
    return fail(env, b, "readCrcBatch: out of memory");
  for (uint32_t i = 0; i < count; i++) {
    napi_value fd, buf, pos;
    int32_t f;
    void *data;
    if (napi_get_element(env, argv[0], i, &fd) != napi_ok || napi_get_value_int32(env, fd, &f) != napi_ok || f < 0 ||
        napi_get_element(env, argv[1], i, &buf) != napi_ok ||
        napi_get_buffer_info(env, buf, &data, &b->length[i]) != napi_ok ||
        napi_get_element(env, argv[2], i, &pos) != napi_ok ||
        napi_get_value_int64(env, pos, &b->position[i]) != napi_ok || b->position[i] < 0)
      return fail(env, b, usage);
    b->fd[i] = f;
    b->data[i] = data;
  }
  napi_value keep[] = {argv[1], argv[3], argv[4]};
  if (!async_job_queue(env, &b->job, "crc.readCrcBatch", keep, 3, argv[5], rb_execute, rb_complete, b))
    return fail(env, b, "readCrcBatch: cannot queue the work");
  return NULL;
}

/*
 * pageOffset(buffer) -> the address of its first byte modulo 4096. The kernel copies a read from
 * the page cache with `rep movsb`, which on this machine's CPU (AMD EPYC) runs 7-8 times slower
 * when the destination sits 1 to 31 bytes past the page-aligned source modulo 4096 (4K aliasing:
 * 500-630 us a MiB instead of 60-80, measured), and glibc's malloc puts every buffer of 128 KiB or
 * more (mmapped) exactly 16 bytes past a page: src/block/buffer-pool.ts aligns its large buffers.
 */
static napi_value page_offset_fn(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  void *data;
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "pageOffset(buffer)");
    return NULL;
  }
  napi_create_uint32(env, (uint32_t)((uintptr_t)data & 4095), &out);
  return out;
}

void register_read_crc(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    NATIVE_METHOD("readCrcBatch", read_crc_batch_fn),
    NATIVE_METHOD("pageOffset", page_offset_fn),
  };
  NATIVE_DEFINE(env, exports, props);
}
