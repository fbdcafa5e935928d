// FANGS eBPF sensor, loaded by BCC (fangs/runner/sensor.py).
//
// Tracepoints and helpers only: the machine's kernel headers (6.1) do not
// describe the running kernel (6.18), so no kernel struct is ever read.  The
// only structures dereferenced are user ABI ones (sockaddr, user_msghdr,
// iovec, open_how, clone_args), read with bpf_probe_read_user.
//
// Filtering: a process is watched when its cgroup ancestor at level L is the
// /fangs parent directory (config[0]) and its ancestor at level L+1 is a
// registered run cgroup (runs map).  Host processes pay one array lookup and
// one helper call on enter tracepoints, and one hash lookup (the `pend`
// stash, keyed by thread id, which only run threads fill) on exit ones.
//
// Opens are reported at syscall *exit*: by then the kernel has copied (and
// faulted in) the path string, so reading it cannot fail for lack of a page,
// and the record carries the fd the kernel returned.  A path the kernel can
// judge (absolute, without `.`/`..`/`//`, not under /proc, shorter than the
// LPM key) is matched against the run's prefixes here; every other one goes
// to userspace (fangs/runner/resolver.py), which resolves it within the
// container's root.  Once a run has created a link (symlink, link, rename),
// every one of its opens goes to userspace, since any path may now lead to a
// watched object.
//
// Records are variable-size (built in a per-CPU scratch buffer, then copied
// with ringbuf_output), little-endian; the layout is mirrored by
// fangs/runner/decode.py.  Keep the two in sync.

#include <uapi/linux/ptrace.h>

#define MAX_SLOTS 64
#define PATH_CAP 4096      // PATH_MAX
#define LINK_CAP 2048      // each of the two paths of a link record
#define LPM_CAP 248        // the kernel caps LPM trie key data at 256 bytes: slot + 248
#define ARGV_N 16
#define ARG_CAP 128
#define DATA_CAP 2048
#define ANC_N 5
#define AT_FDCWD_ -100
#define STREAM_WRITES 8    // writes captured at the start of each connection

// Record types: 1..14 are the wire's event types; >= 100 are internal.
#define T_FILE 1
#define T_EXEC 2
#define T_NET 3
#define T_IOURING 8
#define T_FORK 13
#define T_EXIT 14
#define T_CHDIR 100
#define T_FCHDIR 103
#define T_CLOSE 105
#define T_DUP 106
#define T_LINK 107
#define T_MEMFD 108
#define T_DGRAM 109
#define T_STREAM 110
#define T_EXECDONE 111
#define T_UNLINK 112

#define O_DIRECTORY_ 0200000
#define O_PATH_ 010000000
#define MSG_FASTOPEN_ 0x20000000
#define CLONE_THREAD_ 0x00010000

#define TAG_INTERESTING 1
#define TAG_CRED 2

// File record flags (the `resolve` byte).
#define RESOLVE_NEEDED 1   // the kernel could not judge the path
#define RESOLVE_UNREADABLE 2  // the path string could not be read
#define RESOLVE_LINKED 4   // the run made links: sent whatever the path
#define RESOLVE_DIR 8      // O_DIRECTORY / O_PATH: a directory fd

// Pending syscall kinds (pend map).
#define P_OPEN 1
#define P_CHDIR 2
#define P_LINK 3
#define P_DUP 4
#define P_SOCKET 5
#define P_MEMFD 6
#define P_CLONE 7
#define P_FCHDIR 8
#define P_UNLINK 9

// Link record kinds.
#define L_SYMLINK 1
#define L_HARDLINK 2
#define L_RENAME 3

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 16384
#endif

struct config_t {
    u64 parent_id;     // inode of <cgroup2>/fangs
    u32 parent_level;  // its depth below the cgroup2 root (1 for /fangs)
    u32 others;        // runs registered on cgroups outside the parent
    u64 quota;         // bytes of ring buffer one run may hold unconsumed (0: no limit)
};

struct run_t {
    u32 slot;
    u8 run_id[16];
    u8 linked;         // set in place once the run made a link
    u8 pad[3];
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
    u32 exitcode;      // (code & 0xff) | 0x100 once exit_group was called
    char comm[16];
};

struct sockkey_t {
    u32 tgid;
    u32 fd;
};

struct dest_t {
    u16 family;
    u16 port;          // host order; 0 while not connected
    u8 stype;          // SOCK_STREAM 1, SOCK_DGRAM 2, 0 unknown
    u8 writes;         // stream writes captured so far
    u16 pad;
    u8 addr[16];
};

