# An image with `pagewire-server` and `sqlite3-pagewire` (SQLite's shell with the
# pagewire VFS as its default) on PATH. A thin wrapper over the repository's own
# scripts, which the test suite runs. The server listens on all interfaces, so it
# needs a tokens file (README, "Running the server"); mount yours at
# /etc/pagewire/tokens.toml (without one the server refuses to start):
#   docker build -f static_dev.Dockerfile -t pagewire .
#   printf '[[token]]\ntoken = "%s"\ntenant = "dev"\nadmin = true\n' "$(openssl rand -hex 16)" > tokens.toml
#   docker run --rm -p 7878:7878 -v "$PWD/tokens.toml:/etc/pagewire/tokens.toml:ro" \
#     -v pagewire-data:/var/lib/pagewire pagewire
# Pages are kept in the embedded store under /var/lib/pagewire (a volume: they survive
# the container).
#   docker run --rm -it --network host -e PAGEWIRE_TOKEN=<the token> pagewire sqlite3-pagewire
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev sqlite3 npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p pagewire-server -p pagewire-vfs-ext \
 && scripts/build-static-sqlite.sh

FROM debian:bookworm-slim
COPY --from=build /src/target/release/pagewire-server /usr/local/bin/
COPY --from=build /src/target/static/sqlite3-pagewire /usr/local/bin/
COPY --from=build /src/target/release/libpagewire_vfs.so /usr/local/lib/
ENV PAGEWIRE_URL=http://127.0.0.1:7878
VOLUME /var/lib/pagewire
EXPOSE 7878
CMD ["pagewire-server", "--listen", "0.0.0.0:7878", "--tokens", "/etc/pagewire/tokens.toml", "--data-dir", "/var/lib/pagewire"]
