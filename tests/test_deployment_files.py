"""docker compose cannot run here (no Docker engine), so check what the files reference."""

import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import sys
from unittest import mock, skipUnless

import yaml
from django.test import SimpleTestCase, TestCase, override_settings
from granian import Granian
from prometheus_client.parser import text_string_to_metric_families

from coupons.services import create_coupon
from couponsite.serve import former_names_in_use, server_options, switch_interval_ms
from couponsite.settings import database_settings
from tests.faults.service import SERVE
from tests.helpers import ROOT

# `make run`'s server command, as the image and the compose files run it too.
SERVE_COMMAND = " ".join(["python", *SERVE])


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

    def test_installs_the_pinned_requirements_and_runs_migrations_then_the_server(self):
        self.assertIn("pip install -r requirements.txt", self.instructions("RUN"))
        command = " ".join(self.instructions("CMD"))
        self.assertLess(command.index("manage.py migrate"), command.index(SERVE_COMMAND))
        self.assertIn("WEB_BIND=0.0.0.0:8000", self.instructions("ENV"))
        self.assertIn("8000", " ".join(self.instructions("EXPOSE")))

    def test_every_runtime_requirement_is_pinned(self):
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                with self.subTest(line=line):
                    self.assertRegex(line, r"^[A-Za-z0-9_.\-\[\],]+==[0-9][^ ]*$")


class ComposeTests(SimpleTestCase):
    # /metrics reads the stock of live coupons from the database.
    databases = {"default"}

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
        job, deliver_events = config["scrape_configs"]
        self.assertEqual(job["metrics_path"], "/metrics")
        self.assertEqual(deliver_events["static_configs"][0]["targets"], ["deliver_events:9101"])
        self.assertEqual(job["static_configs"][0]["targets"], ["web:8000"])

        # The service answers a scrape addressed to "web:8000" with its compose settings.
        allowed_hosts = self.services["web"]["environment"]["ALLOWED_HOSTS"].split(",")
        with override_settings(ALLOWED_HOSTS=allowed_hosts):
            response = self.client.get("/metrics", HTTP_HOST="web:8000")
        self.assertEqual(response.status_code, 200)
        self.assertIn(b"django_http_requests_latency_including_middlewares_seconds", response.content)

    def test_web_logs_json_lines(self):
        self.assertEqual(self.services["web"]["environment"]["LOG_FORMAT"], "json")