struct pend_t {
    u64 p1;
    u64 p2;
    s32 a;
    s32 b;
    s32 c;
    u8 kind;
    u8 sub;
    u16 pad;
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

// 104 bytes + path.  lpm_prefixlen/lpm_slot/path form an lpm_key_t in place.
struct file_rec_t {
    struct hdr_t h;
    s32 dfd;
    s32 flags;
    s32 ret;           // the fd, or -errno
    u16 path_len;      // bytes, excluding the NUL
    u8 truncated;
    u8 resolve;
    u32 lpm_prefixlen;
    u32 lpm_slot;
    char path[PATH_CAP];
};
#define FILE_FIXED 104

// 104 bytes + paths.
struct link_rec_t {
    struct hdr_t h;
    s32 olddfd;
    s32 newdfd;
    s32 ret;
    u16 old_len;
    u16 new_len;
    u8 kind;
    u8 truncated;
    u16 pad;
    u32 pad2;
    char old[LINK_CAP];
    char new_[LINK_CAP];
};
#define LINK_FIXED 104

struct anc_t {
    u32 pid;
    u32 ppid;
    char comm[16];
};

struct exec_rec_t {
    struct hdr_t h;
    u8 argc;
    u8 argv_truncated;  // 1: argv had more than ARGV_N entries; 2: some of it was unreadable
    u16 bin_len;
    s32 dfd;            // execveat dirfd, AT_FDCWD for execve
    struct anc_t anc[ANC_N];
    u16 arg_len[ARGV_N];
    char bin[256];
    char argv[ARGV_N][ARG_CAP];
};

// 216 bytes.
struct net_rec_t {
    struct hdr_t h;
    u16 family;
    u16 port;
    u32 fd;
    u8 addr[16];
    u8 fastopen;
    u8 stype;
    u16 path_len;
    char path[108];     // AF_UNIX sun_path
};

// 112 bytes + data.
struct data_rec_t {
    struct hdr_t h;
    u16 family;
    u16 port;
    u32 fd;
    u8 addr[16];
    u16 data_len;      // bytes captured
    u8 stype;
    u8 syscall;        // 1 write, 2 writev, 3 sendto, 4 sendmsg, 5 sendmmsg
    u32 total_len;     // bytes in the syscall's first buffer
    u8 data[DATA_CAP];
};
#define DATA_FIXED 112

// 96 bytes: fork, exit, close, dup, fchdir, io_uring, exec done.
struct small_rec_t {
    struct hdr_t h;
    s32 a;             // fork: child tgid; exit: code; close/fchdir: fd; dup: old; io_uring: ret
    s32 b;             // dup: new fd; close: last fd of a range; exit: 1 when the code is known
    s32 c;
    s32 d;
};

// Per-CPU scratch, large enough for every record type plus slack so that
// lookahead reads past the path stay inside the value.
struct scratch_t {
    u8 raw[8192 + 256];
};

BPF_ARRAY(config, struct config_t, 1);
BPF_HASH(runs, u64, struct run_t, 256);
BPF_LPM_TRIE(paths, struct lpm_key_t, struct lpm_val_t, 8192);
BPF_PERCPU_ARRAY(drops, u64, MAX_SLOTS);
// Per-slot ring buffer accounting: bytes produced here, consumed written by userspace.
BPF_ARRAY(produced, u64, MAX_SLOTS);
BPF_ARRAY(consumed, u64, MAX_SLOTS);
BPF_PERCPU_ARRAY(scratch, struct scratch_t, 1);
BPF_TABLE("lru_hash", u32, struct pinfo_t, pidmap, 65536);
BPF_HASH(sockdest, struct sockkey_t, struct dest_t, 16384);
BPF_HASH(fdtrack, struct sockkey_t, u8, 65536);
BPF_HASH(pend, u32, struct pend_t, 16384);
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

static __always_inline void count_drop(u32 slot)
{
    u64 *d = drops.lookup(&slot);
    if (d)
        (*d)++;
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
    // Keep the verifier sure the copy stays inside the scratch.
    asm volatile("" : "+r"(size));
    size &= 0x1fff;
    // A run may hold at most `quota` unconsumed bytes: one run's flood
    // costs that run its own events (counted), not another run's.
    u32 zero = 0;
    struct config_t *cfg = config.lookup(&zero);
    u64 *prod = produced.lookup(&slot);
    u64 *cons = consumed.lookup(&slot);
    if (!prod || !cons)
        return;
    if (cfg && cfg->quota && *prod - *cons + size > cfg->quota) {
        count_drop(slot);
        return;
    }
    if (events.ringbuf_output(rec, size, 0) < 0) {
        count_drop(slot);
        return;
    }
    __sync_fetch_and_add(prod, size);
}

static __always_inline void emit_small(struct run_t *r, u64 cgid, u8 type, s32 a, s32 b, s32 c)
{
    struct small_rec_t *rec = get_scratch();
    if (!rec)
        return;
    fill_hdr(&rec->h, r, cgid, type);
    rec->a = a;
    rec->b = b;
    rec->c = c;
    rec->d = 0;
    emit(rec, sizeof(*rec), r->slot);
}

static __always_inline u32 cur_tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}

static __always_inline u32 cur_tgid(void)
{
    return bpf_get_current_pid_tgid() >> 32;
}

// Stash syscall arguments for the exit tracepoint of a run thread.  A full
// stash loses state: counted as a drop of the run.
static __always_inline void stash(struct run_t *r, struct pend_t *p)
{
    u32 tid = cur_tid();
    if (pend.update(&tid, p) != 0)
        count_drop(r->slot);
}

