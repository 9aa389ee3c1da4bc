# The fleet's infrastructure built from Debian's packages, for machines that reach no image
# registry (scripts/check-docker.sh builds these with podman from a debootstrap base image).
# Each target behaves like the public image docker/compose.yaml names, as far as compose uses it:
#   postgres  POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, data in /var/lib/postgresql/data, pg_isready
#   rabbitmq  RABBITMQ_DEFAULT_USER/RABBITMQ_DEFAULT_PASS, rabbitmq-diagnostics
#   redis     the command line compose gives (`redis-server …`), redis-cli
#   coturn    `turnserver` as the entry point
# Build one with: podman build -f docker/infra.Dockerfile --target postgres \
#   --build-arg BASE_IMAGE=localhost/debian:bookworm-slim -t localhost/videocall-postgres:dev docker
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS postgres
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
COPY infra/postgres.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]

FROM ${BASE_IMAGE} AS rabbitmq
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/*
COPY infra/rabbitmq.sh /usr/local/bin/rabbitmq-entrypoint
EXPOSE 5672
ENTRYPOINT ["rabbitmq-entrypoint"]

FROM ${BASE_IMAGE} AS redis
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/*
COPY infra/redis.sh /usr/local/bin/redis-entrypoint
EXPOSE 6379
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]

FROM ${BASE_IMAGE} AS coturn
RUN apt-get update \
 && apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["turnserver"]
