// FANGS eBPF sensor, loaded by BCC (fangs/runner/sensor.py).
//
// Tracepoints and helpers only: the machine's kernel headers (6.1) do not
// describe the running kernel (6.18), so no kernel struct is ever read.  The
// only structures dereferenced are user ABI ones (sockaddr, user_msghdr,
// iovec, open_how), read with bpf_probe_read_user.
//
// Filtering: a process is watched when its cgroup ancestor at level L is the
// /fangs parent directory (config[0]) and its ancestor at level L+1 is a
// registered run cgroup (runs map).  Host processes pay one array lookup and
// one helper call.
//
// Records are variable-size (built in a per-CPU scratch buffer, then copied
// with ringbuf_output), little-endian; the layout is mirrored by
// fangs/runner/decode.py.  Keep the two in sync.

#include <uapi/linux/ptrace.h>

#define MAX_SLOTS 64
#define PATH_CAP 256
#define LPM_CAP 248   // the kernel caps LPM trie key data at 256 bytes: slot + 248
#define ARGV_N 16
#define ARG_CAP 128
#define DATA_CAP 2048
#define ANC_N 5
#define AT_FDCWD_ -100

// Record types: 1..5 are the wire's event types; >= 100 are internal.
#define T_FILE 1
#define T_EXEC 2
#define T_NET 3
#define T_DNS 4
#define T_TLS 5
#define T_CHDIR 100
#define T_FORK 101
#define T_EXIT 102
#define T_FCHDIR 103
#define T_DIRFD 104

#define O_DIRECTORY_ 0200000
#define O_PATH_ 010000000

#define TAG_INTERESTING 1
#define TAG_CRED 2

// File record flags (the `resolve` byte).
#define RESOLVE_NEEDED 1

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 16384
#endif

struct config_t {
    u64 parent_id;     // inode of <cgroup2>/fangs
    u32 parent_level;  // its depth below the cgroup2 root (1 for /fangs)
    u32 others;        // runs registered on cgroups outside the parent
};

struct run_t {
    u32 slot;
    u8 run_id[16];
};

struct lpm_key_t {
    u32 prefixlen;     // bits, counting the 32 bits of `slot`
    u32 slot;
    char path[LPM_CAP];
};

struct lpm_val_t {
    u8 tags;           // 0 keep, TAG_INTERESTING|TAG_CRED cred-tagged
    u8 pad[3];
};

struct pinfo_t {
    u32 ppid;
    u32 pad;
    char comm[16];
};

struct sockkey_t {
    u32 tgid;
    u32 fd;
};

struct dest_t {
    u16 family;
    u16 port;          // host order
    u32 pad;
    u8 addr[16];
};

// 80 bytes.
struct hdr_t {
    u64 ts_ns;
    u64 cgroup_id;
    u8 run_id[16];
    u32 pid;
    u32 tid;
    u32 ppid;
    u32 uid;
    u32 gid;
    u32 slot;
    char comm[16];
    u8 type;
    u8 tags;
    u16 pad0;
    u32 pad1;
};

// 100 bytes + path.  lpm_prefixlen/lpm_slot/path form an lpm_key_t in place.
struct file_rec_t {
    struct hdr_t h;
    s32 dfd;
    s32 flags;
    u16 path_len;      // bytes, excluding the NUL
    u8 truncated;
    u8 resolve;
    u32 lpm_prefixlen;
    u32 lpm_slot;
    char path[PATH_CAP];
};
#define FILE_FIXED 100

struct anc_t {
    u32 pid;
    u32 ppid;
    char comm[16];
};

struct exec_rec_t {
    struct hdr_t h;
    u8 argc;
    u8 argv_truncated;  // 1 when argv had more than ARGV_N entries
    u16 bin_len;
    s32 dfd;            // execveat dirfd, AT_FDCWD for execve
    struct anc_t anc[ANC_N];
    u16 arg_len[ARGV_N];
    char bin[PATH_CAP];
    char argv[ARGV_N][ARG_CAP];
};

// 104 bytes.
struct net_rec_t {
    struct hdr_t h;
    u16 family;
    u16 port;
    u32 fd;
    u8 addr[16];
};

// 112 bytes + data.
struct data_rec_t {
    struct hdr_t h;
    u16 family;
    u16 port;
    u32 fd;
    u8 addr[16];
    u16 data_len;      // bytes captured
    u8 source;         // 3 tcp_clienthello
    u8 syscall;        // diagnostic: 1 write, 2 writev, 3 sendto, 4 sendmsg, 5 sendmmsg
    u32 total_len;     // bytes in the syscall's first buffer
    u8 data[DATA_CAP];
};
#define DATA_FIXED 112