// At a syscall's entry: when the caller is a thread of a run, stash the
// arguments of `kind` for the exit.  The run, or 0.
static __always_inline struct run_t *stash_args(u8 kind, u64 p1, u64 p2, s32 a, s32 b)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct pend_t p = {};
    p.kind = kind;
    p.p1 = p1;
    p.p2 = p2;
    p.a = a;
    p.b = b;
    stash(r, &p);
    return r;
}

// The stashed arguments of this thread's syscall of `kind`, removed.
static __always_inline int unstash(u8 kind, struct pend_t *out)
{
    u32 tid = cur_tid();
    struct pend_t *p = pend.lookup(&tid);
    if (!p)
        return 0;
    if (p->kind != kind)
        return 0;
    __builtin_memcpy(out, p, sizeof(*out));
    pend.delete(&tid);
    return 1;
}

// At a syscall's exit: the stashed arguments of `kind` (removed) and the
// run of the calling thread, or 0 when there are none.
static __always_inline struct run_t *unstash_run(u8 kind, struct pend_t *out, u64 *cgid)
{
    if (!unstash(kind, out))
        return 0;
    return lookup_run(cgid);
}

// An fd userspace follows was closed (or reused unseen): tell it.
static __always_inline void forget_fd(struct run_t *r, u64 cgid, struct sockkey_t *k)
{
    if (fdtrack.lookup(k)) {
        fdtrack.delete(k);
        emit_small(r, cgid, T_CLOSE, (s32)k->fd, (s32)k->fd, 0);
    }
}

// The key of this process's fd in the fd and socket maps.
static __always_inline struct sockkey_t fd_key(u32 fd)
{
    struct sockkey_t k = {};
    k.tgid = cur_tgid();
    k.fd = fd;
    return k;
}

static __always_inline void track_fd(struct run_t *r, u32 fd)
{
    struct sockkey_t k = fd_key(fd);
    u8 one = 1;
    if (fdtrack.update(&k, &one) != 0)
        count_drop(r->slot);
}

// ---------------------------------------------------------------------------
// File opens

