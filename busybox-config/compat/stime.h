/*
 * domu-builder compat header, force-included into every busybox object through
 * CONFIG_EXTRA_CFLAGS="-include <absolute path of this file>" (busybox-config/README.md).
 *
 * glibc 2.31 removed stime(); busybox before 1.32 calls it in coreutils/date.c and
 * util-linux/rdate.c, so a static link fails with "undefined reference to 'stime'".
 * This defines stime(t) in terms of clock_settime(), only where glibc no longer has it.
 * It is a function-like macro, so struct members named `stime` (e.g. in procps) are untouched,
 * and it is inert on older glibc, on musl, and on busybox releases that no longer call stime().
 */
#ifndef DOMU_COMPAT_STIME_H
#define DOMU_COMPAT_STIME_H

#include <features.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 31))
#include <time.h>

static inline int domu_compat_stime(const time_t *t)
{
	struct timespec ts;
	ts.tv_sec = *t;
	ts.tv_nsec = 0;
	return clock_settime(CLOCK_REALTIME, &ts);
}
#define stime(t) domu_compat_stime(t)
#endif

#endif /* DOMU_COMPAT_STIME_H */
