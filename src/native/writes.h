/*
 * writes.h: what the helper's batched positional writes share (fsx.c writeBatch and writeNow,
 * commit.c writeAndSync): their arguments, an array of Buffers and an array of their file
 * offsets; and the write of a run of neighbouring buffers, looped over short writes.
 */
#ifndef NBDSNAP_WRITES_H
#define NBDSNAP_WRITES_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <node_api.h>

/*
 * Fill data[i], length[i] and offset[i] from buffers[i] and offsets[i], for i < count. False
 * (nothing thrown) when an element is not a Buffer or an offset not a non-negative integer.
 */
static inline bool read_writes(napi_env env, napi_value buffers, napi_value offsets, uint32_t count, char **data,
                               size_t *length, int64_t *offset) {
  for (uint32_t i = 0; i < count; i++) {
    napi_value buf, off;
    void *bytes;
    if (napi_get_element(env, buffers, i, &buf) != napi_ok || napi_get_buffer_info(env, buf, &bytes, &length[i]) != napi_ok ||
        napi_get_element(env, offsets, i, &off) != napi_ok || napi_get_value_int64(env, off, &offset[i]) != napi_ok ||
        offset[i] < 0)
      return false;
    data[i] = bytes;
  }
  return true;
}

/*
 * pwritev of v[0 .. left), `total` bytes in all, at `at`, looped until all are written (EINTR
 * retried); 0 or the errno (EIO when the file takes nothing). Changes v's entries.
 */
static inline int pwritev_all(int fd, struct iovec *v, int left, int64_t at, size_t total) {
  size_t done = 0;
  while (done < total) {
    ssize_t w = pwritev(fd, v, left, (off_t)at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    done += (size_t)w;
    at += w;
    while (left > 0 && (size_t)w >= v->iov_len) {
      w -= (ssize_t)v->iov_len;
      v++;
      left--;
    }
    if (left > 0 && w > 0) {
      v->iov_base = (char *)v->iov_base + w;
      v->iov_len -= (size_t)w;
    }
  }
  return 0;
}

#endif
