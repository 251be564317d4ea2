# The two commands of the README: `make run` starts the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test superuser bench capacity test-cluster

# The Procfile's processes (the web server, the webhook delivery worker) under honcho, the venv's tools first.
run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

test: $(VENV)/.installed
	$(BIN)/pytest -n auto

# The flash-sale benchmark (README, Performance): wrk and pgbench from Debian's packages.
bench: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/flashsale.py $(ARGS)

# The capacity model's measurements (README, Deployment): same tools as bench.
capacity: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/capacity.py $(ARGS)

# The multi-host deployment of deploy/ under failure (tests/cluster, README:
# Deployment): as root, in network namespaces; HAProxy, Patroni, etcd and
# PgBouncer from Debian's packages; pgbench's ceilings use the bench's helpers.
CLUSTER_PACKAGES = haproxy patroni etcd-server etcd-client pgbouncer
test-cluster: $(VENV)/.installed
	dpkg -s $(CLUSTER_PACKAGES) >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(CLUSTER_PACKAGES))
	$(BIN)/pip install --quiet -r requirements-bench.txt
	CLUSTER_TESTS=1 $(BIN)/pytest tests/cluster

superuser: $(VENV)/.installed
	$(BIN)/python manage.py createsuperuser

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@
