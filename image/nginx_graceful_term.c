/*
 * nginx_graceful_term.so: makes Debian's unmodified nginx treat SIGTERM and SIGINT like
 * SIGQUIT.
 *
 * Why: Heroku stops a dyno by sending SIGTERM to every process in it, and Ctrl-C in a
 * terminal (the local run, `docker run -it`) sends SIGINT to every process of the
 * foreground group. nginx treats both as "fast stop" and cuts in-flight requests (an
 * artifact upload), SIGQUIT as "graceful stop" (finish in-flight requests, then exit).
 * Heroku's nginx buildpack patches nginx for this; we keep Debian's binary and preload
 * this library instead (LD_PRELOAD, set by the supervisor for nginx only; see
 * docs/image.md, "Shutdown").
 *
 * How: nginx installs one handler for all its signals with sigaction() (in 1.22:
 * ngx_signal_handler(signo, siginfo, ucontext), SA_SIGINFO) and decides what to do from
 * signo. We interpose sigaction(): when nginx installs its SIGTERM or SIGINT handler, we
 * keep it and install a trampoline that calls it with SIGQUIT instead. Every other signal
 * and every other call passes through unchanged. Workers are forked from the master and
 * inherit the handler, so both get the graceful stop.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

/* nginx's own handlers for the two redirected signals (nginx uses one function for all
 * its signals, but each is kept apart anyway); per signal only one field is set, as the
 * handler's flags say. */
struct saved_handler {
    void (*plain)(int);
    void (*siginfo)(int, siginfo_t *, void *);
};
static struct saved_handler saved_term, saved_int;

static struct saved_handler *saved_for(int signo)
{
    return signo == SIGTERM ? &saved_term : signo == SIGINT ? &saved_int : NULL;
}

static void stop_as_sigquit(int signo, siginfo_t *info, void *ucontext)
{
    struct saved_handler *saved = saved_for(signo);
    if (saved == NULL)
        return;
    if (saved->siginfo != NULL)
        saved->siginfo(SIGQUIT, info, ucontext);
    else if (saved->plain != NULL)
        saved->plain(SIGQUIT);
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
    /* Only a real handler for SIGTERM or SIGINT is redirected: SIG_DFL and SIG_IGN stay as
     * asked. */
    struct saved_handler *saved = saved_for(signo);
    int has_siginfo = action != NULL && (action->sa_flags & SA_SIGINFO);
    if (saved == NULL || action == NULL
        || (!has_siginfo && (action->sa_handler == SIG_DFL || action->sa_handler == SIG_IGN)))
        return real_sigaction(signo, action, old);

    struct sigaction trampoline = *action; /* same mask and flags, other function */
    saved->siginfo = has_siginfo ? action->sa_sigaction : NULL;
    saved->plain = has_siginfo ? NULL : action->sa_handler;
    trampoline.sa_flags |= SA_SIGINFO;
    trampoline.sa_sigaction = stop_as_sigquit;
    return real_sigaction(signo, &trampoline, old);
}