struct fork_rec_t {
    struct hdr_t h;
    u32 child;
    u32 pad;
};

// Per-CPU scratch, large enough for every record type plus slack so that
// lookahead reads past the path stay inside the value.
struct scratch_t {
    u8 raw[8192];
};

BPF_ARRAY(config, struct config_t, 1);
BPF_HASH(runs, u64, struct run_t, 256);
BPF_LPM_TRIE(paths, struct lpm_key_t, struct lpm_val_t, 8192);
BPF_PERCPU_ARRAY(drops, u64, MAX_SLOTS);
BPF_PERCPU_ARRAY(scratch, struct scratch_t, 1);
BPF_TABLE("lru_hash", u32, struct pinfo_t, pidmap, 65536);
BPF_TABLE("lru_hash", struct sockkey_t, struct dest_t, sockdest, 16384);
BPF_HASH(chdir_args, u32, u64, 4096);

struct diropen_t {
    u64 filename;
    s32 dfd;
    s32 flags;
};
BPF_HASH(diropen_args, u32, struct diropen_t, 4096);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

// ---------------------------------------------------------------------------
// Common helpers

#define MAX_LEVEL 8

static __always_inline struct run_t *lookup_run(u64 *cgid)
{
    u32 zero = 0;
    struct config_t *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    int level = cfg->parent_level;
    u64 id;
    struct run_t *r;
    // Fast path: runs are the children of the /fangs parent (containers in
    // their subtree).  A host process fails the first comparison.
    if (cfg->parent_id && bpf_get_current_ancestor_cgroup_id(level) == cfg->parent_id) {
        id = bpf_get_current_ancestor_cgroup_id(level + 1);
        r = runs.lookup(&id);
        if (r) {
            *cgid = id;
            return r;
        }
    }
    if (!cfg->others)
        return 0;
    // Slow path, only while some run watches a cgroup elsewhere (sensor_only
    // jobs): the current cgroup, then its ancestors, deepest first.
    id = bpf_get_current_cgroup_id();
    r = runs.lookup(&id);
    if (r) {
        *cgid = id;
        return r;
    }
#pragma unroll
    for (int l = MAX_LEVEL; l >= 1; l--) {
        id = bpf_get_current_ancestor_cgroup_id(l);
        if (id) {
            r = runs.lookup(&id);
            if (r) {
                *cgid = id;
                return r;
            }
        }
    }
    return 0;
}

static __always_inline void *get_scratch(void)
{
    u32 zero = 0;
    return scratch.lookup(&zero);
}

static __always_inline void fill_hdr(struct hdr_t *h, struct run_t *r, u64 cgid, u8 type)
{
    u64 pt = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    u32 tgid = pt >> 32;
    h->ts_ns = bpf_ktime_get_ns();
    h->cgroup_id = cgid;
    __builtin_memcpy(h->run_id, r->run_id, 16);
    h->pid = tgid;
    h->tid = (u32)pt;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->slot = r->slot;
    struct pinfo_t *pi = pidmap.lookup(&tgid);
    h->ppid = pi ? pi->ppid : 0;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
    h->type = type;
    h->tags = 0;
    h->pad0 = 0;
    h->pad1 = 0;
}

static __always_inline void emit(void *rec, u64 size, u32 slot)
{
    // Keep the verifier sure the copy stays inside the 8192-byte scratch.
    asm volatile("" : "+r"(size));
    size &= 0x1fff;
    if (events.ringbuf_output(rec, size, 0) < 0) {
        u64 *d = drops.lookup(&slot);
        if (d)
            (*d)++;
    }
}

// ---------------------------------------------------------------------------
// File opens

// 1 when the path needs userspace help: relative, or containing "//",
// "/./", "/../", or ending in "/." or "/..".
static __always_inline int needs_resolve(const char *p, u32 len)
{
    if (p[0] != '/')
        return 1;
    for (u32 i = 0; i < PATH_CAP - 4; i++) {
        if (i >= len)
            break;
        if (p[i] != '/')
            continue;
        char c1 = p[i + 1];
        if (c1 == '/')
            return 1;
        if (c1 != '.')
            continue;
        char c2 = p[i + 2];
        if (c2 == '/' || c2 == 0)
            return 1;
        if (c2 != '.')
            continue;
        char c3 = p[i + 3];
        if (c3 == '/' || c3 == 0)
            return 1;
    }
    return 0;
}

