/*
 * Native helpers of `nbdsnap backup` (src/backup/staged-file.ts):
 *
 *   alignedBuffer(size)            a Buffer whose memory is aligned to 4096 bytes, for O_DIRECT
 *                                  writes (JavaScript cannot choose or see a buffer's address)
 *   sha256Create()                 a SHA-256 state (OpenSSL's, the one node links: SHA-NI where
 *                                  the CPU has it)
 *   sha256Update(state, buf, done) hash buf on a thread of libuv's pool, then done(null | Error);
 *                                  the caller keeps one update of a state in flight at a time
 *   sha256Digest(state)            the digest of everything hashed so far (the state goes on)
 *
 * Registered by fsx.c's init through register_backup().
 */
#include <node_api.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include "async-job.h"

#define ALIGN 4096

static void free_aligned(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value aligned_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double size;
  if (!native_args(env, info, 1, argv) || napi_get_value_double(env, argv[0], &size) != napi_ok || !(size > 0) ||
      size > (double)(1u << 30)) {
    napi_throw_range_error(env, "EINVAL", "alignedBuffer(size): 0 < size <= 1 GiB");
    return NULL;
  }
  size_t n = ((size_t)size + ALIGN - 1) / ALIGN * ALIGN;
  void *p = NULL;
  if (posix_memalign(&p, ALIGN, n) != 0) {
    napi_throw_error(env, "ENOMEM", "alignedBuffer: out of memory");
    return NULL;
  }
  napi_value result;
  if (napi_create_external_buffer(env, (size_t)size, p, free_aligned, NULL, &result) != napi_ok) {
    free(p);
    napi_throw_error(env, "EIO", "alignedBuffer: cannot create the buffer");
    return NULL;
  }
  return result;
}

typedef struct {
  EVP_MD_CTX *ctx;
  int busy;
} sha_state;

static void free_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  sha_state *s = data;
  EVP_MD_CTX_free(s->ctx);
  free(s);
}

static napi_value sha256_create(napi_env env, napi_callback_info info) {
  (void)info;
  sha_state *s = calloc(1, sizeof *s);
  if (s == NULL || (s->ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1) {
    if (s != NULL) EVP_MD_CTX_free(s->ctx);
    free(s);
    napi_throw_error(env, "EIO", "sha256Create: OpenSSL failed");
    return NULL;
  }
  napi_value result;
  if (napi_create_external(env, s, free_state, NULL, &result) != napi_ok) {
    free_state(env, s, NULL);
    napi_throw_error(env, "EIO", "sha256Create: cannot create the state");
    return NULL;
  }
  return result;
}

static sha_state *get_state(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &p) != napi_ok)
    return NULL;
  return p;
}

typedef struct {
  async_job job; /* keeps the state and the buffer alive while the pool thread hashes */
  sha_state *state;
  const unsigned char *data;
  size_t length;
  int ok;
} update_job;

static void update_execute(napi_env env, void *data) {
  (void)env;
  update_job *j = data;
  j->ok = EVP_DigestUpdate(j->state->ctx, j->data, j->length) == 1;
}

static void update_complete(napi_env env, napi_status status, void *data) {
  update_job *j = data;
  j->state->busy = 0;
  napi_value arg;
  if (status != napi_ok || !j->ok)
    arg = coded_error(env, "EIO", "SHA-256 update failed");
  else
    napi_get_null(env, &arg);
  napi_value cb = async_job_end(env, &j->job);
  free(j);
  async_job_call(env, cb, 1, &arg);
}

static napi_value sha256_update(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  void *data = NULL;
  size_t length = 0;
  bool is_buffer = false;
  sha_state *s;
  if (!native_args(env, info, 3, argv) || (s = get_state(env, argv[0])) == NULL ||
      napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok || !native_is_function(env, argv[2])) {
    napi_throw_type_error(env, "EINVAL", "sha256Update(state, buffer, done)");
    return NULL;
  }
  if (s->busy) {
    napi_throw_error(env, "EBUSY", "sha256Update: an update of this state is in flight");
    return NULL;
  }
  update_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, "ENOMEM", "sha256Update: out of memory");
    return NULL;
  }
  j->state = s;
  j->data = data;
  j->length = length;
  if (!async_job_queue(env, &j->job, "nbdsnap:sha256", argv, 2, argv[2], update_execute, update_complete, j)) {
    free(j);
    napi_throw_error(env, "EIO", "sha256Update: cannot queue the work");
    return NULL;
  }
  s->busy = 1;
  return NULL;
}

static napi_value sha256_digest(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  sha_state *s;
  if (!native_args(env, info, 1, argv) || (s = get_state(env, argv[0])) == NULL) {
    napi_throw_type_error(env, "EINVAL", "sha256Digest(state)");
    return NULL;
  }
  if (s->busy) {
    napi_throw_error(env, "EBUSY", "sha256Digest: an update of this state is in flight");
    return NULL;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_MD_CTX *copy = EVP_MD_CTX_new();
  int ok = copy != NULL && EVP_MD_CTX_copy_ex(copy, s->ctx) == 1 && EVP_DigestFinal_ex(copy, md, &n) == 1;
  EVP_MD_CTX_free(copy);
  if (!ok) {
    napi_throw_error(env, "EIO", "sha256Digest: OpenSSL failed");
    return NULL;
  }
  napi_value result;
  void *out;
  if (napi_create_buffer_copy(env, n, md, &out, &result) != napi_ok) return NULL;
  return result;
}

void register_backup(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    NATIVE_METHOD("alignedBuffer", aligned_buffer),
    NATIVE_METHOD("sha256Create", sha256_create),
    NATIVE_METHOD("sha256Update", sha256_update),
    NATIVE_METHOD("sha256Digest", sha256_digest),
  };
  NATIVE_DEFINE(env, exports, props);
}
