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

#define ALIGN 4096

static void free_aligned(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value aligned_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double size;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_double(env, argv[0], &size) != napi_ok || !(size > 0) || size > (double)(1u << 30)) {
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
  napi_async_work work;
  napi_ref state_ref;
  napi_ref buffer_ref;
  napi_ref callback;
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
  napi_value cb, global, arg;
  if (status != napi_ok || !j->ok) {
    napi_value msg, code;
    napi_create_string_utf8(env, "SHA-256 update failed", NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, "EIO", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &arg);
  } else {
    napi_get_null(env, &arg);
  }
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  napi_delete_reference(env, j->callback);
  napi_delete_reference(env, j->buffer_ref);
  napi_delete_reference(env, j->state_ref);
  napi_delete_async_work(env, j->work);
  free(j);
  napi_call_function(env, global, cb, 1, &arg, NULL);
}

static napi_value sha256_update(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_valuetype cbtype;
  void *data = NULL;
  size_t length = 0;
  bool is_buffer = false;
  sha_state *s;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      (s = get_state(env, argv[0])) == NULL || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok || napi_typeof(env, argv[2], &cbtype) != napi_ok ||
      cbtype != napi_function) {
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
  napi_value name;
  napi_create_string_utf8(env, "nbdsnap:sha256", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[0], 1, &j->state_ref) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &j->buffer_ref) != napi_ok ||
      napi_create_reference(env, argv[2], 1, &j->callback) != napi_ok ||
      napi_create_async_work(env, NULL, name, update_execute, update_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    napi_throw_error(env, "EIO", "sha256Update: cannot queue the work");
    return NULL;
  }
  s->busy = 1;
  return NULL;
}

static napi_value sha256_digest(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  sha_state *s;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      (s = get_state(env, argv[0])) == NULL) {
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
    {"alignedBuffer", NULL, aligned_buffer, NULL, NULL, NULL, napi_default_method, NULL},
    {"sha256Create", NULL, sha256_create, NULL, NULL, NULL, napi_default_method, NULL},
    {"sha256Update", NULL, sha256_update, NULL, NULL, NULL, napi_default_method, NULL},
    {"sha256Digest", NULL, sha256_digest, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