// 1 when the path needs userspace help: relative, containing "//", "/./",
// "/../", ending in "/." or "/..", or under /proc.
static __always_inline int needs_resolve(const char *p, u32 len)
{
    if (p[0] != '/')
        return 1;
    if (p[1] == 'p' && p[2] == 'r' && p[3] == 'o' && p[4] == 'c' && (p[5] == '/' || p[5] == 0))
        return 1;
    if (len > LPM_CAP)
        len = LPM_CAP;
    asm volatile("" : "+r"(len));
    len &= 0xff;
    for (u32 i = 0; i < LPM_CAP; i++) {
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

// Read the path at `user` into rec->path: sets rec->path_len,
// rec->truncated and rec->resolve (RESOLVE_UNREADABLE when it could not be
// read, the path then empty; else 0).  Returns the path's length.
static __always_inline u32 read_path(struct file_rec_t *rec, const void *user)
{
    int n = bpf_probe_read_user_str(rec->path, PATH_CAP, user);
    u32 len = 0;
    if (n <= 0) {
        rec->path[0] = 0;
    } else {
        len = (u32)n - 1;  // excluding NUL
        if (len >= PATH_CAP)
            len = PATH_CAP - 1;
    }
    rec->path_len = len;
    rec->truncated = (n >= PATH_CAP) ? 1 : 0;
    rec->resolve = n <= 0 ? RESOLVE_UNREADABLE : 0;
    return len;
}

// Read the path a file syscall named into rec and judge it in the kernel
// (rec->resolve says what userspace must do; `dir`: RESOLVE_DIR or 0).
// Returns the watched prefix's tags when the kernel could judge it, 0 when
// userspace judges it, -1 when it is not watched.
static __always_inline int judge_path(struct file_rec_t *rec, struct run_t *r, const void *user, u8 dir)
{
    u32 len = read_path(rec, user);
    u8 resolve = rec->resolve;
    if (!resolve && (len + 1 >= LPM_CAP || needs_resolve(rec->path, len)))
        resolve |= RESOLVE_NEEDED;
    resolve |= dir;
    if (r->linked)
        resolve |= RESOLVE_LINKED;
    rec->resolve = resolve;
    if (resolve)
        return 0;
    rec->lpm_slot = r->slot;
    // The NUL takes part, so file prefixes can match exactly.
    rec->lpm_prefixlen = 32 + (len + 1) * 8;
    struct lpm_val_t *v = paths.lookup((struct lpm_key_t *)&rec->lpm_prefixlen);
    return v ? v->tags : -1;
}

// Send a file record whose path fields are set.
static __always_inline void emit_file(struct file_rec_t *rec, struct run_t *r, u64 cgid, u8 type, u8 tags,
                                      s32 dfd, s32 flags, s32 ret)
{
    fill_hdr(&rec->h, r, cgid, type);
    rec->h.tags = tags;
    rec->dfd = dfd;
    rec->flags = flags;
    rec->ret = ret;
    emit(rec, FILE_FIXED + ((rec->path_len + 1) & 0xfff), r->slot);
}

static __always_inline int do_open(int dfd, const char *filename, int flags, const void *how)
{
    // openat2: open_how, read at exit (faulted in by then)
    stash_args(P_OPEN, (u64)filename, (u64)how, dfd, flags);
    return 0;
}

int tp_openat(struct tracepoint__syscalls__sys_enter_openat *args)
{
    return do_open((int)args->dfd, (const char *)args->filename, (int)args->flags, 0);
}

int tp_openat2(struct tracepoint__syscalls__sys_enter_openat2 *args)
{
    return do_open((int)args->dfd, (const char *)args->filename, 0, (const void *)args->how);
}

int tp_open(struct tracepoint__syscalls__sys_enter_open *args)
{
    return do_open(AT_FDCWD_, (const char *)args->filename, (int)args->flags, 0);
}

int tp_creat(struct tracepoint__syscalls__sys_enter_creat *args)
{
    // creat() == open(O_CREAT|O_WRONLY|O_TRUNC)
    return do_open(AT_FDCWD_, (const char *)args->pathname, 01 | 0100 | 01000, 0);
}

static __always_inline int do_open_exit(long ret)
{
    struct pend_t a = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_OPEN, &a, &cgid);
    if (!r)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    if (a.p2) {
        u64 flags = 0;
        bpf_probe_read_user(&flags, sizeof(flags), (void *)a.p2);  // open_how.flags
        a.b = (s32)flags;
    }
    int tags = judge_path(rec, r, (void *)a.p1, (a.b & (O_DIRECTORY_ | O_PATH_)) ? RESOLVE_DIR : 0);
    if (tags < 0) {
        // Not reported: if the fd number was one userspace follows, it has
        // been reused (closed unseen, e.g. at exec).
        if (ret >= 0) {
            struct sockkey_t k = fd_key((u32)ret);
            forget_fd(r, cgid, &k);
        }
        return 0;
    }
    // Userspace learns the fd of every reported open: follow its close and
    // reuse, so a later dirfd-relative or /proc/self/fd route through it is
    // attributed to this object, not a stale one.
    if (ret >= 0)
        track_fd(r, (u32)ret);
    emit_file(rec, r, cgid, T_FILE, (u8)tags, a.a, a.b, (s32)ret);
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

int tp_exit_creat(struct tracepoint__syscalls__sys_exit_creat *args)
{
    return do_open_exit(args->ret);
}

// ---------------------------------------------------------------------------
// unlink, unlinkat, rmdir: removing a watched file is an access to it (a
// stealer wiping the home, a dropper covering its tracks).

static __always_inline int unlink_enter(int dfd, const char *pathname)
{
    stash_args(P_UNLINK, (u64)pathname, 0, dfd, 0);
    return 0;
}

int tp_unlink(struct tracepoint__syscalls__sys_enter_unlink *args)
{
    return unlink_enter(AT_FDCWD_, (const char *)args->pathname);
}

int tp_unlinkat(struct tracepoint__syscalls__sys_enter_unlinkat *args)
{
    return unlink_enter((int)args->dfd, (const char *)args->pathname);
}

int tp_rmdir(struct tracepoint__syscalls__sys_enter_rmdir *args)
{
    return unlink_enter(AT_FDCWD_, (const char *)args->pathname);
}

static __always_inline int unlink_exit(long ret)
{
    struct pend_t a = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_UNLINK, &a, &cgid);
    if (!r || ret != 0)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int tags = judge_path(rec, r, (void *)a.p1, 0);
    if (tags < 0)
        return 0;
    emit_file(rec, r, cgid, T_UNLINK, (u8)tags, a.a, 0, 0);
    return 0;
}

int tp_exit_unlink(struct tracepoint__syscalls__sys_exit_unlink *args) { return unlink_exit(args->ret); }
int tp_exit_unlinkat(struct tracepoint__syscalls__sys_exit_unlinkat *args) { return unlink_exit(args->ret); }
int tp_exit_rmdir(struct tracepoint__syscalls__sys_exit_rmdir *args) { return unlink_exit(args->ret); }

// ---------------------------------------------------------------------------
// The fd table: close, dup*, fcntl(F_DUPFD*), memfd_create.  Only fds that
// userspace follows (those of reported opens, memfds, sockets) cost a record.

int tp_close(struct tracepoint__syscalls__sys_enter_close *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct sockkey_t k = fd_key((u32)args->fd);
    sockdest.delete(&k);
    forget_fd(r, cgid, &k);
    return 0;
}

int tp_close_range(struct tracepoint__syscalls__sys_enter_close_range *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    u32 last = (u32)args->max_fd;
    if (last > 0x7fffffff)
        last = 0x7fffffff;
    emit_small(r, cgid, T_CLOSE, (s32)args->fd, (s32)last, 0);
    return 0;
}

static __always_inline int dup_enter(u32 oldfd, s32 newfd)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct sockkey_t k = fd_key(oldfd);
    s32 what = 0;
    if (fdtrack.lookup(&k))
        what |= 1;
    if (sockdest.lookup(&k))
        what |= 2;
    asm volatile("" : "+r"(what));
    if (newfd >= 0) {
        k.fd = (u32)newfd;
        if (fdtrack.lookup(&k))
            what |= 4;
        else if (sockdest.lookup(&k))
            what |= 4;
    }
    if (!what)
        return 0;
    struct pend_t p = {};
    p.kind = P_DUP;
    p.a = (s32)oldfd;
    p.b = newfd;
    p.c = what & 3;
    stash(r, &p);
    return 0;
}

