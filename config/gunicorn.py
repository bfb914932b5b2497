"""gunicorn settings shared by bin/serve, the production guide and the soak test (`-c` this file).

The access log never carries a query string: the live-ad API accepts its key as `?key=`, and a
log line is kept, shipped and read far more widely than the key should be. `%(U)s` is the path
alone; `%(r)s` (the request line) and `%(q)s` (the query) are never used.
"""

access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %(M)sms'
