/*
 * fsx: the Linux file-system calls Node does not expose, as a tiny N-API addon.
 *
 *   seekData(fd, offset)  -> next data offset at or after offset, or -1 at/after the last data (ENXIO)
 *   seekHole(fd, offset)  -> next hole offset at or after offset (end of file counts as a hole)
 *   sizeOf(fd)            -> lseek(SEEK_END): the size of a regular file or a block device
 *   readNowait(fd, buffer, offset) -> bytes read by preadv2(RWF_NOWAIT), or -1 if the data is
 *                            not in the page cache (the caller then reads on the thread pool)
 *   punchHole(fd, offset, length)  fallocate(PUNCH_HOLE | KEEP_SIZE): deallocate, reads give zeroes
 *   zeroRange(fd, offset, length)  fallocate(ZERO_RANGE | KEEP_SIZE): zeroes, allocated
 *   ofdLock(fd, exclusive, start, length) -> 0, or the errno (EAGAIN when another open file
 *                            description holds a conflicting lock): an open file description lock
 *                            (fcntl F_OFD_SETLK, as qemu locks its images), F_WRLCK or F_RDLCK on
 *                            [start, start + length), length 0 meaning to the end and beyond
 *   loopInfo(fd)           -> LOOP_GET_STATUS64 of a loop device: { major, minor, inode (of the
 *                            backing file), offset, sizeLimit, fileName }, or null when fd is not
 *                            a bound loop device
 *
 * All are metadata operations that return in microseconds, so they run synchronously on the
 * calling thread. Errors throw a JS Error whose `code` is the errno name (e.g. "EOPNOTSUPP"), so
 * callers can fall back to writing zeroes where the file system cannot punch.
 *
 *   writeBatch(fd, buffers, offsets, callback) -> undefined: writes every buffer at its offset
 *                            on one thread of libuv's pool (one hand-off for the whole batch
 *                            instead of one per write), in order, buffers that follow each other
 *                            on the file joined into one pwritev; then callback(errors), errors[i]
 *                            undefined or an Error (with `code`) for buffers[i]
 *   writeNow(fd, buffers, offsets) -> errors: the same writes on the calling thread (for small
 *                            batches to the page cache, where the hand-off costs more than the
 *                            copy; the caller measures and goes back to writeBatch when slow)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>
#include "async-job.h"
#include "writes.h"

static int get_args(napi_env env, napi_callback_info info, size_t want, int64_t *out) {
  napi_value argv[3];
  if (!native_args(env, info, want, argv)) {
    napi_throw_type_error(env, "EINVAL", "fsx: wrong number of arguments");
    return -1;
  }
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, "EINVAL", "fsx: arguments must be numbers");
      return -1;
    }
  }
  return 0;
}

static napi_value seek_common(napi_env env, napi_callback_info info, int whence, const char *what) {
  int64_t a[2];
  if (get_args(env, info, 2, a) < 0) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  if (r < 0) {
    if (errno == ENXIO) r = -1; /* offset at or past the last data / end of file */
    else return throw_errno(env, what, errno);
  }
  napi_value v;
  napi_create_int64(env, (int64_t)r, &v);
  return v;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return seek_common(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return seek_common(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

static napi_value size_of(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (get_args(env, info, 1, a) < 0) return NULL;
  off_t r = lseek((int)a[0], 0, SEEK_END);
  if (r < 0) return throw_errno(env, "lseek(SEEK_END)", errno);
  napi_value v;
  napi_create_int64(env, (int64_t)r, &v);
  return v;
}

static napi_value read_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t fd, offset;
  void *data;
  size_t length;
  if (!native_args(env, info, 3, argv) || napi_get_value_int64(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "readNowait(fd, buffer, offset)");
    return NULL;
  }
  struct iovec iov = {data, length};
  ssize_t n = preadv2((int)fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == EINVAL) n = -1;
    else return throw_errno(env, "preadv2", errno);
  }
  napi_value v;
  napi_create_int64(env, (int64_t)n, &v);
  return v;
}

