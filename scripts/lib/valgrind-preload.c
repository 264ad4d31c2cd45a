/*
 * valgrind-preload.so: lets vimanad run under valgrind. scripts/
 * instructions-per-call.sh preloads it there, and nowhere else. Two fixes:
 *
 * 1. Valgrind runs one thread at a time and hands the turn over only around
 *    the system calls it knows may block. Valgrind 3.19 (Debian 12) does not
 *    count io_uring_enter among them (glommio issue #582, KDE bug 463859), so
 *    a glommio shard that sleeps in io_uring_enter(GETEVENTS, min_complete >
 *    0) keeps the turn while it sleeps and every other thread stops:
 *    vimanad's control thread never serves CRI, SIGTERM is never handled.
 *    This wraps libc's syscall(2), through which glommio's liburing makes
 *    the call: a waiting io_uring_enter first submits (without waiting), then
 *    waits in poll(2) on the ring's descriptor (which valgrind knows may
 *    block; the ring is readable once a completion is queued), then makes
 *    the original call, which now returns at once. Every other system call
 *    is passed through. It adds one poll and one io_uring_enter per shard
 *    sleep, the same for every binary measured. Waits with
 *    IORING_ENTER_EXT_ARG (a timeout in the call) are passed through as they
 *    are (glommio 0.9 makes none).
 *
 * 2. vimanad spawns the pod's shim as /proc/self/exe. Under valgrind that is
 *    valgrind's own tool binary ("You cannot run '/proc/self/exe'
 *    directly"). posix_spawn(p) and execve/execvp of "/proc/self/exe" are
 *    given the binary's own path instead (readlink of /proc/self/exe, which
 *    valgrind answers with the client's path); the shim then runs natively
 *    (valgrind does not trace children unless asked).
 *
 * 3. Valgrind 3.19 has no openat2 (it says "unhandled amd64-linux syscall:
 *    437" and returns ENOSYS), which vimanad uses to open a component's
 *    socket beneath its directory (src/pool/socket.rs). When openat2 says
 *    ENOSYS, this falls back to openat(2) with the same flags (and
 *    O_NOFOLLOW for RESOLVE_NO_SYMLINKS). It happens once per connection to
 *    a component and per readiness probe, not per call.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/io_uring.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <string.h>
#include <unistd.h>
#include <stdarg.h>
#include <sys/syscall.h>

static long (*real_syscall)(long, ...);

long syscall(long nr, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real_syscall)
        real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");

    if (nr == SYS_openat2) {
        long fd = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
        const struct open_how *how = (const struct open_how *)a[2];
        int nofollow = (how->resolve & RESOLVE_NO_SYMLINKS) ? O_NOFOLLOW : 0;
        return openat((int)a[0], (const char *)a[1], (int)how->flags | nofollow,
                      (mode_t)how->mode);
    }
    unsigned flags = (unsigned)a[3];
    if (nr != SYS_io_uring_enter || !(flags & IORING_ENTER_GETEVENTS) || a[2] <= 0 ||
        (flags & IORING_ENTER_EXT_ARG))
        return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);

    long submitted = 0;
    if (a[1] > 0) {
        submitted = real_syscall(nr, a[0], a[1], 0L, (long)(flags & ~IORING_ENTER_GETEVENTS),
                                 a[4], a[5]);
        if (submitted < 0)
            return submitted;
    }
    struct pollfd ring = {.fd = (int)a[0], .events = POLLIN};
    if (poll(&ring, 1, -1) < 0) {
        /* EINTR (a signal): what the original call would have said. */
        if (submitted > 0)
            return submitted;
        return -1;
    }
    long got = real_syscall(nr, a[0], 0L, a[2], a[3], a[4], a[5]);
    if (got < 0)
        return submitted > 0 ? submitted : got;
    return submitted + got;
}

/* The binary's own path for "/proc/self/exe", else `path` itself. */
static const char *own_path(const char *path)
{
    static char exe[PATH_MAX];
    if (!path || strcmp(path, "/proc/self/exe") != 0)
        return path;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return path;
    exe[n] = 0;
    return exe;
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    static int (*real)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                       const posix_spawnattr_t *, char *const[], char *const[]);
    if (!real)
        real = dlsym(RTLD_NEXT, "posix_spawn");
    return real(pid, own_path(path), actions, attr, argv, envp);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    static int (*real)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                       const posix_spawnattr_t *, char *const[], char *const[]);
    if (!real)
        real = dlsym(RTLD_NEXT, "posix_spawnp");
    return real(pid, own_path(file), actions, attr, argv, envp);
}

int execve(const char *path, char *const argv[], char *const envp[])
{
    static int (*real)(const char *, char *const[], char *const[]);
    if (!real)
        real = dlsym(RTLD_NEXT, "execve");
    return real(own_path(path), argv, envp);
}

int execvp(const char *file, char *const argv[])
{
    static int (*real)(const char *, char *const[]);
    if (!real)
        real = dlsym(RTLD_NEXT, "execvp");
    return real(own_path(file), argv);
}
