// pcr-cage: starts one VMM (or helper) in a cage, as Firecracker's jailer does. Run by the worker as
// root; everything it does is in this file, in this order:
//   1. joins the VM's cgroups (the worker made them, with their limits);
//   2. opens the VM's TAP (or hands it to the VMM's uid) while it still may;
//   3. new mount, IPC, UTS and PID namespaces; forks: the child is PID 1 of the new PID namespace,
//      the parent stays outside, forwards signals and exits as the child did;
//   4. the child builds a root of its own on a tmpfs: bind mounts of exactly the paths it is given
//      (read-only unless --rw), a few device nodes, a fresh /proc (no /tmp, no /etc, no /home); pivot_root into it, detaches the
//      old root, makes / read-only;
//   5. RLIMIT_NOFILE; drops every capability from the bounding set; no supplementary groups; the
//      VM's gid and uid; no_new_privs; parent-death signal; a seccomp filter denying what no VMM
//      needs (mount, ptrace, namespaces, modules, keyrings, bpf, ...); execs the VMM.
// Usage: pcr-cage --uid N --gid N --root DIR [--ro PATH]... [--rw PATH]... [--dev PATH]...
//                 [--cgroup DIR]... [--nofile N] [--tap NAME:FD]... [--tap-owner NAME]...
//                 [--chdir DIR] -- PROGRAM [ARG]...
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ITEMS 64

static void die(const char *what, const char *detail) {
  fprintf(stderr, "pcr-cage: %s%s%s: %s\n", what, detail ? " " : "", detail ? detail : "", strerror(errno));
  _exit(125);
}

static void usage(const char *why) {
  fprintf(stderr, "pcr-cage: %s\n", why);
  _exit(125);
}

struct options {
  long uid, gid, nofile;
  const char *root, *chdir_to;
  const char *ro[MAX_ITEMS], *rw[MAX_ITEMS], *dev[MAX_ITEMS], *cgroup[MAX_ITEMS], *tap[MAX_ITEMS], *tap_owner[MAX_ITEMS];
  int n_ro, n_rw, n_dev, n_cgroup, n_tap, n_tap_owner;
  char **argv;
};

static long number(const char *text, long min, long max, const char *what) {
  char *end;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno || *end || end == text || value < min || value > max) usage(what);
  return value;
}

static void add(const char **list, int *count, const char *value) {
  if (*count >= MAX_ITEMS) usage("too many items of one option");
  list[(*count)++] = value;
}

static void parse(int argc, char **argv, struct options *o) {
  memset(o, 0, sizeof *o);
  o->uid = o->gid = -1;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (strcmp(flag, "--") == 0) {
      o->argv = &argv[i + 1];
      break;
    }
    if (i + 1 >= argc) usage("an option lacks its value");
    const char *value = argv[++i];
    if (strcmp(flag, "--uid") == 0) o->uid = number(value, 1, 0x7fffffff, "--uid must be a uid other than 0");
    else if (strcmp(flag, "--gid") == 0) o->gid = number(value, 1, 0x7fffffff, "--gid must be a gid other than 0");
    else if (strcmp(flag, "--nofile") == 0) o->nofile = number(value, 16, 1 << 20, "--nofile must be 16..1048576");
    else if (strcmp(flag, "--root") == 0) o->root = value;
    else if (strcmp(flag, "--chdir") == 0) o->chdir_to = value;
    else if (strcmp(flag, "--ro") == 0) add(o->ro, &o->n_ro, value);
    else if (strcmp(flag, "--rw") == 0) add(o->rw, &o->n_rw, value);
    else if (strcmp(flag, "--dev") == 0) add(o->dev, &o->n_dev, value);
    else if (strcmp(flag, "--cgroup") == 0) add(o->cgroup, &o->n_cgroup, value);
    else if (strcmp(flag, "--tap") == 0) add(o->tap, &o->n_tap, value);
    else if (strcmp(flag, "--tap-owner") == 0) add(o->tap_owner, &o->n_tap_owner, value);
    else usage("unknown option");
  }
  if (!o->argv || !o->argv[0]) usage("no program after --");
  if (o->uid < 1 || o->gid < 1) usage("--uid and --gid are required");
  if (!o->root || o->root[0] != '/') usage("--root must be an absolute path");
  const char **lists[] = {o->ro, o->rw, o->dev, o->cgroup};
  int counts[] = {o->n_ro, o->n_rw, o->n_dev, o->n_cgroup};
  for (int l = 0; l < 4; l++)
    for (int i = 0; i < counts[l]; i++)
      if (lists[l][i][0] != '/' || strstr(lists[l][i], "/../") || strstr(lists[l][i], "/./")) usage("paths must be absolute and plain");
}

/**
 * Joins one cgroup. On a v1 hierarchy it writes "0" (this thread) to `tasks`: this process is
 * single-threaded, so that moves all of it, and the kernel skips the global threadgroup lock for
 * the current thread; writing the pid to `cgroup.procs` takes that lock, which waits out an RCU
 * grace period (7-30 ms measured here) on every create. v2 has no `tasks`: `cgroup.procs` there.
 */
