# stele: the runtime image. Multi-stage: the release binary is built in the
# Rust image, and only it is copied into a slim Debian runtime that runs as
# an unprivileged user with the data directory (journal, keys, snapshots,
# exports) on a volume. Build: docker build -t stele .
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stele \
 && install -Dm755 target/release/stele /out/stele

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stele \
 && useradd --system --uid 10001 --gid stele --home-dir /data --shell /usr/sbin/nologin stele \
 && install -d -o stele -g stele -m 0700 /data \
 && install -d -m 0755 /etc/stele
COPY --from=builder /out/stele /usr/local/bin/stele
# The journal must outlive the container: one writer per volume.
VOLUME ["/data"]
ENV STELE_DATA=/data \
    STELE_CONFIG=/etc/stele/stele.toml
USER stele:stele
EXPOSE 7411
ENTRYPOINT ["/usr/local/bin/stele"]
CMD ["up"]