static __always_inline int dup_exit(long ret)
{
    struct pend_t p = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_DUP, &p, &cgid);
    if (!r || ret < 0)
        return 0;
    struct sockkey_t k = fd_key((u32)ret);
    sockdest.delete(&k);
    fdtrack.delete(&k);
    if (p.c & 2) {
        struct sockkey_t o = {};
        o.tgid = k.tgid;
        o.fd = (u32)p.a;
        struct dest_t *d = sockdest.lookup(&o);
        if (d) {
            struct dest_t copy = *d;
            if (sockdest.update(&k, &copy) != 0)
                count_drop(r->slot);
        }
    }
    if (p.c & 1)
        track_fd(r, (u32)ret);
    emit_small(r, cgid, T_DUP, p.a, (s32)ret, p.c);
    return 0;
}

int tp_dup(struct tracepoint__syscalls__sys_enter_dup *args)
{
    return dup_enter((u32)args->fildes, -1);
}

int tp_dup2(struct tracepoint__syscalls__sys_enter_dup2 *args)
{
    return dup_enter((u32)args->oldfd, (s32)args->newfd);
}

int tp_dup3(struct tracepoint__syscalls__sys_enter_dup3 *args)
{
    return dup_enter((u32)args->oldfd, (s32)args->newfd);
}

int tp_fcntl(struct tracepoint__syscalls__sys_enter_fcntl *args)
{
    u32 cmd = (u32)args->cmd;
    if (cmd != 0 && cmd != 1030)  // F_DUPFD, F_DUPFD_CLOEXEC
        return 0;
    return dup_enter((u32)args->fd, -1);
}

int tp_exit_dup(struct tracepoint__syscalls__sys_exit_dup *args) { return dup_exit(args->ret); }
int tp_exit_dup2(struct tracepoint__syscalls__sys_exit_dup2 *args) { return dup_exit(args->ret); }
int tp_exit_dup3(struct tracepoint__syscalls__sys_exit_dup3 *args) { return dup_exit(args->ret); }
int tp_exit_fcntl(struct tracepoint__syscalls__sys_exit_fcntl *args) { return dup_exit(args->ret); }

int tp_memfd(struct tracepoint__syscalls__sys_enter_memfd_create *args)
{
    stash_args(P_MEMFD, (u64)args->uname, 0, 0, 0);
    return 0;
}

int tp_exit_memfd(struct tracepoint__syscalls__sys_exit_memfd_create *args)
{
    struct pend_t p = {};
    long ret = args->ret;
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_MEMFD, &p, &cgid);
    if (!r || ret < 0)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int n = bpf_probe_read_user_str(rec->path, 256, (void *)p.p1);
    u32 len = n > 0 ? (u32)n - 1 : 0;
    if (n <= 0)
        rec->path[0] = 0;
    track_fd(r, (u32)ret);
    rec->path_len = len;
    rec->truncated = 0;
    rec->resolve = 0;
    emit_file(rec, r, cgid, T_MEMFD, 0, AT_FDCWD_, 0, (s32)ret);
    return 0;
}

// ---------------------------------------------------------------------------
// Links: symlink, link, rename.  The run becomes `linked` at the call (so
// the opens that follow all reach userspace), and the exit reports both
// paths so userspace can follow the link even after it is gone.

static __always_inline int link_enter(u8 kind, s32 olddfd, const char *oldname, s32 newdfd, const char *newname)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    r->linked = 1;
    struct pend_t p = {};
    p.kind = P_LINK;
    p.sub = kind;
    p.p1 = (u64)oldname;
    p.p2 = (u64)newname;
    p.a = olddfd;
    p.b = newdfd;
    stash(r, &p);
    return 0;
}

static __always_inline int link_exit(long ret)
{
    struct pend_t p = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_LINK, &p, &cgid);
    if (!r || ret < 0)
        return 0;
    struct link_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    int n1 = bpf_probe_read_user_str(rec->old, LINK_CAP, (void *)p.p1);
    int n2 = bpf_probe_read_user_str(rec->new_, LINK_CAP, (void *)p.p2);
    fill_hdr(&rec->h, r, cgid, T_LINK);
    rec->olddfd = p.a;
    rec->newdfd = p.b;
    rec->ret = (s32)ret;
    rec->old_len = n1 > 0 ? n1 - 1 : 0;
    rec->new_len = n2 > 0 ? n2 - 1 : 0;
    rec->kind = p.sub;
    rec->truncated = (n1 >= LINK_CAP || n2 >= LINK_CAP || n1 <= 0 || n2 <= 0) ? 1 : 0;
    rec->pad = 0;
    rec->pad2 = 0;
    emit(rec, sizeof(*rec), r->slot);
    return 0;
}

