/*
 * The supervised child of `cargo bench --bench supervise` (benches/supervise.rs compiles it with
 * `cc -O2` at run time).
 *
 * usage: child DIR MARKER
 *
 * First thing at startup it reads CLOCK_MONOTONIC, then publishes "NS\n" (that time in
 * nanoseconds) as the file DIR/PID, written to DIR/.PID.tmp and renamed so that a reader never
 * sees a partial file. The benchmark compares that time with its own CLOCK_MONOTONIC readings,
 * so start latencies carry no polling error. Then it waits for signals forever with pause().
 *
 * MARKER is not used here: it only sits in argv so that the benchmark can find (and, at the end,
 * kill) every child it caused to exist, whoever their parent is by then.
 *
 * SIGTERM is reset to its default action and unblocked, so the child always "obeys TERM" whatever
 * mask or disposition a supervisor leaked into it.
 *
 * usage: child --supervise N DIR MARKER
 *
 * The floor the benchmark compares against: the least a supervisor can do. It fork+execs N
 * copies of itself as `child DIR MARKER` (argv[0] must be a path), then blocks in waitpid() and
 * respawns each child the moment it is reaped. No configuration, no state, no output.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void spawn(char *self, char *dir, char *marker)
{
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = {self, dir, marker, NULL};
        execv(self, args);
        _exit(127);
    }
}

static _Noreturn void supervise(char **argv)
{
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++)
        spawn(argv[0], argv[3], argv[4]);
    for (;;) {
        pid_t pid = waitpid(-1, NULL, 0);
        if (pid > 0)
            spawn(argv[0], argv[3], argv[4]);
        else if (errno == ECHILD)
            pause();
    }
}

int main(int argc, char **argv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc >= 5 && strcmp(argv[1], "--supervise") == 0)
        supervise(argv);
    if (argc < 3) {
        static const char usage[] = "usage: child DIR MARKER | child --supervise N DIR MARKER\n";
        (void)!write(2, usage, sizeof usage - 1);
        return 2;
    }

    signal(SIGTERM, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &set, NULL);

    char tmp[4096], path[4096], line[32];
    long pid = (long)getpid();
    if (snprintf(tmp, sizeof tmp, "%s/.%ld.tmp", argv[1], pid) >= (int)sizeof tmp ||
        snprintf(path, sizeof path, "%s/%ld", argv[1], pid) >= (int)sizeof path)
        return 2;
    int n = snprintf(line, sizeof line, "%lld\n",
                     (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return 3;
    if (write(fd, line, (size_t)n) != n || close(fd) != 0 || rename(tmp, path) != 0)
        return 3;

    for (;;)
        pause();
}
