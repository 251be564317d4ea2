# The backup host of docker-compose.cluster.yml: Barman pinned
# (deploy/requirements-barman.txt) in a virtualenv of its own, with
# PostgreSQL 15's client programs (pg_receivewal, pg_basebackup) from the
# image, on deploy/barman.conf. `barman cron` every 10 s keeps the WAL
# stream running (a failover restarts it); take base backups with
#   docker compose -f docker-compose.cluster.yml exec backup /opt/barman/bin/barman backup coupons
FROM postgres:15-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv python3-psycopg2 gnupg file \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/requirements-barman.txt /opt/barman/requirements-barman.txt
RUN python3 -m venv --system-site-packages /opt/barman \
    && /opt/barman/bin/pip install --no-cache-dir -r /opt/barman/requirements-barman.txt
COPY deploy/barman.conf /etc/barman.conf
RUN useradd --system --home-dir /var/lib/barman --create-home barman \
    && mkdir -p /var/log/barman && chown barman /var/log/barman
USER barman
WORKDIR /var/lib/barman
# The passwords come from the environment into the passfile deploy/barman.conf names;
# the public key backups are encrypted to (encryption = gpg) from the file
# mounted at /etc/barman.d/backup-public-key.asc, trusted as the one key of
# this keyring (docs/operator-guide.md, "Encryption").
CMD ["bash", "-c", "umask 077 && printf '*:*:*:postgres:%s\\n*:*:*:replicator:%s\\n' \"$POSTGRES_PASSWORD\" \"$REPLICATION_PASSWORD\" > ~/.pgpass && mkdir -p ~/.gnupg && echo 'trust-model always' > ~/.gnupg/gpg.conf && gpg --batch --import /etc/barman.d/backup-public-key.asc && while :; do /opt/barman/bin/barman cron; sleep 10; done"]
