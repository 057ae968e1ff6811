"""nginx as a peer: serving a socket the kit bound, and the gateway configuration the kits share."""

import os
import shutil
import sys

from . import common

# nginx as the gateway: the key checked with a map, keep-alive to the upstream.
GATEWAY = """
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    map $http_x_token $key_ok { default 0; "%(key)s" 1; }
    upstream api { server %(upstream)s; keepalive %(keepalive)d; keepalive_requests 100000000; }
    server {
        listen %(listen)s;
        location / {
            if ($key_ok = 0) { return 401 '{"detail":"Unauthorized"}'; }
            proxy_set_header X-Token "";
            proxy_set_header Authorization "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://api;
        }
    }
}
"""


def binary():
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(path):
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    return path


def start(name, template, tmp, pin=None, wrap=(), **values):
    """nginx serving `template` (a %-format with `listen` (and `listen2`): the address of a socket
    the kit bound and nginx inherits, and `values`) from tmp/name. Master mode: nginx with master_process off
    closes an inherited socket (connections reset); the template sets worker_processes 1, and
    Proc counts the master's and the worker's CPU together. `wrap`: a command nginx runs under
    (valgrind)."""
    # One socket per listen directive the template has: `listen`, and `listen2` if it uses it.
    names = ["listen"] + (["listen2"] if "%(listen2)s" in template else [])
    socks = [common.listener() for _ in names]
    addrs = {n: "%s:%d" % s.getsockname()[:2] for n, s in zip(names, socks)}
    # Run as root, nginx's workers drop to nobody: they must read what tmp holds.
    os.chmod(tmp, 0o755)
    prefix = os.path.join(tmp, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(template % dict(values, **addrs))
    cmd = list(wrap) + [binary(), "-p", prefix, "-c", conf, "-g",
           f"daemon off; pid {prefix}/nginx.pid; error_log stderr error;"]
    inherited = "".join(f"{s.fileno()};" for s in socks)
    proc = common.Proc(name, cmd, pin=pin, env=dict(os.environ, NGINX=inherited), inherit=socks)
    for s in socks:
        s.close()
    return proc


def worker(proc):
    """The PID of nginx's worker (what strace and perf attach to), or of nginx if it has none."""
    return (common.children(proc.proc.pid) or [proc.proc.pid])[0]
