/* Linked into the static Android builds (scripts/build_android.sh) ahead of
 * musl's libc.a, so that this accept4 is the one every caller gets.
 *
 * musl's accept4 retries a failed call (EINVAL, ENOSYS) as accept(2) plus
 * fcntl, for kernels older than accept4.  The server inside llama-cli and
 * llama-server hits EINVAL at exit (the listening socket is shut down), and
 * accept(2) is outside Android's app seccomp filter on arm64: the process
 * would die of SIGSYS on the way out.  Every kernel Android runs has accept4,
 * so the retry is dropped: the call is made as asked and its error returned. */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int accept4(int fd, struct sockaddr * addr, socklen_t * len, int flags)
{
    return (int)syscall(SYS_accept4, fd, addr, len, flags);
}
