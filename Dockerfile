# The `tool` service of docker-compose.yml: migrate plus the Docker CLI (host control of the
# database containers is `docker exec`) and the PostgreSQL client.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        docker.io postgresql-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/migrate /usr/local/bin/migrate
ENTRYPOINT []
CMD ["sleep", "infinity"]
