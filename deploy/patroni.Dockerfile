# A PostgreSQL host of docker-compose.cluster.yml: PostgreSQL 15 and Patroni
# from Debian, run on deploy/patroni.yml (per-host values: PATRONI_* variables).
FROM postgres:15-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends patroni \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/patroni.yml /etc/patroni/patroni.yml
RUN mkdir -p /var/lib/postgresql/patroni && chown postgres:postgres /var/lib/postgresql/patroni
USER postgres
EXPOSE 5432 8008
CMD ["patroni", "/etc/patroni/patroni.yml"]