class ServerConfigTests(SimpleTestCase):
    """couponsite/serve.py: what it asks of granian, from the environment (tests/test_server.py runs it)."""

    def options(self, **environment):
        return server_options({name: value for name, value in environment.items() if value is not None})

    def test_the_defaults(self):
        options = self.options()
        self.assertEqual((options["address"], options["port"]), ("127.0.0.1", 8000))
        self.assertEqual(options["target"], "couponsite.wsgi:application")
        self.assertEqual(options["interface"], "wsgi")
        self.assertEqual(options["workers"], multiprocessing.cpu_count())
        self.assertEqual(options["blocking_threads"], 16)
        self.assertTrue(options["respawn_failed_workers"])
        self.assertEqual((options["workers_lifetime"], options["workers_max_rss"]), (3600, 1024))
        self.assertFalse(options["log_access"])

    def test_settings_and_the_gunicorn_names_they_replace(self):
        new = self.options(WEB_BIND="[::]:9000", WEB_THREADS="8", WEB_TIMEOUT="40", WEB_ACCESS_LOG="-")
        former = self.options(
            GUNICORN_BIND="[::]:9000", GUNICORN_THREADS="8", GUNICORN_TIMEOUT="40", GUNICORN_ACCESS_LOG="-"
        )
        for options in (new, former):
            self.assertEqual((options["address"], options["port"], options["blocking_threads"]), ("::", 9000, 8))
            self.assertEqual(options["workers_kill_timeout"], 40)
            self.assertTrue(options["log_access"])
        self.assertEqual(self.options(WEB_THREADS="4", GUNICORN_THREADS="8")["blocking_threads"], 4)
        self.assertEqual(former_names_in_use({"GUNICORN_THREADS": "8"}), [("GUNICORN_THREADS", "WEB_THREADS")])
        self.assertEqual(former_names_in_use({"GUNICORN_THREADS": "8", "WEB_THREADS": "4"}), [])
        off = self.options(WEB_WORKER_LIFETIME="0", WEB_WORKER_MAX_RSS="0")
        self.assertEqual((off["workers_lifetime"], off["workers_max_rss"]), (None, None))

    @mock.patch.dict(os.environ, {"DATABASE_CONNECT_TIMEOUT": "", "DATABASE_POOL_TIMEOUT": ""})
    def test_a_stopping_worker_outlives_the_longest_database_wait(self):
        options = self.options()
        with mock.patch.dict(os.environ, {"DATABASE_POOL_MAX_SIZE": "4", "DATABASE_STATEMENT_TIMEOUT": ""}):
            database = database_settings("postgres://u@db.example/coupons")["OPTIONS"]
        statement_timeout = int(re.search(r"statement_timeout=(\d+)", database["options"])[1]) / 1000
        # The longest a request waits on the database: for a connection, then for one statement.
        longest_wait = max(database["connect_timeout"], database["pool"]["timeout"]) + statement_timeout
        self.assertGreater(
            options["workers_kill_timeout"], longest_wait, "a graceful stop must not cut off an answer on its way"
        )

    def test_the_switch_interval_is_checked_then_set_in_every_worker(self):
        self.assertIsNone(switch_interval_ms({}))
        self.assertEqual(switch_interval_ms({"WEB_SWITCH_INTERVAL_MS": "0.5"}), 0.5)
        for malformed in ["0", "-1", "fast", "nan", "5000"]:
            with self.subTest(malformed), self.assertRaisesRegex(SystemExit, "WEB_SWITCH_INTERVAL_MS"):
                switch_interval_ms({"WEB_SWITCH_INTERVAL_MS": malformed})
        # A worker imports couponsite.wsgi: that is where the interval is set.
        worker = as_a_worker("import sys; print(sys.getswitchinterval())", WEB_SWITCH_INTERVAL_MS="0.5")
        self.assertEqual(worker.stdout.strip(), "0.0005", worker.stderr)

    def test_a_worker_freezes_what_it_loaded_before_its_first_request(self):
        # A worker imports couponsite.wsgi: by then the URL conf (the claim view among it) is loaded, and all of it
        # is out of the collector's generations, so that no full collection walks it; the collector still runs.
        worker = as_a_worker(
            "import gc; from coupons.api.views import ClaimApi;"
            " print(gc.isenabled(), gc.get_freeze_count(), any(o is ClaimApi for o in gc.get_objects()))"
        )
        enabled, frozen, claim_view_collectable = worker.stdout.split()
        self.assertEqual((enabled, claim_view_collectable), ("True", "False"), worker.stderr)
        self.assertGreater(int(frozen), 50_000)

    def test_granian_accepts_the_options(self):
        server = Granian(**self.options())
        self.assertEqual(server.blocking_threads, 16)