static napi_value falloc_common(napi_env env, napi_callback_info info, int mode, const char *what) {
  int64_t a[3];
  if (get_args(env, info, 3, a) < 0) return NULL;
  if (fallocate((int)a[0], mode, (off_t)a[1], (off_t)a[2]) < 0) return throw_errno(env, what, errno);
  return NULL;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return falloc_common(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)");
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return falloc_common(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fallocate(ZERO_RANGE)");
}

static napi_value ofd_lock(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, start = 0, length = 0;
  bool exclusive;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok ||
      napi_get_value_bool(env, argv[1], &exclusive) != napi_ok ||
      (argc > 2 && napi_get_value_int64(env, argv[2], &start) != napi_ok) ||
      (argc > 3 && napi_get_value_int64(env, argv[3], &length) != napi_ok)) {
    napi_throw_type_error(env, "EINVAL", "ofdLock(fd, exclusive, start?, length?)");
    return NULL;
  }
  struct flock fl;
  memset(&fl, 0, sizeof fl); /* l_pid must be 0 for OFD locks */
  fl.l_type = exclusive ? F_WRLCK : F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)start;
  fl.l_len = (off_t)length;
  int r = fcntl((int)fd, F_OFD_SETLK, &fl) < 0 ? errno : 0;
  napi_value v;
  napi_create_int32(env, r, &v);
  return v;
}

static napi_value loop_info(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (get_args(env, info, 1, a) < 0) return NULL;
  struct loop_info64 li;
  memset(&li, 0, sizeof li);
  napi_value v;
  if (ioctl((int)a[0], LOOP_GET_STATUS64, &li) < 0) {
    /* ENXIO: a loop device with nothing bound; ENOTTY / EINVAL: not a loop device */
    if (errno == ENXIO || errno == ENOTTY || errno == EINVAL) {
      napi_get_null(env, &v);
      return v;
    }
    return throw_errno(env, "ioctl(LOOP_GET_STATUS64)", errno);
  }
  li.lo_file_name[LO_NAME_SIZE - 1] = 0;
  napi_value n;
  napi_create_object(env, &v);
  napi_create_int64(env, (int64_t)major((dev_t)li.lo_device), &n);
  napi_set_named_property(env, v, "major", n);
  napi_create_int64(env, (int64_t)minor((dev_t)li.lo_device), &n);
  napi_set_named_property(env, v, "minor", n);
  napi_create_int64(env, (int64_t)li.lo_inode, &n);
  napi_set_named_property(env, v, "inode", n);
  napi_create_int64(env, (int64_t)li.lo_offset, &n);
  napi_set_named_property(env, v, "offset", n);
  napi_create_int64(env, (int64_t)li.lo_sizelimit, &n);
  napi_set_named_property(env, v, "sizeLimit", n);
  napi_create_string_utf8(env, (const char *)li.lo_file_name, NAPI_AUTO_LENGTH, &n);
  napi_set_named_property(env, v, "fileName", n);
  return v;
}


/* ---------------------------------------------------------------- writeBatch */

typedef struct {
  async_job job; /* keeps the buffers alive while the pool thread writes them */
  int fd;
  uint32_t count;
  char **data;
  size_t *length;
  int64_t *offset;
  int *err; /* errno per buffer, 0 when written */
} write_batch;

static void batch_free(napi_env env, write_batch *b) {
  async_job_release(env, &b->job);
  free(b->data);
  free(b->length);
  free(b->offset);
  free(b->err);
  free(b);
}

/* On a pool thread: runs of adjacent buffers go out as one pwritev, each looped until written. */
static void batch_execute(napi_env env, void *arg) {
  (void)env;
  write_batch *b = arg;
  struct iovec iov[64];
  uint32_t i = 0;
  while (i < b->count) {
    uint32_t n = 1;
    while (i + n < b->count && n < 64 && b->offset[i + n] == b->offset[i + n - 1] + (int64_t)b->length[i + n - 1]) n++;
    size_t total = 0;
    for (uint32_t k = 0; k < n; k++) {
      iov[k].iov_base = b->data[i + k];
      iov[k].iov_len = b->length[i + k];
      total += b->length[i + k];
    }
    int e = pwritev_all(b->fd, iov, (int)n, b->offset[i], total);
    for (uint32_t k = 0; k < n; k++) b->err[i + k] = e;
    i += n;
  }
}

/* One entry per buffer: undefined when written, else an Error whose code is the errno name. */
static napi_value batch_errors(napi_env env, write_batch *b, napi_status status) {
  napi_value errors, undef;
  napi_get_undefined(env, &undef);
  napi_create_array_with_length(env, b->count, &errors);
  for (uint32_t i = 0; i < b->count; i++) {
    int e = status == napi_ok ? b->err[i] : EIO;
    napi_set_element(env, errors, i, e == 0 ? undef : errno_error(env, "pwrite", e));
  }
  return errors;
}