int tp_symlink(struct tracepoint__syscalls__sys_enter_symlink *args)
{
    return link_enter(L_SYMLINK, AT_FDCWD_, (const char *)args->oldname, AT_FDCWD_, (const char *)args->newname);
}
int tp_symlinkat(struct tracepoint__syscalls__sys_enter_symlinkat *args)
{
    return link_enter(L_SYMLINK, AT_FDCWD_, (const char *)args->oldname, (s32)args->newdfd, (const char *)args->newname);
}
int tp_link(struct tracepoint__syscalls__sys_enter_link *args)
{
    return link_enter(L_HARDLINK, AT_FDCWD_, (const char *)args->oldname, AT_FDCWD_, (const char *)args->newname);
}
int tp_linkat(struct tracepoint__syscalls__sys_enter_linkat *args)
{
    return link_enter(L_HARDLINK, (s32)args->olddfd, (const char *)args->oldname, (s32)args->newdfd, (const char *)args->newname);
}
int tp_rename(struct tracepoint__syscalls__sys_enter_rename *args)
{
    return link_enter(L_RENAME, AT_FDCWD_, (const char *)args->oldname, AT_FDCWD_, (const char *)args->newname);
}
int tp_renameat(struct tracepoint__syscalls__sys_enter_renameat *args)
{
    return link_enter(L_RENAME, (s32)args->olddfd, (const char *)args->oldname, (s32)args->newdfd, (const char *)args->newname);
}
int tp_renameat2(struct tracepoint__syscalls__sys_enter_renameat2 *args)
{
    return link_enter(L_RENAME, (s32)args->olddfd, (const char *)args->oldname, (s32)args->newdfd, (const char *)args->newname);
}
int tp_exit_symlink(struct tracepoint__syscalls__sys_exit_symlink *args) { return link_exit(args->ret); }
int tp_exit_symlinkat(struct tracepoint__syscalls__sys_exit_symlinkat *args) { return link_exit(args->ret); }
int tp_exit_link(struct tracepoint__syscalls__sys_exit_link *args) { return link_exit(args->ret); }
int tp_exit_linkat(struct tracepoint__syscalls__sys_exit_linkat *args) { return link_exit(args->ret); }
int tp_exit_rename(struct tracepoint__syscalls__sys_exit_rename *args) { return link_exit(args->ret); }
int tp_exit_renameat(struct tracepoint__syscalls__sys_exit_renameat *args) { return link_exit(args->ret); }
int tp_exit_renameat2(struct tracepoint__syscalls__sys_exit_renameat2 *args) { return link_exit(args->ret); }

// ---------------------------------------------------------------------------
// Working directory tracking (so userspace can resolve relative opens of
// processes that have already exited).

int tp_enter_chdir(struct tracepoint__syscalls__sys_enter_chdir *args)
{
    stash_args(P_CHDIR, (u64)args->filename, 0, 0, 0);
    return 0;
}

int tp_exit_chdir(struct tracepoint__syscalls__sys_exit_chdir *args)
{
    struct pend_t p = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_CHDIR, &p, &cgid);
    if (!r || args->ret != 0)
        return 0;
    struct file_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    read_path(rec, (void *)p.p1);
    emit_file(rec, r, cgid, T_CHDIR, 0, AT_FDCWD_, 0, 0);
    return 0;
}

int tp_enter_fchdir(struct tracepoint__syscalls__sys_enter_fchdir *args)
{
    stash_args(P_FCHDIR, 0, 0, (s32)args->fd, 0);
    return 0;
}

int tp_exit_fchdir(struct tracepoint__syscalls__sys_exit_fchdir *args)
{
    struct pend_t p = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_FCHDIR, &p, &cgid);
    if (!r || args->ret != 0)
        return 0;
    emit_small(r, cgid, T_FCHDIR, p.a, 0, 0);
    return 0;
}

// ---------------------------------------------------------------------------
// Process tree (host-wide: fork and exit are rare and expensive anyway)

static __always_inline int clone_enter(u64 flags)
{
    stash_args(P_CLONE, flags, 0, 0, 0);
    return 0;
}

int tp_clone(struct tracepoint__syscalls__sys_enter_clone *args)
{
    return clone_enter((u64)args->clone_flags);
}

int tp_clone3(struct tracepoint__syscalls__sys_enter_clone3 *args)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->uargs);  // clone_args.flags
    return clone_enter(flags);
}

int tp_fork(struct tracepoint__sched__sched_process_fork *args)
{
    u32 parent = cur_tgid();
    u32 child = (u32)args->child_pid;
    u32 tid = cur_tid();
    struct pend_t *p = pend.lookup(&tid);
    int thread = 0;
    if (p && p->kind == P_CLONE) {
        thread = (p->p1 & CLONE_THREAD_) != 0;
        pend.delete(&tid);
    }
    if (thread)
        return 0;
    struct pinfo_t pi = {};
    pi.ppid = parent;
    bpf_get_current_comm(pi.comm, sizeof(pi.comm));
    pidmap.update(&child, &pi);

    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    emit_small(r, cgid, T_FORK, (s32)child, 0, 0);
    return 0;
}

int tp_exec_done(struct tracepoint__sched__sched_process_exec *args)
{
    // The comm changes at exec: keep the process tree's comm current.
    u32 tgid = cur_tgid();
    struct pinfo_t *pi = pidmap.lookup(&tgid);
    if (pi)
        bpf_get_current_comm(pi->comm, sizeof(pi->comm));
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (r)
        emit_small(r, cgid, T_EXECDONE, 0, 0, 0);
    return 0;
}