def as_a_worker(code, **environ):
    """Run `code` in a fresh interpreter once it has imported couponsite.wsgi, as a server's worker does."""
    return subprocess.run(
        [sys.executable, "-c", f"import couponsite.wsgi; {code}"],
        cwd=ROOT,
        env={**os.environ, **environ, "DJANGO_SETTINGS_MODULE": "couponsite.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_config(path):
    """`docker-compose config` on a compose file: what an engine would run, checked without one."""
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / path), "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@skipUnless(shutil.which("docker-compose"), "docker-compose (Debian's) validates compose files; .ci/run installs it")
class ComposeConfigTests(SimpleTestCase):
    def test_both_compose_files_are_valid(self):
        for path in ("docker-compose.yml", "docker-compose.cluster.yml"):
            with self.subTest(path=path):
                result = compose_config(path)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn("services:", result.stdout)


class ClusterComposeTests(SimpleTestCase):
    """docker-compose.cluster.yml: the topology tests/cluster builds in network namespaces."""

    def setUp(self):
        self.compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
        self.services = self.compose["services"]
        self.app_hosts = [name for name, s in self.services.items() if s.get("command") == SERVE_COMMAND.split()]
        self.database_hosts = [name for name, s in self.services.items() if "PATRONI_NAME" in s.get("environment", {})]

    def test_app_hosts_run_the_shipped_server_and_reach_the_primary_through_haproxy(self):
        self.assertGreaterEqual(len(self.app_hosts), 2)
        for name in self.app_hosts:
            with self.subTest(app_host=name):
                service = self.services[name]
                self.assertEqual(service["build"], ".")
                url = service["environment"]["DATABASE_URL"]
                self.assertRegex(url, r"^postgres://postgres:[^@]+@lb:5000/coupons$")
                self.assertIn(name, service["environment"]["ALLOWED_HOSTS"].split(","))

    def test_haproxy_runs_the_shipped_config_on_every_host_of_the_compose_file(self):
        lb = self.services["lb"]
        self.assertIn("./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro", lb["volumes"])
        # Its error files, relative to the config (default-path config).
        self.assertIn("./deploy/haproxy-errors:/usr/local/etc/haproxy/haproxy-errors:ro", lb["volumes"])
        environment = lb["environment"]
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        lines = [line for line in config.splitlines() if not line.lstrip().startswith("#")]
        referenced = set(re.findall(r'"\$\{(\w+)\}', "\n".join(lines)))
        self.assertEqual(referenced, set(environment), "every variable of haproxy.cfg set, no other")
        self.assertEqual({environment[name.upper()] for name in self.app_hosts}, {f"{n}:8000" for n in self.app_hosts})
        self.assertEqual({environment[name.upper()] for name in self.database_hosts}, set(self.database_hosts))

    @skipUnless(shutil.which("haproxy"), "Debian's haproxy checks its config; make test-cluster installs it")
    def test_haproxy_accepts_the_config_with_the_compose_values(self):
        environment = {**os.environ, **self.services["lb"]["environment"]}
        # Addresses HAProxy can resolve here: the compose file's host names exist only in its network.
        environment.update({name: value.replace(value.split(":")[0], "127.0.0.1") for name, value in environment.items()
                            if name in {h.upper() for h in [*self.app_hosts, *self.database_hosts]}})  # fmt: skip
        result = subprocess.run(
            ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
            env=environment,
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_database_hosts_run_patroni_with_the_shipped_config_and_a_name_each(self):
        self.assertEqual(len(self.database_hosts), 3, "three: quorum commit keeps a claim on two when one is lost")
        dockerfile = (ROOT / "deploy" / "patroni.Dockerfile").read_text()
        self.assertIn("COPY deploy/patroni.yml /etc/patroni/patroni.yml", dockerfile)
        # The pinned Patroni (deploy/requirements-patroni.txt), not the distribution's.
        self.assertIn("pip install --no-cache-dir -r /opt/patroni/requirements-patroni.txt", dockerfile)
        self.assertNotIn("install -y --no-install-recommends patroni", dockerfile)
        names = set()
        for name in self.database_hosts:
            with self.subTest(database_host=name):
                service = self.services[name]
                self.assertEqual(service["build"]["dockerfile"], "deploy/patroni.Dockerfile")
                environment = service["environment"]
                names.add(environment["PATRONI_NAME"])
                self.assertEqual(environment["PATRONI_POSTGRESQL_CONNECT_ADDRESS"], f"{name}:5432")
                self.assertEqual(environment["PATRONI_RESTAPI_CONNECT_ADDRESS"], f"{name}:8008")
                etcd = [name for name in self.services if name.startswith("etcd")]
                self.assertEqual(len(etcd), 3, "three etcd members")
                self.assertEqual(environment["PATRONI_ETCD3_HOSTS"], ",".join(f"{name}:2379" for name in etcd))
        self.assertEqual(len(names), 3)
        patroni = yaml.safe_load((ROOT / "deploy" / "patroni.yml").read_text())
        # A commit on the primary and one of the two standbys; with both standbys gone, no commit at all.
        dcs = patroni["bootstrap"]["dcs"]
        self.assertEqual((dcs["synchronous_mode"], dcs["synchronous_node_count"]), ("quorum", 1))
        self.assertIs(dcs["synchronous_mode_strict"], True)
        self.assertTrue(patroni["bootstrap"]["dcs"]["failsafe_mode"])
        self.assertEqual(patroni["bootstrap"]["dcs"]["postgresql"]["parameters"]["synchronous_commit"], "on")
        self.assertEqual(patroni["etcd3"]["hosts"], "etcd1:2379,etcd2:2379,etcd3:2379")

    def test_prometheus_scrapes_every_app_host(self):
        source, target = self.services["prometheus"]["volumes"][0].split(":")[:2]
        self.assertEqual(target, "/etc/prometheus/prometheus.yml")
        job, deliver_events = yaml.safe_load((ROOT / source).read_text())["scrape_configs"]
        self.assertEqual(sorted(job["static_configs"][0]["targets"]), sorted(f"{n}:8000" for n in self.app_hosts))
        workers = [name for name, s in self.services.items() if "deliver_events" in s.get("command", [])]
        self.assertEqual(sorted(deliver_events["static_configs"][0]["targets"]), [f"{n}:9101" for n in workers])

    def test_delivery_workers_run_with_the_app_hosts_settings_and_serve_their_metrics(self):
        workers = [name for name, s in self.services.items() if "deliver_events" in s.get("command", [])]
        self.assertEqual(len(workers), 2)  # either may die: they share the subscriptions
        for name in workers:
            with self.subTest(worker=name):
                environment = self.services[name]["environment"]
                self.assertEqual(environment["DATABASE_URL"], self.services["app1"]["environment"]["DATABASE_URL"])
                self.assertEqual(environment["WEBHOOK_METRICS_PORT"], "9101")


class GrafanaDashboardTests(TestCase):
    def setUp(self):
        self.dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "flash-sale.json").read_text())
        self.targets = [target for panel in self.dashboard["panels"] for target in panel["targets"]]

    def test_both_compose_files_provision_it_next_to_their_prometheus(self):
        for path in ("docker-compose.yml", "docker-compose.cluster.yml"):
            with self.subTest(path=path):
                grafana = yaml.safe_load((ROOT / path).read_text())["services"]["grafana"]
                mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
                self.assertEqual(mounts["/etc/grafana/provisioning"], "./deploy/grafana/provisioning")
                self.assertEqual(mounts["/var/lib/grafana/dashboards"], "./deploy/grafana/dashboards")
        provisioning = ROOT / "deploy" / "grafana" / "provisioning"
        [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
        self.assertEqual(datasource["url"], "http://prometheus:9090")
        [provider] = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
        self.assertEqual(provider["options"]["path"], "/var/lib/grafana/dashboards")
        self.assertEqual({target["datasource"]["uid"] for target in self.targets}, {datasource["uid"]})

    def test_every_series_it_queries_is_exported_by_the_service(self):
        create_coupon(name="DASHBOARD", amount=5)
        claim = self.client.post(
            "/api/coupons/claim", {"user_id": "alice", "coupon_name": "DASHBOARD"}, content_type="application/json"
        )
        self.assertEqual(claim.status_code, 201)
        create_coupon(name="QUEUED", amount=5, options={"admission": "queue"})
        entry = self.client.post("/api/coupons/QUEUED/entries", {"user_id": "bob"}, content_type="application/json")
        self.assertEqual(entry.status_code, 201)
        self.assertEqual(self.client.get("/api/coupons/QUEUED/entries/bob").status_code, 200)
        metrics = self.client.get("/metrics").content.decode()
        samples = [sample for family in text_string_to_metric_families(metrics) for sample in family.samples]

        pattern = r"\b(coupons?_\w+|django_\w+|admission_\w+)"
        queried = {name for t in self.targets for name in re.findall(pattern, t["expr"])}
        self.assertTrue(queried)
        self.assertLessEqual(queried, {sample.name for sample in samples})
        by_view = [s for s in samples if s.name.startswith("django_http_re")]
        views = {(sample.labels.get("view"), sample.labels.get("method")) for sample in by_view}
        self.assertLessEqual(
            {("coupon-claim", "POST"), ("admission-entries", "POST"), ("admission-standing", "GET")}, views
        )


class WorkerProcessTests(SimpleTestCase):
    """The service's processes run wherever the web server runs: make run (the Procfile, under honcho) and both
    compose files run the hold expiry worker and the webhook delivery worker beside it."""

    WORKERS = {
        "expire_holds": ["python", "manage.py", "expire_holds"],
        "deliver_events": ["python", "manage.py", "deliver_events"],
        "admission": ["python", "manage.py", "run_admission"],
    }

    def test_the_procfile_runs_the_web_server_as_the_image_does_and_each_worker_once(self):
        lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
        processes = dict(line.split(": ", 1) for line in lines)
        # make run puts the venv's commands first on PATH: `python` is the venv's.
        self.assertEqual(
            processes,
            {"web": SERVE_COMMAND, **{name: " ".join(command) for name, command in self.WORKERS.items()}},
        )

    def test_honcho_reads_it_and_make_run_starts_it_after_migrating(self):
        result = subprocess.run(
            [sys.executable, "-m", "honcho", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in ("web", *self.WORKERS):
            self.assertIn(name, result.stderr + result.stdout)
        makefile = (ROOT / "Makefile").read_text()
        recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
        self.assertLess(recipe.index("manage.py migrate"), recipe.index("honcho start"))
        self.assertRegex((ROOT / "requirements.txt").read_text(), r"(?m)^honcho==")

    def test_every_compose_file_runs_each_worker_on_the_web_servers_database(self):
        for path, web_name in (("docker-compose.yml", "web"), ("docker-compose.cluster.yml", "app1")):
            services = yaml.safe_load((ROOT / path).read_text())["services"]
            for name, command in self.WORKERS.items():
                with self.subTest(path=path, worker=name):
                    workers = [s for s in services.values() if s.get("command") == command]
                    self.assertTrue(workers)
                    for worker in workers:
                        self.assertEqual(worker["build"], ".")
                        self.assertEqual(
                            worker["environment"]["DATABASE_URL"], services[web_name]["environment"]["DATABASE_URL"]
                        )
                        self.assertTrue(worker["healthcheck"]["disable"])
                        self.assertEqual(worker["restart"], "unless-stopped")
                        # After the schema exists: behind the migration (web's, or the migrate service).
                        self.assertTrue({"web", "migrate"} & set(worker["depends_on"]))
