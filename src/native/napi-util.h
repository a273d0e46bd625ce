/*
 * napi-util.h: what every file of the native helper repeats around its functions: reading the
 * call's arguments, errors whose `code` is the errno name, and the table of exported methods.
 * Everything is static inline, so a file that includes this and uses only part of it builds
 * without warnings. async-job.h builds on it for the functions that work on libuv's pool.
 */
#ifndef NBDSNAP_NAPI_UTIL_H
#define NBDSNAP_NAPI_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <node_api.h>

/* An exported method for a napi_property_descriptor table. */
#define NATIVE_METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default_method, NULL}

/* Defines every method of a table (an array, not a pointer) on `exports`. */
#define NATIVE_DEFINE(env, exports, table) napi_define_properties(env, exports, sizeof table / sizeof table[0], table)

/* argv[0 .. want) of the call: false when it has fewer arguments (nothing thrown). */
static inline bool native_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  return napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc >= want;
}

static inline bool native_is_function(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_function;
}

/* The errno's name, the `code` of the errors the helper reports ("EUNKNOWN" for the others). */
static inline const char *errno_name(int e) {
  switch (e) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENXIO: return "ENXIO";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOSPC: return "ENOSPC";
    case EIO: return "EIO";
    case EPERM: return "EPERM";
    case ENODEV: return "ENODEV";
    case ESPIPE: return "ESPIPE";
    case ENOTTY: return "ENOTTY";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case EDQUOT: return "EDQUOT";
    case EFBIG: return "EFBIG";
    case EAGAIN: return "EAGAIN";
    case EINTR: return "EINTR";
    case ECANCELED: return "ECANCELED";
    default: return "EUNKNOWN";
  }
}

/* A new Error with this code and message. */
static inline napi_value coded_error(napi_env env, const char *code, const char *message) {
  napi_value c, m, err;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &err);
  return err;
}

/* A new Error "what: strerror(e)" whose code is the errno's name. */
static inline napi_value errno_error(napi_env env, const char *what, int e) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  return coded_error(env, errno_name(e), msg);
}

/* Throws "what: strerror(e)" with the errno's name as code; returns NULL for `return throw_errno(...)`. */
static inline napi_value throw_errno(napi_env env, const char *what, int e) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  napi_throw_error(env, errno_name(e), msg);
  return NULL;
}

#endif