static __always_inline int do_open(int dfd, const char *filename, int flags)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    if (flags & (O_DIRECTORY_ | O_PATH_)) {
        // Directory fds: the exit hook reports the fd so userspace can
        // resolve later openat(dirfd, "relative") calls.
        u32 tid = (u32)bpf_get_current_pid_tgid();
        struct diropen_t a = {};
        a.filename = (u64)filename;
        a.dfd = dfd;
        a.flags = flags;
        diropen_args.update(&tid, &a);
    }
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int n = bpf_probe_read_user_str(rec->path, PATH_CAP, filename);
    if (n <= 0)
        return 0;
    u32 len = (u32)n - 1;  // excluding NUL
    if (len >= PATH_CAP)
        len = PATH_CAP - 1;
    u32 slot = r->slot;
    u8 tags = 0;
    u8 resolve = 0;
    if (needs_resolve(rec->path, len)) {
        resolve = RESOLVE_NEEDED;
    } else {
        rec->lpm_slot = slot;
        // The NUL takes part, so file prefixes can match exactly.  Longer
        // paths are looked up on their first LPM_CAP bytes (userspace
        // re-matches every event on the whole path).
        u32 klen = len + 1 > LPM_CAP ? LPM_CAP : len + 1;
        rec->lpm_prefixlen = 32 + klen * 8;
        struct lpm_val_t *v = paths.lookup((struct lpm_key_t *)&rec->lpm_prefixlen);
        if (!v)
            return 0;
        tags = v->tags;
    }
    fill_hdr(&rec->h, r, cgid, T_FILE);
    rec->h.tags = tags;
    rec->dfd = dfd;
    rec->flags = flags;
    rec->path_len = len;
    rec->truncated = (n >= PATH_CAP) ? 1 : 0;
    rec->resolve = resolve;
    emit(rec, FILE_FIXED + ((len + 1) & 0x1ff), slot);
    return 0;
}

int tp_openat(struct tracepoint__syscalls__sys_enter_openat *args)
{
    return do_open((int)args->dfd, (const char *)args->filename, (int)args->flags);
}

int tp_openat2(struct tracepoint__syscalls__sys_enter_openat2 *args)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);  // open_how.flags
    return do_open((int)args->dfd, (const char *)args->filename, (int)flags);
}

int tp_open(struct tracepoint__syscalls__sys_enter_open *args)
{
    return do_open(AT_FDCWD_, (const char *)args->filename, (int)args->flags);
}

int tp_creat(struct tracepoint__syscalls__sys_enter_creat *args)
{
    // creat() == open(O_CREAT|O_WRONLY|O_TRUNC)
    return do_open(AT_FDCWD_, (const char *)args->pathname, 01 | 0100 | 01000);
}

static __always_inline int do_open_exit(long ret)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct diropen_t *a = diropen_args.lookup(&tid);
    if (!a)
        return 0;
    struct diropen_t args = *a;
    diropen_args.delete(&tid);
    if (ret < 0)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int n = bpf_probe_read_user_str(rec->path, PATH_CAP, (void *)args.filename);
    if (n <= 0)
        return 0;
    u32 len = (u32)n - 1;
    if (len >= PATH_CAP)
        len = PATH_CAP - 1;
    fill_hdr(&rec->h, r, cgid, T_DIRFD);
    rec->dfd = args.dfd;
    rec->flags = (s32)ret;  // the new fd
    rec->path_len = len;
    rec->truncated = (n >= PATH_CAP) ? 1 : 0;
    rec->resolve = 0;
    emit(rec, FILE_FIXED + ((len + 1) & 0x1ff), r->slot);
    return 0;
}

int tp_exit_openat(struct tracepoint__syscalls__sys_exit_openat *args)
{
    return do_open_exit(args->ret);
}

int tp_exit_openat2(struct tracepoint__syscalls__sys_exit_openat2 *args)
{
    return do_open_exit(args->ret);
}

int tp_exit_open(struct tracepoint__syscalls__sys_exit_open *args)
{
    return do_open_exit(args->ret);
}

// ---------------------------------------------------------------------------
// Working directory tracking (so userspace can resolve relative opens of
// processes that have already exited).

