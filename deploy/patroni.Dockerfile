# A PostgreSQL host of docker-compose.cluster.yml: PostgreSQL 15 from the
# image, Patroni pinned (deploy/requirements-patroni.txt) in a virtualenv of
# its own on Debian's python3, run on deploy/patroni.yml (per-host values:
# PATRONI_* variables).
FROM postgres:15-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/requirements-patroni.txt /opt/patroni/requirements-patroni.txt
RUN python3 -m venv /opt/patroni \
    && /opt/patroni/bin/pip install --no-cache-dir -r /opt/patroni/requirements-patroni.txt
COPY deploy/patroni.yml /etc/patroni/patroni.yml
# The custom bootstrap of a cluster rebuilt from the backup host (patroni.yml: bootstrap.barman_restore;
# it reaches the backup host over SSH, which this image does not set up: docs/operator-guide.md).
COPY deploy/patroni-barman-restore /usr/local/bin/patroni-barman-restore
RUN mkdir -p /var/lib/postgresql/patroni && chown postgres:postgres /var/lib/postgresql/patroni
USER postgres
WORKDIR /var/lib/postgresql
EXPOSE 5432 8008
CMD ["/opt/patroni/bin/patroni", "/etc/patroni/patroni.yml"]