static void join_cgroup(const char *dir) {
  char path[4096], pid[32];
  snprintf(path, sizeof path, "%s/tasks", dir);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  int length = snprintf(pid, sizeof pid, "0\n");
  if (fd < 0 && errno == ENOENT) {
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    length = snprintf(pid, sizeof pid, "%d\n", getpid());
  }
  if (fd < 0) die("cannot open", path);
  if (write(fd, pid, length) != length) die("cannot join", dir);
  close(fd);
}

/** Opens TAP `name` as the VMM would (vnet header, no packet info) and puts it at `fd`. */
static void open_tap(const char *spec) {
  char name[IFNAMSIZ];
  const char *colon = strrchr(spec, ':');
  if (!colon || colon == spec || (size_t)(colon - spec) >= IFNAMSIZ) usage("--tap takes NAME:FD");
  memcpy(name, spec, colon - spec);
  name[colon - spec] = 0;
  int target = (int)number(colon + 1, 3, 1023, "--tap FD must be 3..1023");
  int tun = open("/dev/net/tun", O_RDWR);
  if (tun < 0) die("cannot open", "/dev/net/tun");
  struct ifreq request = {0};
  snprintf(request.ifr_name, IFNAMSIZ, "%s", name);
  request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(tun, TUNSETIFF, &request) < 0) die("cannot attach to TAP", name);
  if (tun != target) {
    if (dup2(tun, target) < 0) die("cannot place the TAP at its descriptor", colon + 1);
    close(tun);
  }
}

/** Makes the persistent TAP `name` usable by the VMM's uid and gid (for a VMM that opens it by name). */
static void own_tap(const char *name, long uid, long gid) {
  int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (tun < 0) die("cannot open", "/dev/net/tun");
  struct ifreq request = {0};
  snprintf(request.ifr_name, IFNAMSIZ, "%s", name);
  request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(tun, TUNSETIFF, &request) < 0) die("cannot attach to TAP", name);
  if (ioctl(tun, TUNSETOWNER, uid) < 0 || ioctl(tun, TUNSETGROUP, gid) < 0) die("cannot hand over TAP", name);
  close(tun);
  // Up now: bringing it up (SIOCSIFFLAGS) needs CAP_NET_ADMIN, which the VMM will not have.
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq flags = {0};
  snprintf(flags.ifr_name, IFNAMSIZ, "%s", name);
  if (sock < 0 || ioctl(sock, SIOCGIFFLAGS, &flags) < 0) die("cannot read the flags of TAP", name);
  flags.ifr_flags |= IFF_UP;
  if (ioctl(sock, SIOCSIFFLAGS, &flags) < 0) die("cannot bring up TAP", name);
  close(sock);
}

static void make_parents(char *path) {
  for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
    *slash = 0;
    if (mkdir(path, 0755) < 0 && errno != EEXIST) die("cannot make", path);
    *slash = '/';
  }
}

/** Binds `source` at the same path under `root`: read-only, or writable; never setuid; devices only for --dev. */
static void bind_path(const char *root, const char *source, int writable, int device) {
  char target[4096];
  struct stat info;
  if (stat(source, &info) < 0) die("cannot bind", source);
  if ((size_t)snprintf(target, sizeof target, "%s%s", root, source) >= sizeof target) usage("path too long");
  make_parents(target);
  if (S_ISDIR(info.st_mode)) {
    if (mkdir(target, 0755) < 0 && errno != EEXIST) die("cannot make", target);
  } else {
    int fd = open(target, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) die("cannot make", target);
    close(fd);
  }
  if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0) die("cannot bind", source);
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (writable ? 0 : MS_RDONLY) | (device ? MS_NOEXEC : MS_NODEV);
  if (mount(NULL, target, NULL, flags, NULL) < 0) die("cannot restrict", source);
}

/** The host's /bin, /lib, ... as they are: symbolic links into /usr (merged /usr), else read-only binds. */
static void top_level_links(const char *root) {
  const char *names[] = {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char link[4096], target[4096];
    ssize_t length = readlink(names[i], link, sizeof link - 1);
    if (length < 0) {
      struct stat info;
      if (stat(names[i], &info) == 0 && S_ISDIR(info.st_mode)) bind_path(root, names[i], 0, 0);
      continue;
    }
    link[length] = 0;
    snprintf(target, sizeof target, "%s%s", root, names[i]);
    if (symlink(link, target) < 0) die("cannot link", target);
  }
}