int tp_exit_group(struct tracepoint__syscalls__sys_enter_exit_group *args)
{
    u32 tgid = cur_tgid();
    struct pinfo_t *pi = pidmap.lookup(&tgid);
    if (pi)
        pi->exitcode = ((u32)args->error_code & 0xff) | 0x100;
    return 0;
}

int tp_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u32 tid = cur_tid();
    u32 tgid = cur_tgid();
    pend.delete(&tid);
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (r && args->group_dead) {
        struct pinfo_t *pi = pidmap.lookup(&tgid);
        u32 code = pi ? pi->exitcode : 0;
        emit_small(r, cgid, T_EXIT, (s32)(code & 0xff), (code & 0x100) ? 1 : 0, (s32)tid);
    }
    if (args->group_dead)
        pidmap.delete(&tgid);
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
    int n = bpf_probe_read_user_str(rec->bin, 256, filename);
    rec->bin_len = n > 0 ? n - 1 : 0;

    u32 argc = 0;
    u32 unreadable = n <= 0;
#pragma unroll
    for (int i = 0; i < ARGV_N; i++) {
        const char *arg = 0;
        rec->arg_len[i] = 0;
        if (argc == i) {
            if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) != 0) {
                unreadable = 1;
            } else if (arg) {
                int m = bpf_probe_read_user_str(rec->argv[i], ARG_CAP, arg);
                if (m > 0) {
                    rec->arg_len[i] = m - 1;
                    argc = i + 1;
                } else {
                    // Not faulted in (e.g. a literal of a forked child):
                    // userspace reads /proc/<pid>/cmdline after the exec.
                    unreadable = 1;
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
    if (unreadable)
        rec->argv_truncated |= 2;

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
// io_uring: a refused io_uring_setup (seccomp ERRNO) skips sys_enter but
// still passes sys_exit, so the exit is the one place that sees them all.

int tp_exit_io_uring_setup(struct tracepoint__syscalls__sys_exit_io_uring_setup *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    emit_small(r, cgid, T_IOURING, (s32)args->ret, 0, 0);
    return 0;
}

// ---------------------------------------------------------------------------
// Network

// Reads a user sockaddr into d.  Returns 0 for AF_INET/AF_INET6.
static __always_inline int read_sockaddr(struct dest_t *d, const void *uaddr)
{
    u16 family = 0;
    if (!uaddr || bpf_probe_read_user(&family, sizeof(family), uaddr) != 0)
        return -1;
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

int tp_socket(struct tracepoint__syscalls__sys_enter_socket *args)
{
    u32 family = (u32)args->family;
    if (family != 2 && family != 10)
        return 0;
    stash_args(P_SOCKET, 0, 0, (s32)family, (s32)args->type);
    return 0;
}

int tp_exit_socket(struct tracepoint__syscalls__sys_exit_socket *args)
{
    struct pend_t p = {};
    u64 cgid = 0;
    struct run_t *r = unstash_run(P_SOCKET, &p, &cgid);
    if (!r || args->ret < 0)
        return 0;
    struct sockkey_t k = fd_key((u32)args->ret);
    struct dest_t d = {};
    d.family = (u16)p.a;
    d.stype = (u8)(p.b & 0xf);
    if (sockdest.update(&k, &d) != 0)
        count_drop(r->slot);
    return 0;
}

static __always_inline void emit_net(struct run_t *r, u64 cgid, u32 fd, struct dest_t *d, u8 fastopen, const void *uaddr)
{
    struct net_rec_t *rec = get_scratch();
    if (!rec)
        return;
    fill_hdr(&rec->h, r, cgid, T_NET);
    rec->family = d->family;
    rec->port = d->port;
    rec->fd = fd;
    __builtin_memcpy(rec->addr, d->addr, 16);
    rec->fastopen = fastopen;
    rec->stype = d->stype;
    rec->path_len = 0;
    rec->path[0] = 0;
    if (d->family == 1 && uaddr) {
        // sockaddr_un: family, then sun_path (abstract when it starts with NUL).
        bpf_probe_read_user(rec->path, sizeof(rec->path), (const u8 *)uaddr + 2);
        rec->path_len = sizeof(rec->path);
    }
    emit(rec, sizeof(*rec), r->slot);
}

int tp_connect(struct tracepoint__syscalls__sys_enter_connect *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    struct sockkey_t k = fd_key((u32)args->fd);
    const void *uaddr = (const void *)args->uservaddr;
    struct dest_t d = {};
    struct dest_t *known = sockdest.lookup(&k);
    if (known)
        d.stype = known->stype;
    if (read_sockaddr(&d, uaddr) != 0) {
        if (d.family == 1) {
            emit_net(r, cgid, k.fd, &d, 0, uaddr);
            return 0;
        }
        // AF_UNSPEC dissolves a UDP association.
        if (known) {
            known->port = 0;
            known->writes = 0;
        }
        return 0;
    }
    if (d.port == 0) {
        if (known)
            known->port = 0;
        return 0;
    }
    if (sockdest.update(&k, &d) != 0)
        count_drop(r->slot);
    emit_net(r, cgid, k.fd, &d, 0, 0);
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

// Bytes sent on fd.  With an explicit address (sendto/sendmsg msg_name) on a
// socket that is not a stream: a datagram to that address (T_DGRAM), or, on
// a stream socket with MSG_FASTOPEN, a connection (T_NET) whose first bytes
// follow.  Without an address: the socket's remembered destination; a
// datagram socket's sends are datagrams, a stream's first STREAM_WRITES
// writes are captured (T_STREAM) for userspace to reassemble (TLS
// ClientHello, HTTP request, DNS over TCP, canaries).  Anything that is not
// a known inet socket (files, pipes) costs one hash lookup.
static __always_inline int do_send(struct run_t *r, u64 cgid, u32 fd, const void *uaddr, u32 msgflags,
                                   const struct iovec_t *vec, u64 vlen, const u8 *buf, u64 len,
                                   u8 syscall)
{
    struct sockkey_t k = fd_key(fd);
    struct dest_t *st = sockdest.lookup(&k);
    struct dest_t d = {};
    u8 type = T_STREAM;
    if (uaddr) {
        if (read_sockaddr(&d, uaddr) != 0)
            return 0;
        d.stype = st ? st->stype : 0;
        if (d.stype == 1) {
            if (!(msgflags & MSG_FASTOPEN_)) {
                // A connected stream ignores the address.
                if (!st->port)
                    return 0;
                __builtin_memcpy(&d, st, sizeof(d));
            } else {
                d.writes = 0;
                if (sockdest.update(&k, &d) != 0)
                    count_drop(r->slot);
                emit_net(r, cgid, fd, &d, 1, 0);
                st = sockdest.lookup(&k);
                if (!st)
                    return 0;
            }
        } else {
            type = T_DGRAM;
        }
    } else {
        if (!st || !st->port)
            return 0;
        __builtin_memcpy(&d, st, sizeof(d));
        if (d.stype == 2)
            type = T_DGRAM;
    }
    if (type == T_STREAM) {
        if (!st || st->writes >= STREAM_WRITES)
            return 0;
        st->writes++;
    }
    struct data_rec_t *rec = get_scratch();
    if (!rec)
        return 0;
    u32 n = gather(rec->data, vec, vlen, buf, len);
    if (n == 0)
        return 0;
    if (type == T_STREAM && st->writes == 1 && n >= 9 && rec->data[0] == 0x16) {
        // A whole ClientHello in the first write and first TLS record: what
        // follows is encrypted, nothing more to capture on this connection.
        // (A ClientHello fragmented over records is captured on.)
        u32 reclen = ((u32)rec->data[3] << 8) | rec->data[4];
        u32 hslen = 4 + (((u32)rec->data[6] << 16) | ((u32)rec->data[7] << 8) | rec->data[8]);
        if (hslen <= reclen && n >= 5 + reclen)
            st->writes = STREAM_WRITES;
    }
    fill_hdr(&rec->h, r, cgid, type);
    rec->family = d.family;
    rec->port = d.port;
    rec->fd = fd;
    __builtin_memcpy(rec->addr, d.addr, 16);
    rec->data_len = n;
    rec->stype = d.stype;
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
    return do_send(r, cgid, (u32)args->fd, 0, 0, 0, 0, (const u8 *)args->buf, args->count, 1);
}

int tp_writev(struct tracepoint__syscalls__sys_enter_writev *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_send(r, cgid, (u32)args->fd, 0, 0, (const struct iovec_t *)args->vec, args->vlen, 0, 0, 2);
}

int tp_sendto(struct tracepoint__syscalls__sys_enter_sendto *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    const void *addr = args->addr_len > 0 ? (const void *)args->addr : 0;
    return do_send(r, cgid, (u32)args->fd, addr, (u32)args->flags, 0, 0, (const u8 *)args->buff,
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

static __always_inline int do_msghdr(struct run_t *r, u64 cgid, u32 fd, const void *umsg, u32 flags, u8 syscall)
{
    struct user_msghdr_t m = {};
    if (bpf_probe_read_user(&m, sizeof(m), umsg) != 0)
        return 0;
    if (!m.iov || m.iovlen < 1)
        return 0;
    return do_send(r, cgid, fd, m.namelen > 0 ? m.name : 0, flags, m.iov, m.iovlen, 0, 0, syscall);
}

int tp_sendmsg(struct tracepoint__syscalls__sys_enter_sendmsg *args)
{
    u64 cgid = 0;
    struct run_t *r = lookup_run(&cgid);
    if (!r)
        return 0;
    return do_msghdr(r, cgid, (u32)args->fd, (const void *)args->msg, (u32)args->flags, 4);
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
    u32 flags = (u32)args->flags;
    // glibc's resolver sends A and AAAA in one sendmmsg; look at four.
    if (vlen >= 1)
        do_msghdr(r, cgid, fd, vec, flags, 5);
    if (vlen >= 2)
        do_msghdr(r, cgid, fd, vec + 64, flags, 5);
    if (vlen >= 3)
        do_msghdr(r, cgid, fd, vec + 128, flags, 5);
    if (vlen >= 4)
        do_msghdr(r, cgid, fd, vec + 192, flags, 5);
    return 0;
}
