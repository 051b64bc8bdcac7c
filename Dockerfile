# The image the Helm chart runs (ghcr.io/tollgate-dev/tollgate): a static-enough release build
# on distroless, non-root (uid/gid 65532, as the chart's securityContext expects), no shell.
#   docker build -t ghcr.io/tollgate-dev/tollgate:$(git describe --tags --always) .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && echo 'fn main() {}' > examples/bench_relay.rs && echo 'fn main() {}' > examples/bench_upstream.rs \
    && cargo build --release --locked --bin tollgate
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tollgate \
    && install -D -m 0755 target/release/tollgate /out/tollgate \
    && install -d -m 0700 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# The working directory holds the default spool (`tollgate-spool`); mount a volume here (the
# chart does) so rows spooled during a database outage outlive the container.
COPY --from=build --chown=65532:65532 /out/state /var/lib/tollgate
WORKDIR /var/lib/tollgate
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--config", "/etc/tollgate/tollgate.toml"]