static void build_root(const struct options *o) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("cannot make mounts private", NULL);
  if (mount("tmpfs", o->root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m") < 0) die("cannot mount the root on", o->root);
  top_level_links(o->root);
  for (int i = 0; i < o->n_ro; i++) bind_path(o->root, o->ro[i], 0, 0);
  for (int i = 0; i < o->n_rw; i++) bind_path(o->root, o->rw[i], 1, 0);
  const char *always[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"};
  for (size_t i = 0; i < sizeof always / sizeof always[0]; i++) bind_path(o->root, always[i], 1, 1);
  for (int i = 0; i < o->n_dev; i++) bind_path(o->root, o->dev[i], 1, 1);
  char path[4096];
  snprintf(path, sizeof path, "%s/proc", o->root);
  if (mkdir(path, 0555) < 0) die("cannot make", path);
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die("cannot mount", path);
  // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached from there.
  if (chdir(o->root) < 0) die("cannot enter", o->root);
  if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root failed", NULL);
  if (umount2(".", MNT_DETACH) < 0) die("cannot detach the old root", NULL);
  if (chdir("/") < 0) die("cannot enter", "/");
  if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0) die("cannot make / read-only", NULL);
}

#define DENY(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM)

/** Denies, with EPERM, calls no VMM makes and every escape needs; other architectures and x32 are killed. */
static void install_seccomp(void) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), // the x32 ABI
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      // clone3 cannot be filtered by flags: ENOSYS makes libc fall back to clone, which can.
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
               CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      DENY(__NR_ptrace), DENY(__NR_process_vm_readv), DENY(__NR_process_vm_writev), DENY(__NR_mount), DENY(__NR_umount2),
      DENY(__NR_pivot_root), DENY(__NR_chroot), DENY(__NR_unshare), DENY(__NR_setns), DENY(__NR_kexec_load),
      DENY(__NR_kexec_file_load), DENY(__NR_init_module), DENY(__NR_finit_module), DENY(__NR_delete_module), DENY(__NR_bpf),
      DENY(__NR_perf_event_open), DENY(__NR_keyctl), DENY(__NR_add_key), DENY(__NR_request_key), DENY(__NR_reboot),
      DENY(__NR_swapon), DENY(__NR_swapoff), DENY(__NR_acct), DENY(__NR_quotactl), DENY(__NR_open_by_handle_at),
      DENY(__NR_name_to_handle_at), DENY(__NR_userfaultfd), DENY(__NR_iopl), DENY(__NR_ioperm), DENY(__NR_syslog),
      DENY(__NR_vhangup), DENY(__NR_lookup_dcookie), DENY(__NR_fsopen), DENY(__NR_fsmount), DENY(__NR_move_mount),
      DENY(__NR_open_tree), DENY(__NR_settimeofday), DENY(__NR_clock_settime), DENY(__NR_adjtimex), DENY(__NR_clock_adjtime),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) < 0) die("cannot install the seccomp filter", NULL);
}

static void drop_privileges(const struct options *o) {
  if (o->nofile) {
    struct rlimit limit = {.rlim_cur = o->nofile, .rlim_max = o->nofile};
    if (setrlimit(RLIMIT_NOFILE, &limit) < 0) die("cannot limit open files", NULL);
  }
  for (int cap = 0; cap <= 63; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("cannot drop a capability from the bounding set", NULL);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("cannot clear ambient capabilities", NULL);
  if (setgroups(0, NULL) < 0) die("cannot drop supplementary groups", NULL);
  if (setresgid(o->gid, o->gid, o->gid) < 0) die("cannot set the gid", NULL);
  if (setresuid(o->uid, o->uid, o->uid) < 0) die("cannot set the uid", NULL);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("cannot set no_new_privs", NULL);
}

static pid_t child;

static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

/** Outside the namespace: waits for the VMM and ends as it ended. */
static int parent(void) {
  int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) signal(forwarded[i], forward);
  int status;
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR) die("waitpid failed", NULL);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int sig = WTERMSIG(status);
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(sig, SIG_DFL);
  sigset_t all;
  sigemptyset(&all);
  sigaddset(&all, sig);
  sigprocmask(SIG_UNBLOCK, &all, NULL);
  raise(sig);
  return 128 + sig;
}

int main(int argc, char **argv) {
  struct options o;
  parse(argc, argv, &o);
  if (geteuid() != 0) usage("must run as root (it drops to --uid)");
  for (int i = 0; i < o.n_cgroup; i++) join_cgroup(o.cgroup[i]);
  for (int i = 0; i < o.n_tap; i++) open_tap(o.tap[i]);
  for (int i = 0; i < o.n_tap_owner; i++) own_tap(o.tap_owner[i], o.uid, o.gid);
  if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID) < 0) die("cannot make namespaces", NULL);
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) < 0) die("pipe failed", NULL);
  child = fork();
  if (child < 0) die("fork failed", NULL);
  if (child > 0) {
    close(alive[0]);
    return parent();
  }
  close(alive[1]);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("cannot set the parent-death signal", NULL);
  if (sethostname("pcr-vmm", 7) < 0) die("cannot set the host name", NULL);
  build_root(&o);
  drop_privileges(&o);
  // Changing credentials cleared the parent-death signal: set again, then make sure the parent
  // did not end before (its end of the pipe closed).
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("cannot set the parent-death signal", NULL);
  struct pollfd gone = {.fd = alive[0], .events = POLLIN};
  if (poll(&gone, 1, 0) > 0) _exit(125);
  if (chdir(o.chdir_to ? o.chdir_to : "/") < 0) die("cannot enter", o.chdir_to);
  install_seccomp();
  extern char **environ;
  execve(o.argv[0], o.argv, environ);
  die("cannot run", o.argv[0]);
}
