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
 * usage: child DIR MARKER [stop-delay=MS] [listen=PORT]
 *
 * stop-delay=MS: on SIGTERM, keep running for MS milliseconds (further signals but SIGKILL are
 * ignored meanwhile), then exit 0 — a program that takes that long to stop (figure 7's stack).
 *
 * listen=PORT: listen on 127.0.0.1:PORT (before publishing the start time, so "up" means
 * listening) and serve each connection once: read what the client sends (at most 1 s), answer
 * "HTTP/1.0 200 OK" with a 3-byte body if it sent anything, and close. A TCP check (connect,
 * close) and an HTTP check (GET) both pass. Every accepted connection is counted in the file
 * DIR/.acc.PID (the count in decimal, rewritten in place), so the benchmark knows how many checks
 * really arrived. The leading dot keeps the file out of the start-time files.
 *
 * usage: child --supervise N DIR MARKER
 *
 * The floor the benchmark compares against: the least a supervisor can do. It fork+execs N
 * copies of itself as `child DIR MARKER` (argv[0] must be a path), then blocks in waitpid() and
 * respawns each child the moment it is reaped. No configuration, no state, no output.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static volatile sig_atomic_t termed;

static void on_term(int sig)
{
    (void)sig;
    termed = 1;
}

/* Sleeps MS milliseconds whatever signals arrive, then exits 0. */
static _Noreturn void stop_after(long ms)
{
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
    _exit(0);
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0)
        return -1;
    return fd;
}

static _Noreturn void serve(int ls, const char *dir, long stop_ms)
{
    static const char answer[] =
        "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    char path[4096], buf[2048];
    unsigned long count = 0;
    snprintf(path, sizeof path, "%s/.acc.%ld", dir, (long)getpid());
    int cf = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    for (;;) {
        if (termed && stop_ms >= 0)
            stop_after(stop_ms);
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        struct timeval tv = {1, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        count++;
        if (cf >= 0) {
            int n = snprintf(buf, sizeof buf, "%lu\n", count);
            (void)!pwrite(cf, buf, (size_t)n, 0);
        }
        if (read(c, buf, sizeof buf) > 0)
            (void)!write(c, answer, sizeof answer - 1);
        close(c);
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

    long stop_ms = -1;
    int port = 0;
    for (int i = 3; i < argc; i++) {
        if (strncmp(argv[i], "stop-delay=", 11) == 0)
            stop_ms = atol(argv[i] + 11);
        else if (strncmp(argv[i], "listen=", 7) == 0)
            port = atoi(argv[i] + 7);
    }
    if (stop_ms >= 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_term;
        sigaction(SIGTERM, &sa, NULL);
    } else {
        signal(SIGTERM, SIG_DFL);
    }
    int ls = -1;
    if (port > 0 && (ls = listen_on(port)) < 0) {
        perror("child: listen");
        return 4;
    }
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

    if (ls >= 0)
        serve(ls, argv[1], stop_ms);
    for (;;) {
        pause();
        if (termed)
            stop_after(stop_ms);
    }
}
