"""docker compose cannot run here (no Docker engine), so check what the files reference."""

import os
import re
import runpy
import shlex
import subprocess
import sys
from unittest import mock

import yaml
from django.test import SimpleTestCase, override_settings

from couponsite.settings import database_settings
from tests.helpers import ROOT


class DockerfileTests(SimpleTestCase):
    def setUp(self):
        self.lines = [
            line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip() and line[0] != "#"
        ]

    def instructions(self, name):
        return [line[len(name) + 1 :] for line in self.lines if line.startswith(name + " ")]

    def test_copied_paths_exist(self):
        copies = self.instructions("COPY")
        self.assertTrue(copies)
        for copy in copies:
            *sources, _destination = shlex.split(copy)
            for source in sources:
                with self.subTest(source=source):
                    self.assertTrue((ROOT / source).exists(), f"COPY {source}: no such file")

    def test_installs_the_pinned_requirements_and_runs_migrations_then_gunicorn(self):
        self.assertIn("pip install -r requirements.txt", self.instructions("RUN"))
        command = " ".join(self.instructions("CMD"))
        self.assertLess(command.index("manage.py migrate"), command.index("gunicorn"))
        self.assertIn("gunicorn.conf.py", command)
        self.assertIn("couponsite.wsgi", command)
        self.assertIn("8000", " ".join(self.instructions("EXPOSE")))

    def test_every_runtime_requirement_is_pinned(self):
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                with self.subTest(line=line):
                    self.assertRegex(line, r"^[A-Za-z0-9_.\-\[\],]+==[0-9][^ ]*$")


class ComposeTests(SimpleTestCase):
    def setUp(self):
        self.compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        self.services = self.compose["services"]

    def test_postgres_with_a_healthcheck(self):
        database = self.services["db"]
        self.assertTrue(database["image"].startswith("postgres:"))
        self.assertIn("pg_isready", " ".join(database["healthcheck"]["test"]))

    def test_web_builds_this_directory_and_waits_for_a_healthy_database(self):
        web = self.services["web"]
        self.assertEqual(web["build"], ".")
        self.assertTrue((ROOT / "Dockerfile").exists())
        self.assertEqual(web["depends_on"]["db"]["condition"], "service_healthy")
        self.assertIn("8000:8000", web["ports"])

    def test_web_reaches_the_composed_database(self):
        environment = self.services["web"]["environment"]
        database = self.services["db"]["environment"]
        match = re.fullmatch(r"postgres://(\w+):(\w+)@db:5432/(\w+)", environment["DATABASE_URL"])
        self.assertIsNotNone(match)
        self.assertEqual(
            match.groups(), (database["POSTGRES_USER"], database["POSTGRES_PASSWORD"], database["POSTGRES_DB"])
        )
        self.assertEqual(environment["DEBUG"], "0")

    def test_web_counts_claims_in_the_composed_redis(self):
        self.assertEqual(self.services["web"]["environment"]["REDIS_URL"], "redis://redis:6379/0")
        self.assertTrue(self.services["redis"]["image"].startswith("redis:"))
        self.assertIn("redis", self.services["web"]["depends_on"])

    def test_named_volumes_are_declared(self):
        for volume in self.services["db"].get("volumes", []):
            name = volume.split(":")[0]
            with self.subTest(volume=name):
                self.assertIn(name, self.compose["volumes"])

    def test_prometheus_scrapes_the_web_service_by_its_name(self):
        prometheus = self.services["prometheus"]
        source, target = prometheus["volumes"][0].split(":")[:2]
        self.assertEqual(target, "/etc/prometheus/prometheus.yml")
        config = yaml.safe_load((ROOT / source).read_text())
        [job] = config["scrape_configs"]
        self.assertEqual(job["metrics_path"], "/metrics")
        self.assertEqual(job["static_configs"][0]["targets"], ["web:8000"])

        # The service answers a scrape addressed to "web:8000" with its compose settings.
        allowed_hosts = self.services["web"]["environment"]["ALLOWED_HOSTS"].split(",")
        with override_settings(ALLOWED_HOSTS=allowed_hosts):
            response = self.client.get("/metrics", HTTP_HOST="web:8000")
        self.assertEqual(response.status_code, 200)
        self.assertIn(b"django_http_requests_latency_including_middlewares_seconds", response.content)

    def test_web_logs_json_lines(self):
        self.assertEqual(self.services["web"]["environment"]["LOG_FORMAT"], "json")


# The defaults, whatever the environment running the tests says.
@mock.patch.dict(os.environ, {"GUNICORN_TIMEOUT": "", "DATABASE_CONNECT_TIMEOUT": "", "DATABASE_POOL_TIMEOUT": ""})
class GunicornConfigTests(SimpleTestCase):
    def test_gunicorn_accepts_the_config_and_loads_the_application(self):
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--check-config", "--config", "gunicorn.conf.py", "couponsite.wsgi"],
            cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "couponsite.settings"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_workers_recycle_and_outlive_the_longest_database_wait(self):
        config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
        with mock.patch.dict(os.environ, {"DATABASE_POOL_MAX_SIZE": "4", "DATABASE_STATEMENT_TIMEOUT": ""}):
            options = database_settings("postgres://u@db.example/coupons")["OPTIONS"]
        statement_timeout = int(re.search(r"statement_timeout=(\d+)", options["options"])[1]) / 1000
        # The longest a request waits on the database: for a connection, then for one statement.
        longest_wait = max(options["connect_timeout"], options["pool"]["timeout"]) + statement_timeout

        self.assertGreater(
            config["timeout"], longest_wait, "a slow database must get clients a 503, not a killed worker"
        )
        self.assertGreater(config["max_requests"], 0)
        self.assertTrue(config["control_socket_disable"])
