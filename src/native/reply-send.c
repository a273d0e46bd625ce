/*
 * reply-send: large replies handed to the client's socket by a thread of libuv's pool instead of
 * the event loop's thread (registered from fsx.c's init; node-gyp target `fsx`).
 *
 *   sendAsync(fd, buffers, callback) -> undefined: on a pool thread, sendmsg(MSG_DONTWAIT) of the
 *       buffers back to back until all are sent or the socket's buffer is full; then
 *       callback(n), n the bytes sent (0 to all of them; fewer when the socket filled up or failed:
 *       the caller sends the rest the usual way, which also reports the socket's error).
 *       Never waits for the socket: a client that does not read holds no pool thread.
 *   dupFd(fd) -> a duplicate of fd (F_DUPFD_CLOEXEC), for the sends above: the caller keeps it
 *       open until its last send is done, so a socket closed meanwhile never lets the number be
 *       reused by another file under a send in flight.
 *
 * Measured: the copy of a 1 MiB reply into the socket was the event loop's largest cost in
 * sequential reads; with it on pool threads, the loop only hands over and takes back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <node_api.h>

#define MAX_IOV 16

typedef struct {
  napi_async_work work;
  napi_ref buffers; /* keeps the buffers alive while the pool thread sends them */
  napi_ref callback;
  int fd;
  int count;
  struct iovec iov[MAX_IOV];
  int64_t sent;
} send_job;

static void job_free(napi_env env, send_job *j) {
  if (j->buffers != NULL) napi_delete_reference(env, j->buffers);
  if (j->callback != NULL) napi_delete_reference(env, j->callback);
  free(j);
}

static void job_execute(napi_env env, void *arg) {
  (void)env;
  send_job *j = arg;
  struct iovec *v = j->iov;
  int left = j->count;
  while (left > 0) {
    struct msghdr msg = {0};
    msg.msg_iov = v;
    msg.msg_iovlen = (size_t)left;
    ssize_t n = sendmsg(j->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* full (EAGAIN) or failed: the caller sends the rest */
    j->sent += n;
    while (left > 0 && (size_t)n >= v->iov_len) {
      n -= (ssize_t)v->iov_len;
      v++;
      left--;
    }
    if (left > 0 && n > 0) {
      v->iov_base = (char *)v->iov_base + n;
      v->iov_len -= (size_t)n;
    }
  }
}

static void job_complete(napi_env env, napi_status status, void *arg) {
  send_job *j = arg;
  napi_value cb, global, n;
  napi_get_global(env, &global);
  napi_get_reference_value(env, j->callback, &cb);
  napi_create_int64(env, status == napi_ok ? j->sent : 0, &n);
  napi_delete_async_work(env, j->work);
  job_free(env, j);
  napi_call_function(env, global, cb, 1, &n, NULL);
}

static napi_value send_async(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd;
  uint32_t count;
  bool isarr;
  napi_valuetype cbtype;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok || napi_is_array(env, argv[1], &isarr) != napi_ok || !isarr ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || count == 0 || count > MAX_IOV ||
      napi_typeof(env, argv[2], &cbtype) != napi_ok || cbtype != napi_function) {
    napi_throw_type_error(env, "EINVAL", "sendAsync(fd, buffers, callback)");
    return NULL;
  }
  send_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, "ENOMEM", "sendAsync: out of memory");
    return NULL;
  }
  j->fd = (int)fd;
  j->count = (int)count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value buf;
    void *data;
    size_t length;
    if (napi_get_element(env, argv[1], i, &buf) != napi_ok || napi_get_buffer_info(env, buf, &data, &length) != napi_ok) {
      job_free(env, j);
      napi_throw_type_error(env, "EINVAL", "sendAsync: buffers must be Buffers");
      return NULL;
    }
    j->iov[i].iov_base = data;
    j->iov[i].iov_len = length;
  }
  napi_value name;
  napi_create_string_utf8(env, "fsx.sendAsync", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[1], 1, &j->buffers) != napi_ok ||
      napi_create_reference(env, argv[2], 1, &j->callback) != napi_ok ||
      napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    job_free(env, j);
    napi_throw_error(env, "EIO", "sendAsync: cannot queue the work");
    return NULL;
  }
  return NULL;
}

static napi_value dup_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "dupFd(fd)");
    return NULL;
  }
  int d = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  napi_value v;
  napi_create_int64(env, d < 0 ? -1 : d, &v);
  return v;
}

void register_reply_send(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sendAsync", NULL, send_async, NULL, NULL, NULL, napi_default_method, NULL},
    {"dupFd", NULL, dup_fd, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
