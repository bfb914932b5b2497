"""gunicorn settings shared by bin/serve, the production guide and the soak test (`-c` this file).

The access log never carries a query string: the live-ad API accepts its key as `?key=`, and a
log line is kept, shipped and read far more widely than the key should be. `%(U)s` is the path
alone; `%(r)s` (the request line) and `%(q)s` (the query) are never used.

worker_exit flushes the worker's delivery counts (adspace.stats) when it stops.
"""

access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %(M)sms'


def worker_exit(server, worker):
    """Write the worker's buffered delivery counts (adspace.stats) before it goes.

    atexit does the same for any other clean exit; this hook also runs when gunicorn ends a
    worker itself (a graceful restart, max_requests), where atexit handlers may not.
    """
    try:
        from adspace import stats
    except Exception:  # the app never loaded in this worker: nothing was counted
        return
    stats.flush_at_exit()
