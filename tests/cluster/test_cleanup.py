"""Nothing of a cluster run outlives it: not when its process is killed, not when a test fails; and a harness that
cannot run Patroni as the postgres user says so at once, before building anything."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock, skipUnless

from django.test import SimpleTestCase

from tests.cluster.network import our_links, our_namespaces, sweep_leftovers
from tests.cluster.topology import DEFAULT_PATRONI_VENV, Topology, patroni_command, wait_for
from tests.helpers import ROOT

# Each child starts a process on its host and waits until it runs there.
KILLED_OWNER = """
import subprocess, time
from tests.cluster.network import Network, ip

network = Network().__enter__()
network.add_host("leftover", 99)
subprocess.Popen([*network.launcher("leftover"), "sleep", "600"], stdout=subprocess.DEVNULL)
while not ip("netns", "pids", "cpn-leftover").stdout.strip():
    time.sleep(0.05)
print(network.directory, flush=True)
time.sleep(600)
"""

FAILING_OWNER = """
import subprocess, time
from tests.cluster.network import Network, ip

with Network() as network:
    network.add_host("failing", 98)
    subprocess.Popen([*network.launcher("failing"), "sleep", "600"], stdout=subprocess.DEVNULL)
    while not ip("netns", "pids", "cpn-failing").stdout.strip():
        time.sleep(0.05)
    print(network.directory, flush=True)
    raise SystemExit("on purpose")
"""


def sleepers():
    """Processes running the sleep the children started in their namespaces."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == b"sleep\x00600\x00":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@skipUnless(os.environ.get("CLUSTER_TESTS"), "make test-cluster runs these (as root: network namespaces)")
class NetworkCleanupTests(SimpleTestCase):
    def assert_nothing_left(self, directory):
        self.assertFalse(Path(directory).exists(), directory)
        self.assertEqual(our_namespaces(), [])
        self.assertEqual(our_links(), [])
        # SIGKILLed, they may take a moment to be gone from /proc.
        self.assertEqual(wait_for(lambda: not sleepers(), 10, "the killed processes to go") and sleepers(), [])

    def test_a_failing_run_removes_its_namespaces_processes_and_directory(self):
        result = subprocess.run(
            [sys.executable, "-c", FAILING_OWNER], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

        self.assertIn("on purpose", result.stderr)
        self.assert_nothing_left(result.stdout.strip())

    def test_the_leftovers_of_a_killed_run_are_swept_by_the_next(self):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_OWNER], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.addCleanup(sweep_leftovers)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.addCleanup(child.stdout.close)
        directory = child.stdout.readline().strip()
        child.send_signal(signal.SIGKILL)  # no cleanup code runs
        child.wait()
        self.assertTrue(Path(directory).exists())
        self.assertEqual(our_namespaces(), ["cpn-leftover"])
        self.assertTrue(sleepers())

        sweep_leftovers()

        self.assert_nothing_left(directory)


@skipUnless(os.environ.get("CLUSTER_TESTS"), "make test-cluster runs these (as root: network namespaces)")
class PatroniCheckTests(SimpleTestCase):
    def test_a_patroni_the_postgres_user_cannot_run_stops_the_harness_at_once_saying_what_to_do(self):
        started = time.monotonic()
        with mock.patch.dict(os.environ, {"PATRONI_VENV": "/nonexistent-patroni-venv"}):
            with self.assertRaises(RuntimeError) as caught:
                Topology().__enter__()
        self.assertIn("make patroni", str(caught.exception))
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(our_namespaces(), [], "nothing was built")

    def test_the_pinned_patroni_runs_as_the_postgres_user(self):
        self.assertTrue(patroni_command()[0].startswith(os.environ.get("PATRONI_VENV") or DEFAULT_PATRONI_VENV))
