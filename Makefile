# The two commands of the README: `make run` starts the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test test-admission test-import superuser bench capacity patroni barman cluster-tools test-cluster test-chaos test-restore test-restore-rto docs docs-serve

# The Procfile's processes (web server, hold expiry worker, webhook delivery worker) under honcho, the venv's commands first.
run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

test: $(VENV)/.installed
	$(BIN)/pytest -n auto

# Fair admission at the issue's sizes: 10,000 users entering at once, a queued sale of 500 units and 5,000
# entrants over HTTP (make test runs a fifth and a tenth of them: CI's time).
test-admission: $(VENV)/.installed
	ADMISSION_FULL_SIZE=1 $(BIN)/pytest tests/test_admission_fairness.py tests/test_admission_sale.py -s

# The import of the issue's 1,000,000 codes (make test imports 200,000: CI's time).
test-import: $(VENV)/.installed
	IMPORT_TEST_CODES=1000000 $(BIN)/pytest tests/stress/test_imports.py -k many_codes -s

# The flash-sale benchmark (docs/performance.md): wrk and pgbench from Debian's packages.
bench: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/flashsale.py $(ARGS)

# The capacity model's measurements (docs/deployment.md): same tools as bench.
capacity: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/capacity.py $(ARGS)

# A pinned requirements file $(1) in a virtualenv $(2) of its own on Debian's
# python3 (with `python3 -m venv` options $(3)), outside the checkout: the
# postgres user runs what is in it, and a checkout may sit where that user
# cannot enter (root's home). Rebuilt only when the file changed.
define pinned-venv
	@cmp -s $(1) $(2)/$(notdir $(1)) || { \
		rm -rf $(2) && /usr/bin/python3 -m venv $(3) $(2) && \
		$(2)/bin/pip install --quiet --disable-pip-version-check -r $(1) && \
		cp $(1) $(2)/ && chmod -R a+rX $(2); }
endef

# Patroni, pinned (deploy/requirements-patroni.txt).
PATRONI_VENV ?= /opt/couponsite-patroni
export PATRONI_VENV
patroni:
	$(call pinned-venv,deploy/requirements-patroni.txt,$(PATRONI_VENV))

# Barman, pinned (deploy/requirements-barman.txt): the backup host's tool. Its
# venv sees the system's site-packages: its psycopg2 is Debian's
# (python3-psycopg2), not one compiled from source.
BARMAN_VENV ?= /opt/couponsite-barman
export BARMAN_VENV
barman:
	$(call pinned-venv,deploy/requirements-barman.txt,$(BARMAN_VENV),--system-site-packages)

# The multi-host deployment of deploy/ under failure (tests/cluster,
# docs/deployment.md): as root, in network namespaces; HAProxy, etcd and PgBouncer
# from Debian's packages, Patroni from `make patroni`; pgbench's ceilings use
# the bench's helpers.
CLUSTER_PACKAGES = haproxy etcd-server etcd-client pgbouncer iptables python3-venv python3-psycopg2
cluster-tools: $(VENV)/.installed
	dpkg -s $(CLUSTER_PACKAGES) >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(CLUSTER_PACKAGES))
	$(BIN)/pip install --quiet -r requirements-bench.txt
	@$(MAKE) --no-print-directory patroni barman

test-cluster: cluster-tools
	CLUSTER_TESTS=1 $(BIN)/pytest tests/cluster

# A sale under a randomized, seeded schedule of faults, checked afterwards
# (tests/cluster/test_chaos.py, docs/deployment.md): every fault type once,
# then random ones until MINUTES have passed.
SEED ?= 1
MINUTES ?= 3
test-chaos: cluster-tools
	CLUSTER_TESTS=1 CHAOS_SEED=$(SEED) CHAOS_MINUTES=$(MINUTES) $(BIN)/pytest tests/cluster/test_chaos.py \
		-o log_cli=true --log-cli-level=INFO

# The recovery drills (tests/cluster/test_restore.py, docs/operator-guide.md):
# the deployment with its backup host (Barman), a sale, a fault, a restore,
# and the checker. CI runs one: make test-restore ARGS="-k mistake".
test-restore: cluster-tools
	CLUSTER_TESTS=1 RESTORE_TESTS=1 $(BIN)/pytest tests/cluster/test_restore.py $(ARGS)

# The restore time (RTO) of a database of CLAIMS claims: written, backed up, every database host lost, restored.
CLAIMS ?= 1000000
test-restore-rto: cluster-tools
	CLUSTER_TESTS=1 RESTORE_TESTS=1 RESTORE_CLAIMS=$(CLAIMS) $(BIN)/pytest tests/cluster/test_restore.py -k large

# The documentation site (mkdocs.yml, docs/): the API reference's schema generated from the service
# (with the default settings: API_KEYS_REQUIRED adds 401/403 to every operation), then a strict build
# into site/ (a broken link or anchor, or a page missing from the nav, fails it).
GENERATE_SCHEMA = env -u API_KEYS_REQUIRED $(BIN)/python manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml
MKDOCS = NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

docs: $(VENV)/.installed
	$(GENERATE_SCHEMA)
	$(MKDOCS) build --strict

docs-serve: $(VENV)/.installed
	$(GENERATE_SCHEMA)
	$(MKDOCS) serve --dev-addr 127.0.0.1:8001

superuser: $(VENV)/.installed
	$(BIN)/python manage.py createsuperuser

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-docs.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@
