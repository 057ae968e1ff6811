"""A redis-server of the kit's own on a Unix socket in a temporary folder (no port is picked),
and what the kits read of it."""

import os
import re
import subprocess

from . import common


def cli(socket, *args):
    return subprocess.run(["redis-cli", "-s", socket, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def command_calls(socket):
    """Script calls a client made so far (EVALSHA, EVAL; the commands a script runs itself,
    which INFO commandstats also lists, are not the client's)."""
    total = 0
    for line in cli(socket, "INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_(evalsha|eval|evalsha_ro|eval_ro):calls=(\d+)", line)
        if m:
            total += int(m.group(2))
    return total


def start(tmp, pin):
    """redis-server on tmp/redis.sock, no persistence, pinned to `pin`; (its Proc, the socket),
    once it answers PING (bounded)."""
    socket = os.path.join(tmp, "redis.sock")
    proc = common.Proc(
        "redis-server", ["redis-server", "--port", "0", "--unixsocket", socket, "--unixsocketperm", "700",
                         "--save", "", "--appendonly", "no", "--dir", tmp],
        pin=pin, announces=False)
    common.wait_for(lambda: os.path.exists(socket) and cli(socket, "PING").strip() == "PONG", 20)
    return proc, socket