int tp_enter_chdir(struct tracepoint__syscalls__sys_enter_chdir *args)
{
    u64 cgid = 0;
    if (!lookup_run(&cgid))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 ptr = (u64)args->filename;
    chdir_args.update(&tid, &ptr);
    return 0;
}

int tp_exit_chdir(struct tracepoint__syscalls__sys_exit_chdir *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *ptr = chdir_args.lookup(&tid);
    if (!ptr)
        return 0;
    u64 p = *ptr;
    chdir_args.delete(&tid);
    if (args->ret != 0)
        return 0;
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int n = bpf_probe_read_user_str(rec->path, PATH_CAP, (void *)p);
    if (n <= 0)
        return 0;
    u32 len = (u32)n - 1;
    if (len >= PATH_CAP)
        len = PATH_CAP - 1;
    fill_hdr(&rec->h, r, cgid, T_CHDIR);
    rec->dfd = AT_FDCWD_;
    rec->flags = 0;
    rec->path_len = len;
    rec->truncated = (n >= PATH_CAP) ? 1 : 0;
    rec->resolve = 0;
    emit(rec, FILE_FIXED + ((len + 1) & 0x1ff), r->slot);
    return 0;
}

int tp_exit_fchdir(struct tracepoint__syscalls__sys_exit_fchdir *args)
{
    if (args->ret != 0)
        return 0;
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct hdr_t *h = get_scratch();
    if (!h)
        return 0;
    fill_hdr(h, r, cgid, T_FCHDIR);
    emit(h, sizeof(struct hdr_t), r->slot);
    return 0;
}

// ---------------------------------------------------------------------------
// Process tree (host-wide: fork and exit are rare and expensive anyway)

int tp_fork(struct tracepoint__sched__sched_process_fork *args)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    u32 child = (u32)args->child_pid;
    struct pinfo_t pi = {};
    pi.ppid = parent;
    bpf_get_current_comm(pi.comm, sizeof(pi.comm));
    pidmap.update(&child, &pi);

    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct fork_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    fill_hdr(&rec->h, r, cgid, T_FORK);
    rec->child = child;
    rec->pad = 0;
    emit(rec, sizeof(*rec), r->slot);
    return 0;
}

int tp_exec_done(struct tracepoint__sched__sched_process_exec *args)
{
    // The comm changes at exec: keep the process tree's comm current.
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct pinfo_t *pi = pidmap.lookup(&tgid);
    if (pi)
        bpf_get_current_comm(pi->comm, sizeof(pi->comm));
    return 0;
}

int tp_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (r) {
        struct hdr_t *h = get_scratch();
        if (h) {
            fill_hdr(h, r, cgid, T_EXIT);
            emit(h, sizeof(struct hdr_t), r->slot);
        }
    }
    pidmap.delete(&tid);
    return 0;
}

// ---------------------------------------------------------------------------
// exec

static __always_inline int do_exec(int dfd, const char *filename, const char *const *argv)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct exec_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    fill_hdr(&rec->h, r, cgid, T_EXEC);
    rec->dfd = dfd;
    rec->argv_truncated = 0;
    int n = bpf_probe_read_user_str(rec->bin, PATH_CAP, filename);
    rec->bin_len = n > 0 ? n - 1 : 0;

    u32 argc = 0;
#pragma unroll
    for (int i = 0; i < ARGV_N; i++) {
        const char *arg = 0;
        rec->arg_len[i] = 0;
        if (argc == i) {
            if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) == 0 && arg) {
                int m = bpf_probe_read_user_str(rec->argv[i], ARG_CAP, arg);
                if (m > 0) {
                    rec->arg_len[i] = m - 1;
                    argc = i + 1;
                }
            }
        }
    }
    if (argc == ARGV_N) {
        const char *more = 0;
        if (bpf_probe_read_user(&more, sizeof(more), &argv[ARGV_N]) == 0 && more)
            rec->argv_truncated = 1;
    }
    rec->argc = argc;

    u32 pid = rec->h.ppid;
#pragma unroll
    for (int i = 0; i < ANC_N; i++) {
        rec->anc[i].pid = 0;
        rec->anc[i].ppid = 0;
        rec->anc[i].comm[0] = 0;
        if (pid) {
            struct pinfo_t *pi = pidmap.lookup(&pid);
            rec->anc[i].pid = pid;
            if (pi) {
                rec->anc[i].ppid = pi->ppid;
                __builtin_memcpy(rec->anc[i].comm, pi->comm, 16);
                pid = pi->ppid;
            } else {
                pid = 0;
            }
        }
    }
    emit(rec, sizeof(*rec), r->slot);
    return 0;
}

