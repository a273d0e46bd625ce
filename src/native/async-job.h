/*
 * async-job.h: the N-API setup shared by the helper's functions that run on a thread of libuv's
 * pool and then call a JavaScript callback (writeBatch, sha256Update, ...).
 *
 * A job struct embeds an async_job (anywhere in it) and passes itself as `data`:
 *
 *   typedef struct { async_job job; ...inputs and results... } my_job;
 *
 *   // the exported function, after reading its arguments into j:
 *   napi_value keep[] = {argv[1]};   // values whose memory the pool thread uses
 *   if (!async_job_queue(env, &j->job, "fsx.myJob", keep, 1, argv[3], my_execute, my_complete, j)) {
 *     my_free(env, j);   // it calls async_job_release(env, &j->job): safe on any state
 *     napi_throw_error(env, "EIO", "myJob: cannot queue the work");
 *     return NULL;
 *   }
 *
 *   // on the loop thread, when the pool thread is done:
 *   static void my_complete(napi_env env, napi_status status, void *data) {
 *     my_job *j = data;
 *     napi_value result = ...;   // from j's results; status != napi_ok means the job did not run
 *     napi_value cb = async_job_end(env, &j->job);
 *     my_free(env, j);
 *     async_job_call(env, cb, 1, &result);
 *   }
 *
 * The callback is called last, after the job is freed, so whatever it does (even queue the next
 * job on the same data) finds nothing of this one left.
 */
#ifndef NBDSNAP_ASYNC_JOB_H
#define NBDSNAP_ASYNC_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <node_api.h>
#include "napi-util.h"

#define ASYNC_JOB_KEEP 4 /* at most this many kept values */

typedef struct {
  napi_async_work work;
  napi_ref keep[ASYNC_JOB_KEEP]; /* JS values kept alive while the pool thread uses their memory */
  napi_ref callback;
} async_job;

/* Deletes the job's references and its async work, those it has; safe to call again. */
static inline void async_job_release(napi_env env, async_job *job) {
  for (int i = 0; i < ASYNC_JOB_KEEP; i++) {
    if (job->keep[i] != NULL) napi_delete_reference(env, job->keep[i]);
    job->keep[i] = NULL;
  }
  if (job->callback != NULL) napi_delete_reference(env, job->callback);
  job->callback = NULL;
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  job->work = NULL;
}

/*
 * Keeps keep[0 .. nkeep) and the callback, then queues execute (on a pool thread) and complete (on
 * the loop thread) with `data`. The job must start zeroed (calloc). False when any step fails:
 * nothing is queued, nothing is thrown, and what was made is released.
 */
static inline bool async_job_queue(napi_env env, async_job *job, const char *resource, const napi_value *keep,
                                   size_t nkeep, napi_value callback, napi_async_execute_callback execute,
                                   napi_async_complete_callback complete, void *data) {
  napi_value name;
  bool ok = nkeep <= ASYNC_JOB_KEEP && napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &name) == napi_ok;
  for (size_t i = 0; ok && i < nkeep; i++) ok = napi_create_reference(env, keep[i], 1, &job->keep[i]) == napi_ok;
  ok = ok && napi_create_reference(env, callback, 1, &job->callback) == napi_ok &&
       napi_create_async_work(env, NULL, name, execute, complete, data, &job->work) == napi_ok &&
       napi_queue_async_work(env, job->work) == napi_ok;
  if (!ok) async_job_release(env, job);
  return ok;
}

/* In the complete callback: the JS callback, with the job's references and async work released. */
static inline napi_value async_job_end(napi_env env, async_job *job) {
  napi_value cb;
  napi_get_reference_value(env, job->callback, &cb);
  async_job_release(env, job);
  return cb;
}

/* Calls cb(argv[0 .. argc)) with the global object as `this`. */
static inline void async_job_call(napi_env env, napi_value cb, size_t argc, const napi_value *argv) {
  napi_value global;
  napi_get_global(env, &global);
  napi_call_function(env, global, cb, argc, argv, NULL);
}

#endif
