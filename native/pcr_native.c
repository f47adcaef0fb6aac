// pcr_native: the two kernel answers Node cannot give us, as a tiny N-API addon built by the
// setup (gcc, no node-gyp). Kept small on purpose: every line here runs in the root worker.
//
//   peerCred(fd)            -> { pid, uid, gid }   SO_PEERCRED of a connected unix socket
//   openBeneath(dir, path)  -> fd                  openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
//                                                  RESOLVE_NO_MAGICLINKS), O_RDONLY|O_CLOEXEC
//
// Errors are thrown as Error objects whose `code` is the errno name (e.g. "ELOOP", "EXDEV").
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <malloc.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

static napi_value throw_errno(napi_env env, int err, const char *what) {
  char message[256];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  const char *name = err == ELOOP ? "ELOOP" : err == EXDEV ? "EXDEV" : err == ENOENT ? "ENOENT"
                   : err == ENOTDIR ? "ENOTDIR" : err == EACCES ? "EACCES" : err == EBADF ? "EBADF"
                   : err == ENOTSOCK ? "ENOTSOCK" : err == ENOSYS ? "ENOSYS" : err == EAGAIN ? "EAGAIN"
                   : err == EINVAL ? "EINVAL" : err == ENOSPC ? "ENOSPC" : err == EOPNOTSUPP ? "EOPNOTSUPP"
                   : err == EFBIG ? "EFBIG" : "EIO";
  napi_throw_error(env, name, message);
  return NULL;
}

static int int_arg(napi_env env, napi_callback_info info, size_t index, size_t wanted, int32_t *out) {
  size_t argc = wanted;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < wanted) return -1;
  return napi_get_value_int32(env, argv[index], out) == napi_ok ? 0 : -1;
}

static napi_value set_int(napi_env env, napi_value object, const char *key, int64_t value) {
  napi_value number;
  napi_create_int64(env, value, &number);
  napi_set_named_property(env, object, key, number);
  return object;
}

static napi_value peer_cred(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (int_arg(env, info, 0, 1, &fd) != 0) {
    napi_throw_type_error(env, NULL, "peerCred(fd: number)");
    return NULL;
  }
  struct ucred cred;
  socklen_t length = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) return throw_errno(env, errno, "SO_PEERCRED");
  napi_value result;
  napi_create_object(env, &result);
  set_int(env, result, "pid", cred.pid);
  set_int(env, result, "uid", cred.uid);
  return set_int(env, result, "gid", cred.gid);
}

static napi_value open_beneath(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t dirfd;
  char path[4096];
  size_t length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &dirfd) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], path, sizeof path, &length) != napi_ok || length >= sizeof path - 1) {
    napi_throw_type_error(env, NULL, "openBeneath(dirFd: number, relativePath: string)");
    return NULL;
  }
  if (strlen(path) != length) {  // an embedded NUL would silently shorten the path
    napi_throw_type_error(env, NULL, "openBeneath: path contains a NUL byte");
    return NULL;
  }
  struct open_how how = {
      .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY,
      .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
  };
  long fd;
  do fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
  while (fd < 0 && errno == EAGAIN);  // EAGAIN: a rename raced the lookup; safe to retry
  if (fd < 0) return throw_errno(env, errno, "openat2");
  napi_value result;
  napi_create_int32(env, (int32_t)fd, &result);
  return result;
}

static napi_value trim_memory(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, malloc_trim(0) == 1, &result);
  return result;
}

static napi_value allocate(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  int64_t bytes;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &bytes) != napi_ok || bytes < 0) {
    napi_throw_type_error(env, NULL, "allocate(fd: number, bytes: number)");
    return NULL;
  }
  int result;
  do result = fallocate(fd, 0, 0, (off_t)bytes);
  while (result != 0 && errno == EINTR);
  if (result != 0) return throw_errno(env, errno, "fallocate");
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"peerCred", NULL, peer_cred, NULL, NULL, NULL, napi_enumerable, NULL},
      {"openBeneath", NULL, open_beneath, NULL, NULL, NULL, napi_enumerable, NULL},
      {"trimMemory", NULL, trim_memory, NULL, NULL, NULL, napi_enumerable, NULL},
      {"allocate", NULL, allocate, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
