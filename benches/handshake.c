/*
 * The floor for `cargo bench --bench start`: the least a launcher can do and still promise what
 * `warden start` promises -- that when it exits 0, the pidfile names a live daemon.
 *
 *   handshake PIDFILE
 *
 * Opens and locks PIDFILE (O_NOFOLLOW, flock), creates a CLOEXEC pipe, forks; the child calls
 * setsid and forks again, the intermediate leaves with _exit, and the daemon writes its pid
 * through the locked descriptor, points fds 0-2 at /dev/null, writes "R" into the pipe and sleeps
 * until a signal. The launcher exits 0 on "R", 1 on end of file. No configuration, no signal
 * hygiene, no logging, no supervisor: the process creations and the handshake only.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: handshake PIDFILE\n");
        return 2;
    }
    int pf = open(argv[1], O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (pf < 0 || flock(pf, LOCK_EX | LOCK_NB) < 0) {
        perror(argv[1]);
        return 1;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("pipe2");
        return 1;
    }
    pid_t a = fork();
    if (a < 0) {
        perror("fork");
        return 1;
    }
    if (a > 0) {
        close(p[1]);
        waitpid(a, NULL, 0);
        char c;
        return read(p[0], &c, 1) == 1 && c == 'R' ? 0 : 1;
    }
    close(p[0]);
    setsid();
    if (fork() != 0)
        _exit(0);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (ftruncate(pf, 0) < 0 || pwrite(pf, buf, n, 0) != n)
        _exit(1);
    int null = open("/dev/null", O_RDWR);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0)
        _exit(1);
    close(null);
    if (write(p[1], "R", 1) != 1)
        _exit(1);
    close(p[1]);
    for (;;)
        pause();
}
