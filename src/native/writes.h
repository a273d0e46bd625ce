/*
 * writes.h: the arguments shared by the helper's batched positional writes (fsx.c writeBatch and
 * writeNow, commit.c writeAndSync): an array of Buffers and an array of their file offsets.
 */
#ifndef NBDSNAP_WRITES_H
#define NBDSNAP_WRITES_H

#include <stdbool.h>
#include <stdint.h>
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

#endif