int tp_execve(struct tracepoint__syscalls__sys_enter_execve *args)
{
    return do_exec(AT_FDCWD_, (const char *)args->filename, (const char *const *)args->argv);
}

int tp_execveat(struct tracepoint__syscalls__sys_enter_execveat *args)
{
    return do_exec((int)args->fd, (const char *)args->filename, (const char *const *)args->argv);
}

// ---------------------------------------------------------------------------
// Network

// Reads a user sockaddr into d.  Returns 0 for AF_INET/AF_INET6.
static __always_inline int read_sockaddr(struct dest_t *d, const void *uaddr)
{
    u16 family = 0;
    if (!uaddr || bpf_probe_read_user(&family, sizeof(family), uaddr) != 0)
        return -1;
    __builtin_memset(d, 0, sizeof(*d));
    d->family = family;
    u16 nport = 0;
    if (family == 2) {          // sockaddr_in: family, port, addr[4]
        bpf_probe_read_user(&nport, 2, (const u8 *)uaddr + 2);
        bpf_probe_read_user(d->addr, 4, (const u8 *)uaddr + 4);
    } else if (family == 10) {  // sockaddr_in6: family, port, flowinfo, addr[16]
        bpf_probe_read_user(&nport, 2, (const u8 *)uaddr + 2);
        bpf_probe_read_user(d->addr, 16, (const u8 *)uaddr + 8);
    } else {
        return -1;
    }
    d->port = (nport >> 8) | ((nport & 0xff) << 8);
    return 0;
}

int tp_connect(struct tracepoint__syscalls__sys_enter_connect *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct dest_t d = {};
    struct sockkey_t k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.fd = (u32)args->fd;
    if (read_sockaddr(&d, (const void *)args->uservaddr) != 0 || d.port == 0) {
        // AF_UNSPEC dissolves a UDP association; AF_UNIX is not reported.
        sockdest.delete(&k);
        return 0;
    }
    sockdest.update(&k, &d);
    struct net_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    fill_hdr(&rec->h, r, cgid, T_NET);
    rec->family = d.family;
    rec->port = d.port;
    rec->fd = k.fd;
    __builtin_memcpy(rec->addr, d.addr, 16);
    emit(rec, sizeof(*rec), r->slot);
    return 0;
}

struct iovec_t {
    const u8 *base;
    u64 len;
};

#define GATHER_IOV 4

// Copies up to DATA_CAP bytes of the first GATHER_IOV segments into dst
// (which has room for 2 * DATA_CAP bytes).  A single buffer is passed as
// vec == NULL with buf/len.  Returns the bytes copied.
static __always_inline u32 gather(u8 *dst, const struct iovec_t *vec, u64 vlen, const u8 *buf, u64 len)
{
    u32 off = 0;
#pragma unroll
    for (int i = 0; i < GATHER_IOV; i++) {
        struct iovec_t iov = {};
        if (vec) {
            if (i >= vlen)
                break;
            if (bpf_probe_read_user(&iov, sizeof(iov), &vec[i]) != 0)
                break;
        } else {
            if (i > 0)
                break;
            iov.base = buf;
            iov.len = len;
        }
        if (off >= DATA_CAP)
            break;
        u64 n = DATA_CAP - off;
        if (iov.len < n)
            n = iov.len;
        u32 o = off;
        asm volatile("" : "+r"(o), "+r"(n));
        o &= (DATA_CAP - 1);
        if (n > DATA_CAP)
            n = DATA_CAP;
        if (n == 0)
            continue;
        if (bpf_probe_read_user(dst + o, n, iov.base) != 0)
            break;
        off += n;
    }
    return off;
}

static __always_inline int hello_sig(const u8 *sig)
{
    return sig[0] == 0x16 && sig[1] == 0x03 && sig[5] == 0x01;
}

