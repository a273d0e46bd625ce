/*
 * sendfile: a READ reply sent from the page cache to the client's socket without passing through
 * a buffer of ours (registered from fsx.c's init; node-gyp target `fsx`).
 *
 *   sendReply(sock, header, fd, offset, length) -> bytes of header + data handed to the socket:
 *       -1  nothing sent: [offset, offset + length) of fd is not all in the page cache (cachestat),
 *           or this kernel cannot tell (no cachestat); the caller reads the usual way;
 *        0  nothing sent: the socket's send buffer is full;
 *        n  the first n bytes of header + data are on the socket, in order (n < header + length
 *           when the send buffer filled up, the file ended early or reading it failed: the caller
 *           sends the rest itself, before anything else).
 *
 * The header goes out with send(MSG_MORE | MSG_DONTWAIT), the data with sendfile(2) on the
 * non-blocking socket: on TCP the kernel passes page-cache pages to the socket instead of copying
 * them twice (file to buffer, buffer to socket). It runs on the calling thread (the event loop),
 * which is why the range must be cached first: a read from the disk would stall the loop. The
 * caller makes sure nothing else of the connection is queued for the socket before calling.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <node_api.h>

#ifndef __NR_cachestat
#if defined(__x86_64__) || defined(__aarch64__)
#define __NR_cachestat 451
#endif
#endif

struct nbdsnap_cachestat_range {
  uint64_t off;
  uint64_t len;
};

struct nbdsnap_cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

/* 1: every page of the range is in the page cache; 0: not, or unknown (no cachestat). */
static int range_cached(int fd, int64_t offset, int64_t length) {
#ifdef __NR_cachestat
  static int missing = 0;
  if (missing) return 0;
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) return 0;
  struct nbdsnap_cachestat_range range = {(uint64_t)offset, (uint64_t)length};
  struct nbdsnap_cachestat cs = {0, 0, 0, 0, 0};
  if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0) {
    if (errno == ENOSYS) missing = 1;
    return 0;
  }
  uint64_t first = (uint64_t)offset / (uint64_t)page;
  uint64_t last = (uint64_t)(offset + length - 1) / (uint64_t)page;
  return cs.nr_cache >= last - first + 1;
#else
  (void)fd;
  (void)offset;
  (void)length;
  return 0;
#endif
}

static napi_value send_reply(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int64_t sock, fd, offset, length;
  void *header;
  size_t hlen;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_int64(env, argv[0], &sock) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &header, &hlen) != napi_ok ||
      napi_get_value_int64(env, argv[2], &fd) != napi_ok || napi_get_value_int64(env, argv[3], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[4], &length) != napi_ok || offset < 0 || length <= 0) {
    napi_throw_type_error(env, "EINVAL", "sendReply(sock, header, fd, offset, length)");
    return NULL;
  }
  int64_t sent = -1;
  if (range_cached((int)fd, offset, length)) {
    sent = 0;
    while ((size_t)sent < hlen) {
      ssize_t n = send((int)sock, (char *)header + sent, hlen - (size_t)sent, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      sent += n;
    }
    if ((size_t)sent == hlen) {
      off_t at = (off_t)offset;
      int64_t left = length;
      while (left > 0) {
        ssize_t n = sendfile((int)sock, (int)fd, &at, (size_t)left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* full (EAGAIN), end of file (0) or an error: the caller sends the rest */
        left -= n;
        sent += n;
      }
    }
  }
  napi_value v;
  napi_create_int64(env, sent, &v);
  return v;
}

void register_sendfile(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sendReply", NULL, send_reply, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
