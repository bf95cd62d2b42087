/*
 * nginx_graceful_term.so: makes Debian's unmodified nginx treat SIGTERM like SIGQUIT.
 *
 * Why: Heroku stops a dyno by sending SIGTERM to every process in it. nginx treats
 * SIGTERM as "fast stop" and cuts in-flight requests (an artifact upload), SIGQUIT as
 * "graceful stop" (finish in-flight requests, then exit). Heroku's nginx buildpack
 * patches nginx for this; we keep Debian's binary and preload this library instead
 * (LD_PRELOAD, set by the supervisor for nginx only; see docs/image.md, "Shutdown").
 *
 * How: nginx installs one handler for all its signals with sigaction() (in 1.22:
 * ngx_signal_handler(signo, siginfo, ucontext), SA_SIGINFO) and decides what to do from
 * signo. We interpose sigaction(): when nginx installs its SIGTERM handler, we keep it
 * and install a trampoline that calls it with SIGQUIT instead. Every other signal and
 * every other call passes through unchanged. Workers are forked from the master and
 * inherit the handler, so both get the graceful stop.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

/* nginx's own SIGTERM handler; only one of the two is set, as its flags say. */
static void (*nginx_handler)(int);
static void (*nginx_siginfo_handler)(int, siginfo_t *, void *);

static void sigterm_as_sigquit(int signo, siginfo_t *info, void *ucontext)
{
    (void)signo;
    if (nginx_siginfo_handler != NULL)
        nginx_siginfo_handler(SIGQUIT, info, ucontext);
    else if (nginx_handler != NULL)
        nginx_handler(SIGQUIT);
}

int sigaction(int signo, const struct sigaction *action, struct sigaction *old)
{
    static sigaction_fn real_sigaction;
    if (real_sigaction == NULL) {
        real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
        if (real_sigaction == NULL) {
            errno = ENOSYS;
            return -1;
        }
    }
    /* Only a real handler for SIGTERM is redirected: SIG_DFL and SIG_IGN stay as asked. */
    int has_siginfo = action != NULL && (action->sa_flags & SA_SIGINFO);
    if (signo != SIGTERM || action == NULL
        || (!has_siginfo && (action->sa_handler == SIG_DFL || action->sa_handler == SIG_IGN)))
        return real_sigaction(signo, action, old);

    struct sigaction trampoline = *action; /* same mask and flags, other function */
    nginx_siginfo_handler = has_siginfo ? action->sa_sigaction : NULL;
    nginx_handler = has_siginfo ? NULL : action->sa_handler;
    trampoline.sa_flags |= SA_SIGINFO;
    trampoline.sa_sigaction = sigterm_as_sigquit;
    return real_sigaction(signo, &trampoline, old);
}
