"""Paths, logging, processes and result folders shared by every script of the kit."""

import argparse
import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "mysecrettoken"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What tokengate and the peers in benches/peers print once they are bound.
ANNOUNCED = re.compile(rb"listening on https?://(\S+)")
LOOPBACK_ANY = "127.0.0.1:0"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def parser(doc):
    """An argument parser whose --help prints the script's docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def results_dir(what, out=None):
    """benches/results/<date>-<what>/ (or `out`), created."""
    path = out or os.path.join(ROOT, "benches", "results", f"{datetime.date.today().isoformat()}-{what}")
    os.makedirs(path, exist_ok=True)
    return path


def build_tokengate():
    """The release binary, built."""
    run(["cargo", "build", "--release", "--quiet", "--bin", "tokengate"], cwd=ROOT)
    return os.path.join(ROOT, "target", "release", "tokengate")


def build_peer(name):
    """benches/peers/<name>, built into target/peers; the binary's path."""
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target", "peers"))
    manifest = os.path.join(ROOT, "benches", "peers", name, "Cargo.toml")
    run(["cargo", "build", "--release", "--quiet", "--manifest-path", manifest], env=env)
    return os.path.join(ROOT, "target", "peers", "release", "peer-" + name)


def listener():
    """A listening socket on 127.0.0.1, its port picked by the OS at bind time, that a child
    process can inherit (nginx through NGINX=fd;, uvicorn through --fd)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def read_response(sock, buf):
    """Reads one response (headers + content-length body); returns (status, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        rest += chunk
    return status, rest[length:]


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Proc:
    """A server the kit started, stopped by its PID.

    Its address comes from the OS at bind time, one of two ways:
    * `{addr}` in `cmd` becomes 127.0.0.1:0; the server binds it and prints `listening on
      http://ADDR` (tokengate, benches/peers), which is read from its output (`addrs` holds
      every address it announced, in order);
    * `inherit`: listening sockets from `listener()`, passed to the child (`addrs`: theirs).
    Either way start-up waits for that event, bounded by `timeout` seconds.
    """

    def __init__(self, name, cmd, *, pin=None, env=None, inherit=(), timeout=60, announces=None,
                 nofile=None, log_path=None):
        self.name = name
        self.addrs = []
        self._announced = threading.Event()
        cmd = [a.replace("{addr}", LOOPBACK_ANY) for a in cmd]
        if nofile:
            cmd = ["sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh"] + cmd
        if pin:
            cmd = ["taskset", "-c", pin] + cmd
        # Its output: kept in `log_path`, or in a temporary file.
        self.log = (open(log_path, "w+b") if log_path else
                    tempfile.NamedTemporaryFile(prefix=f"tokengate-kit-{name}-", suffix=".log"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     pass_fds=[s.fileno() for s in inherit])
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if announces is None:
            announces = not inherit
        for sock in inherit:
            self.addrs.append("%s:%d" % sock.getsockname()[:2])
        if announces and not self._announced.wait(timeout):
            self.stop()
            raise RuntimeError(f"{name} announced no address within {timeout} s:\n{self.output()[-2000:]}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{self.output()[-2000:]}")

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            m = ANNOUNCED.search(line)
            if m:
                self.addrs.append(m.group(1).decode())
                self._announced.set()
        # The process ended: nobody waits longer.
        self._announced.set()

    @property
    def addr(self):
        return self.addrs[0]

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    def output(self):
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def probe(self, path, headers=None, timeout=30):
        """The status of one request (an inherited socket queues it until the server accepts)."""
        req = urllib.request.Request(f"http://{self.addr}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def status_kib(self, key):
        """A field of /proc/PID/status in KiB (VmRSS:, VmHWM:); 0 once gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def cpu_times(self):
        """(user, system) CPU seconds of the process and its children."""
        user = system = 0
        for pid in [self.proc.pid] + children(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])
                system += int(fields[12])
            except OSError:
                pass
        return user / CLK_TCK, system / CLK_TCK

    def cpu_seconds(self):
        return sum(self.cpu_times())

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Stops the process (by PID) and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode

    def announced(self, pattern):
        """The first match of `pattern` (bytes, one group) in what the process printed so far."""
        m = re.search(pattern, self.output().encode())
        return m.group(1).decode() if m else None


def wait_for(condition, seconds):
    """Polls `condition` (a few times a second) until it holds; fails after `seconds`."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {seconds} s")


def pins(no_pin=False):
    """(server cores, load-generator cores) for taskset on a machine of 2 to 8 cores, else
    (None, None): servers on core 0, the load generator on the others."""
    import shutil
    cores = os.cpu_count() or 1
    if no_pin or not shutil.which("taskset") or not 2 <= cores <= 8:
        return None, None
    gen = "1" if cores == 2 else f"1-{cores - 1}"
    log(f"{cores} cores: servers pinned to core 0, load generator to cores {gen} (taskset)")
    return "0", gen