// Looks at bytes sent on fd (destination explicit in uaddr, or remembered
// from connect()): DNS when the destination port is 53, a TLS ClientHello
// when the bytes say so.  Bytes are one buffer (vec == NULL) or an iovec
// array, gathered across its first segments so that splitting a
// ClientHello over several iovecs does not hide it.
static __always_inline int do_send(struct run_t *r, u64 cgid, u32 fd, const void *uaddr,
                                   const struct iovec_t *vec, u64 vlen, const u8 *buf, u64 len,
                                   u8 syscall)
{
    struct dest_t d = {};
    int have_dest = 0;
    if (uaddr) {
        have_dest = read_sockaddr(&d, uaddr) == 0;
    } else {
        struct sockkey_t k = {};
        k.tgid = bpf_get_current_pid_tgid() >> 32;
        k.fd = fd;
        struct dest_t *p = sockdest.lookup(&k);
        if (p) {
            __builtin_memcpy(&d, p, sizeof(d));
            have_dest = 1;
        }
    }
    u8 type = T_DNS;
    if (!have_dest || d.port != 53) {
        // Cheap test on the first segment before copying anything.
        type = T_TLS;
        const u8 *first = buf;
        u64 firstLen = len;
        if (vec) {
            struct iovec_t iov = {};
            if (vlen < 1 || bpf_probe_read_user(&iov, sizeof(iov), vec) != 0)
                return 0;
            first = iov.base;
            firstLen = iov.len;
        }
        if (firstLen >= 6) {
            u8 sig[6] = {};
            if (bpf_probe_read_user(sig, 6, first) != 0 || !hello_sig(sig))
                return 0;
        } else if (!vec || vlen < 2) {
            return 0;
        }
    }
    struct data_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    u32 n = gather(rec->data, vec, vlen, buf, len);
    if (type == T_TLS && (n < 6 || !hello_sig(rec->data)))
        return 0;
    if (n == 0)
        return 0;
    fill_hdr(&rec->h, r, cgid, type);
    rec->family = have_dest ? d.family : 0;
    rec->port = have_dest ? d.port : 0;
    rec->fd = fd;
    __builtin_memcpy(rec->addr, d.addr, 16);
    rec->data_len = n;
    rec->source = 3;
    rec->syscall = syscall;
    rec->total_len = vec ? n : (len > 0xffffffff ? 0xffffffff : (u32)len);
    emit(rec, DATA_FIXED + (n & (2 * DATA_CAP - 1)), r->slot);
    return 0;
}

int tp_write(struct tracepoint__syscalls__sys_enter_write *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_send(r, cgid, (u32)args->fd, 0, 0, 0, (const u8 *)args->buf, args->count, 1);
}

int tp_writev(struct tracepoint__syscalls__sys_enter_writev *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_send(r, cgid, (u32)args->fd, 0, (const struct iovec_t *)args->vec, args->vlen, 0, 0, 2);
}

int tp_sendto(struct tracepoint__syscalls__sys_enter_sendto *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_send(r, cgid, (u32)args->fd, (const void *)args->addr, 0, 0, (const u8 *)args->buff,
                   args->len, 3);
}

// struct user_msghdr (x86-64 user ABI): msg_name @0, msg_namelen @8,
// msg_iov @16, msg_iovlen @24, msg_control @32, msg_controllen @40,
// msg_flags @48; 56 bytes.  struct mmsghdr adds msg_len: 64 bytes.
struct user_msghdr_t {
    const void *name;
    s32 namelen;
    s32 pad;
    const struct iovec_t *iov;
    u64 iovlen;
    const void *control;
    u64 controllen;
    u32 flags;
    u32 pad2;
};

static __always_inline int do_msghdr(struct run_t *r, u64 cgid, u32 fd, const void *umsg, u8 syscall)
{
    struct user_msghdr_t m = {};
    if (bpf_probe_read_user(&m, sizeof(m), umsg) != 0)
        return 0;
    if (!m.iov || m.iovlen < 1)
        return 0;
    return do_send(r, cgid, fd, m.namelen > 0 ? m.name : 0, m.iov, m.iovlen, 0, 0, syscall);
}

int tp_sendmsg(struct tracepoint__syscalls__sys_enter_sendmsg *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_msghdr(r, cgid, (u32)args->fd, (const void *)args->msg, 4);
}

int tp_sendmmsg(struct tracepoint__syscalls__sys_enter_sendmmsg *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    u32 fd = (u32)args->fd;
    const u8 *vec = (const u8 *)args->mmsg;
    u32 vlen = (u32)args->vlen;
    // glibc's resolver sends A and AAAA in one sendmmsg: look at two.
    if (vlen >= 1)
        do_msghdr(r, cgid, fd, vec, 5);
    if (vlen >= 2)
        do_msghdr(r, cgid, fd, vec + 64, 5);
    return 0;
}
