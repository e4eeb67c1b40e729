"""podling's RuntimeDefault seccomp profile, as data, in the OCI format runc reads.

Contract: everything not listed fails with EPERM (defaultAction SCMP_ACT_ERRNO,
defaultErrnoRet 1). The allowlist holds what ordinary programs use (libc start-up,
files, sockets, threads, signals, timers, polling, SysV/POSIX IPC, ...), so shells,
busybox and interpreters such as Python run unchanged. Left out, as in the usual
container profiles: namespace and mount syscalls (unshare, setns, mount, pivot_root,
...), kernel modules, reboot, clock setting, kexec, keyrings, bpf, perf, userfaultfd,
io_uring, and clone with namespace flags. A capability that makes one of those
legitimate (CAP_SYS_ADMIN for mount/unshare/setns, CAP_SYS_TIME for settimeofday, ...)
re-allows it, since the container was granted that power explicitly.

clone3 answers ENOSYS rather than EPERM without CAP_SYS_ADMIN: its flags live in memory
a filter cannot inspect, and ENOSYS makes libc fall back to clone, which is checked.
Names unknown on an architecture are skipped by runc (libseccomp), so one list serves
x86_64/x86/x32 and aarch64/arm.
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
# CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000


def _words(text: str) -> list[str]:
    return text.split()


ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}

ALLOWED = _words(
    """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir
chmod chown chown32 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat
dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2
fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32
getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel
io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl
ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync
munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
process_vm_readv process_vm_writev pselect6 pselect6_time64 ptrace pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64
recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32
setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid
setsockopt setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigpending sigprocmask sigreturn sigsuspend socket socketcall
socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
vfork vmsplice wait4 waitid waitpid write writev
arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls
modify_ldt
"""
)

# personality(2) personas that are harmless: PER_LINUX, PER_LINUX32, UNAME26 variants,
# and the query value 0xffffffff.
PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

# Syscalls a capability makes legitimate.
BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": _words(
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
        "mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname "
        "sethostname setns syslog umount umount2 unshare"
    ),
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": _words(
        "settimeofday stime clock_settime clock_settime64 clock_adjtime clock_adjtime64"
    ),
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}  # fmt: skip


def _rule(names: list[str], action: str = "SCMP_ACT_ALLOW", **extra: Any) -> dict[str, Any]:
    return {"names": names, "action": action, **extra}


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _conditional(caps: set[str]) -> list[dict[str, Any]]:
    rules = []
    for cap, names in BY_CAPABILITY.items():
        if cap in caps:
            rules.append(_rule(sorted(set(names))))
    if "CAP_SYS_ADMIN" not in caps:
        # clone only without namespace flags (flags are argument 0 on x86 and arm)
        no_ns = _arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)
        rules.append(_rule(["clone"], args=[no_ns]))
        rules.append(_rule(["clone3"], "SCMP_ACT_ERRNO", errnoRet=ENOSYS))
    return rules


def default_profile(caps: list[str], machine: str) -> dict[str, Any]:
    """The RuntimeDefault profile for a container holding `caps`, on `machine`
    (platform.machine()); an unknown machine gets the native architecture only."""
    rules = [_rule(sorted(set(ALLOWED)))]
    rules += [_rule(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]) for p in PERSONALITIES]
    rules += _conditional(set(caps))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(ARCHITECTURES.get(machine, [])),
        "syscalls": rules,
    }
