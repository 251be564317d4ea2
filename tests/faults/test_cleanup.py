"""No private cluster outlives its tests: not when a test fails, not when the test process is killed."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

from django.test import SimpleTestCase

from tests.faults.cluster import sweep_leftover_clusters
from tests.helpers import ROOT

FAILING_TEST = """
import unittest
from tests.faults.cluster import PrivateCluster

class Failing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = cls.enterClassContext(PrivateCluster())
        print(cls.cluster.directory, cls.cluster.port, flush=True)

    def test_fails(self):
        self.fail("on purpose")

unittest.main()
"""

KILLED_OWNER = """
import time
from tests.faults.cluster import PrivateCluster

cluster = PrivateCluster().__enter__()
print(cluster.directory, cluster.port, flush=True)
time.sleep(600)
"""


def accepts_connections(port):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    except OSError:
        return False
    return True


class ClusterCleanupTests(SimpleTestCase):
    def assert_gone(self, directory, port):
        self.assertFalse(Path(directory).exists(), directory)
        self.assertFalse(accepts_connections(port), f"a server still listens on {port}")

    def test_a_failing_test_destroys_its_cluster(self):
        result = subprocess.run(
            [sys.executable, "-c", FAILING_TEST], cwd=ROOT, capture_output=True, text=True, timeout=120
        )

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("on purpose", result.stderr)
        directory, port = result.stdout.split()
        self.assert_gone(directory, port)

    def test_the_cluster_of_a_killed_test_process_is_swept_away(self):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_OWNER], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        # Should an assertion fail first: kill the child, then sweep its cluster (cleanups run last first).
        self.addCleanup(sweep_leftover_clusters)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.addCleanup(child.stdout.close)
        directory, port = child.stdout.readline().split()
        self.assertTrue(accepts_connections(port))
        child.send_signal(signal.SIGKILL)  # no cleanup code runs
        child.wait()
        self.assertTrue(Path(directory).exists())

        sweep_leftover_clusters()

        self.assert_gone(directory, port)
