# The operator's image. It builds natively on whatever architecture runs the build (no
# cross-compilation, no --platform): built by multiarch-operator itself, the amd64 builder makes
# the amd64 image on an amd64 node and the arm64 builder the arm64 image on a Graviton node
# (examples/self-build.yaml). No `# syntax=` line: BuildKit's built-in Dockerfile frontend is used.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin multiarch-operator \
    && install -m 0755 target/release/multiarch-operator /multiarch-operator

# glibc, CA certificates (the registry and API clients use the system roots) and a non-root user
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /multiarch-operator /usr/local/bin/multiarch-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/multiarch-operator"]
CMD ["run"]
