"""Hosts on one machine: a network namespace each, joined by a bridge.

Every name made here starts with `cpn-` (namespaces, the bridge, the host
ends of the veth pairs, the run directory under the temporary directory),
and the addresses are in 10.231.0.0/24, which exists only on that bridge:
the root namespace is 10.231.0.1 on it, the hosts .10 and up. Nothing is
routed anywhere else.

Cleaning up is layered like the fault tests' private clusters (whose pieces
it reuses): the network is a context manager; an atexit hook destroys what
is still there when the process exits; and a new network first sweeps what
a dead run left behind (the run directory records its owner's pid). Only
one run at a time: the names are fixed.
"""

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.faults.cluster import OWNER_FILE, owned_directories

PREFIX = "cpn-"
BRIDGE = PREFIX + "br0"
SUBNET = "10.231.0"
RUN_DIRECTORY_PREFIX = PREFIX + "cluster-"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def our_namespaces():
    names = (line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip())
    return [name for name in names if name.startswith(PREFIX)]


def kill_namespace_processes(namespace):
    """SIGKILL every process in the namespace (`ip netns pids`: exactly those, whatever their names)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(pid) for pid in ip("netns", "pids", namespace, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def our_links():
    names = (line.split()[0].partition("@")[0] for line in ip("-brief", "link").stdout.splitlines() if line.strip())
    return [name for name in names if name.startswith(PREFIX)]


def remove_network():
    for namespace in our_namespaces():
        kill_namespace_processes(namespace)
        ip("netns", "delete", namespace, check=False)
    # A namespace lives on, nameless, while the kernel still has sockets of
    # its processes to close (a connection cut mid-transfer, say): deleting
    # the host ends of the veth pairs takes its interface away at once.
    for link in our_links():
        ip("link", "delete", link, check=False)


def sweep_leftovers():
    """Remove what a dead run left; refuse to start beside a live one."""
    leftovers = []
    for directory, live_owner in owned_directories(RUN_DIRECTORY_PREFIX):
        if live_owner:
            raise RuntimeError(f"a cluster test run (pid {live_owner}) still owns {directory}")
        leftovers.append(directory)
    # The dead run's processes first: a PostgreSQL still running writes into
    # its data directory while it is being removed, and leaves some of it.
    remove_network()
    for directory in leftovers:
        shutil.rmtree(directory, ignore_errors=True)


class Network:
    """The bridge, and hosts added with add_host(); `directory` is the run's scratch space."""

    def __init__(self):
        self.hosts = {}
        self.directory = None

    def __enter__(self):
        if os.geteuid() != 0:
            raise RuntimeError("the cluster tests make network namespaces: run them as root")
        sweep_leftovers()
        self.directory = Path(tempfile.mkdtemp(prefix=RUN_DIRECTORY_PREFIX))
        self.directory.chmod(0o755)  # the postgres user reaches its own data directories inside
        (self.directory / OWNER_FILE).write_text(str(os.getpid()))
        atexit.register(self.destroy)
        try:
            ip("link", "add", BRIDGE, "type", "bridge")
            ip("address", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
            ip("link", "set", BRIDGE, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc_info):
        self.destroy()

    def add_host(self, name, number):
        """A namespace `cpn-NAME` with address 10.231.0.NUMBER on the bridge; returns the address."""
        namespace = link = PREFIX + name
        address = f"{SUBNET}.{number}"
        ip("netns", "add", namespace)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", link, "master", BRIDGE, "up")
        ip("-n", namespace, "address", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        # As docs/deployment.md asks of an app host (harmless on the others): a
        # recycled worker's queued connections go to its siblings, not reset.
        ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.tcp_migrate_req=1")
        self.hosts[name] = address
        return address

    def launcher(self, name):
        """The command prefix that runs a program on host `name`."""
        return ["ip", "netns", "exec", PREFIX + name]

    def pids(self, name):
        """Every process running on host `name`."""
        return [int(pid) for pid in ip("netns", "pids", PREFIX + name, check=False).stdout.split()]

    def signal_processes(self, name, signum):
        """Send `signum` to every process of host `name`; for SIGKILL, return once they are gone."""
        for pid in self.pids(name):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGKILL:
            kill_namespace_processes(PREFIX + name)

    def partition(self, name, others, heal=False):
        """Drop every packet between host `name` and the hosts `others` (both ways); heal=True undoes it.

        The rest of the network is untouched: a partition, not a cut.
        """
        action = "-D" if heal else "-I"
        for a, b in [(name, other) for other in others] + [(other, name) for other in others]:
            peer = self.hosts[b]
            ip("netns", "exec", PREFIX + a, "iptables", action, "INPUT", "-s", peer, "-j", "DROP")
            ip("netns", "exec", PREFIX + a, "iptables", action, "OUTPUT", "-d", peer, "-j", "DROP")

    def cut(self, name):
        """Unplug the host: its processes run on, and nothing reaches them or leaves them."""
        ip("link", "set", PREFIX + name, "down")

    def reconnect(self, name):
        ip("link", "set", PREFIX + name, "up")

    def destroy(self):
        """Kill every process of every host, remove the namespaces, the bridge and the run directory."""
        if self.directory is None:
            return
        remove_network()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        atexit.unregister(self.destroy)