static void batch_complete(napi_env env, napi_status status, void *arg) {
  write_batch *b = arg;
  napi_value errors = batch_errors(env, b, status);
  napi_value cb = async_job_end(env, &b->job);
  batch_free(env, b);
  async_job_call(env, cb, 1, &errors);
}

/* Reads (fd, buffers, offsets) into a new batch; NULL with a JS exception pending on bad input. */
static write_batch *batch_parse(napi_env env, napi_value *argv) {
  int64_t fd;
  uint32_t count, ocount;
  bool isarr;
  if (napi_get_value_int64(env, argv[0], &fd) != napi_ok || napi_is_array(env, argv[1], &isarr) != napi_ok || !isarr ||
      napi_get_array_length(env, argv[1], &count) != napi_ok ||
      napi_get_array_length(env, argv[2], &ocount) != napi_ok || ocount != count || count == 0) {
    napi_throw_type_error(env, "EINVAL", "writeBatch/writeNow(fd, buffers, offsets, ...)");
    return NULL;
  }
  write_batch *b = calloc(1, sizeof *b);
  if (b == NULL) {
    throw_errno(env, "writeBatch", ENOMEM);
    return NULL;
  }
  b->fd = (int)fd;
  b->count = count;
  b->data = calloc(count, sizeof *b->data);
  b->length = calloc(count, sizeof *b->length);
  b->offset = calloc(count, sizeof *b->offset);
  b->err = calloc(count, sizeof *b->err);
  if (b->data == NULL || b->length == NULL || b->offset == NULL || b->err == NULL) {
    batch_free(env, b);
    throw_errno(env, "writeBatch", ENOMEM);
    return NULL;
  }
  if (!read_writes(env, argv[1], argv[2], count, b->data, b->length, b->offset)) {
    batch_free(env, b);
    napi_throw_type_error(env, "EINVAL", "writeBatch: buffers must be Buffers, offsets non-negative numbers");
    return NULL;
  }
  return b;
}

static napi_value write_batch_fn(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!native_args(env, info, 4, argv) || !native_is_function(env, argv[3])) {
    napi_throw_type_error(env, "EINVAL", "writeBatch(fd, buffers, offsets, callback)");
    return NULL;
  }
  write_batch *b = batch_parse(env, argv);
  if (b == NULL) return NULL;
  if (!async_job_queue(env, &b->job, "fsx.writeBatch", &argv[1], 1, argv[3], batch_execute, batch_complete, b)) {
    batch_free(env, b);
    napi_throw_error(env, "EIO", "writeBatch: cannot queue the work");
    return NULL;
  }
  return NULL;
}

static napi_value write_now_fn(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!native_args(env, info, 3, argv)) {
    napi_throw_type_error(env, "EINVAL", "writeNow(fd, buffers, offsets)");
    return NULL;
  }
  write_batch *b = batch_parse(env, argv);
  if (b == NULL) return NULL;
  batch_execute(env, b);
  napi_value errors = batch_errors(env, b, napi_ok);
  batch_free(env, b);
  return errors;
}

/* The helper's other files register their functions on the same exports. */
void register_backup(napi_env env, napi_value exports); /* backup.c: staged backup files */
void register_crc32(napi_env env, napi_value exports);  /* crc32.c, read-crc.c: CRC-32 */
void register_commit(napi_env env, napi_value exports); /* commit.c: copies + journal + sync */

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    NATIVE_METHOD("seekData", seek_data),
    NATIVE_METHOD("seekHole", seek_hole),
    NATIVE_METHOD("sizeOf", size_of),
    NATIVE_METHOD("readNowait", read_nowait),
    NATIVE_METHOD("punchHole", punch_hole),
    NATIVE_METHOD("zeroRange", zero_range),
    NATIVE_METHOD("ofdLock", ofd_lock),
    NATIVE_METHOD("loopInfo", loop_info),
    NATIVE_METHOD("writeBatch", write_batch_fn),
    NATIVE_METHOD("writeNow", write_now_fn),
  };
  NATIVE_DEFINE(env, exports, props);
  register_backup(env, exports);
  register_crc32(env, exports);
  register_commit(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
