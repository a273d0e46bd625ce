/*
 * commit: the difference store's group commit in ONE hand-off to libuv's thread pool.
 *
 *   writeAndSync(fd, buffers, offsets, dataCount, syncFds, callback) -> undefined
 *
 * On one pool thread, in order: the first `dataCount` buffers (chunk copies) at their offsets,
 * neighbouring ones joined into one pwritev; then the rest (the journal's records), never joined
 * with a copy; then, only if every buffer was written, fdatasync of each descriptor of `syncFds`.
 * The first failed write stops the job: nothing after it is written (its entry and every later
 * one get ECANCELED) and nothing is synced, so records are never written after a copy they guard
 * failed. Then callback(errors, syncError): errors[i] undefined or an Error (with the errno name
 * as `code`) for buffers[i]; syncError undefined or an Error.
 *
 * Without it a copy costs two hand-offs (its write, then the journal's sync), each a wake-up of a
 * pool thread and of the event loop: on a loaded machine each of those waits for a CPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <node_api.h>
#include "async-job.h"
#include "writes.h"

#define MAX_IOV 64

typedef struct {
  async_job job; /* keeps the buffers alive while the pool thread writes them */
  int fd;
  uint32_t count;
  uint32_t data_count;
  uint32_t sync_count;
  char **data;
  size_t *length;
  int64_t *offset;
  int *err;
  int *sync_fds;
  int sync_err;
} commit_job;

static void job_free(napi_env env, commit_job *j) {
  async_job_release(env, &j->job);
  free(j->data);
  free(j->length);
  free(j->offset);
  free(j->err);
  free(j->sync_fds);
  free(j);
}

static void job_execute(napi_env env, void *arg) {
  (void)env;
  commit_job *j = arg;
  struct iovec iov[MAX_IOV];
  uint32_t i = 0;
  int failed = 0;
  while (i < j->count) {
    if (failed) {
      j->err[i++] = ECANCELED;
      continue;
    }
    uint32_t n = 1;
    while (i + n < j->count && n < MAX_IOV && (i + n < j->data_count) == (i < j->data_count) &&
           j->offset[i + n] == j->offset[i + n - 1] + (int64_t)j->length[i + n - 1])
      n++;
    size_t total = 0;
    for (uint32_t k = 0; k < n; k++) {
      iov[k].iov_base = j->data[i + k];
      iov[k].iov_len = j->length[i + k];
      total += j->length[i + k];
    }
    int e = pwritev_all(j->fd, iov, (int)n, j->offset[i], total);
    for (uint32_t k = 0; k < n; k++) j->err[i + k] = e;
    if (e != 0) failed = 1;
    i += n;
  }
  if (failed) {
    j->sync_err = ECANCELED;
    return;
  }
  for (uint32_t k = 0; k < j->sync_count; k++) {
    if (fdatasync(j->sync_fds[k]) < 0) {
      j->sync_err = errno;
      return;
    }
  }
}

static void job_complete(napi_env env, napi_status status, void *arg) {
  commit_job *j = arg;
  napi_value undef, args[2];
  napi_get_undefined(env, &undef);
  napi_create_array_with_length(env, j->count, &args[0]);
  for (uint32_t i = 0; i < j->count; i++) {
    int e = status == napi_ok ? j->err[i] : EIO;
    napi_set_element(env, args[0], i, e == 0 ? undef : errno_error(env, "pwrite", e));
  }
  int se = status == napi_ok ? j->sync_err : EIO;
  args[1] = se == 0 ? undef : errno_error(env, "fdatasync", se);
  napi_value cb = async_job_end(env, &j->job);
  job_free(env, j);
  async_job_call(env, cb, 2, args);
}

static napi_value write_and_sync(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_valuetype cbtype;
  int64_t fd, data_count;
  uint32_t count, ocount, scount;
  bool isarr;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok || napi_is_array(env, argv[1], &isarr) != napi_ok || !isarr ||
      napi_get_array_length(env, argv[1], &count) != napi_ok ||
      napi_get_array_length(env, argv[2], &ocount) != napi_ok || ocount != count ||
      napi_get_value_int64(env, argv[3], &data_count) != napi_ok || data_count < 0 || data_count > count ||
      napi_get_array_length(env, argv[4], &scount) != napi_ok || napi_typeof(env, argv[5], &cbtype) != napi_ok ||
      cbtype != napi_function) {
    napi_throw_type_error(env, "EINVAL", "writeAndSync(fd, buffers, offsets, dataCount, syncFds, callback)");
    return NULL;
  }
  commit_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, "ENOMEM", "writeAndSync: out of memory");
    return NULL;
  }
  j->fd = (int)fd;
  j->count = count;
  j->data_count = (uint32_t)data_count;
  j->sync_count = scount;
  j->data = calloc(count + 1, sizeof *j->data);
  j->length = calloc(count + 1, sizeof *j->length);
  j->offset = calloc(count + 1, sizeof *j->offset);
  j->err = calloc(count + 1, sizeof *j->err);
  j->sync_fds = calloc(scount + 1, sizeof *j->sync_fds);
  if (j->data == NULL || j->length == NULL || j->offset == NULL || j->err == NULL || j->sync_fds == NULL) {
    job_free(env, j);
    napi_throw_error(env, "ENOMEM", "writeAndSync: out of memory");
    return NULL;
  }
  if (!read_writes(env, argv[1], argv[2], count, j->data, j->length, j->offset)) {
    job_free(env, j);
    napi_throw_type_error(env, "EINVAL", "writeAndSync: buffers must be Buffers, offsets non-negative numbers");
    return NULL;
  }
  for (uint32_t k = 0; k < scount; k++) {
    napi_value v;
    int64_t sfd;
    if (napi_get_element(env, argv[4], k, &v) != napi_ok || napi_get_value_int64(env, v, &sfd) != napi_ok) {
      job_free(env, j);
      napi_throw_type_error(env, "EINVAL", "writeAndSync: syncFds must be descriptors");
      return NULL;
    }
    j->sync_fds[k] = (int)sfd;
  }
  if (!async_job_queue(env, &j->job, "fsx.writeAndSync", &argv[1], 1, argv[5], job_execute, job_complete, j)) {
    job_free(env, j);
    napi_throw_error(env, "EIO", "writeAndSync: cannot queue the work");
    return NULL;
  }
  return NULL;
}

/* Called once from fsx.c's init. */
void register_commit(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    NATIVE_METHOD("writeAndSync", write_and_sync),
  };
  NATIVE_DEFINE(env, exports, props);
}
