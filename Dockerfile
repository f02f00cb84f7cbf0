# webhook-normalizer: a small image with the one binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin webhook-normalizer

FROM debian:bookworm-slim
# The system's CA roots, for amqps:// without amqp.tls.ca_file.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home normalizer
COPY --from=build /src/target/release/webhook-normalizer /usr/local/bin/webhook-normalizer
USER normalizer
# Health endpoints; bind beyond loopback inside the container.
ENV NORMALIZER__HTTP__LISTEN=0.0.0.0:9090
EXPOSE 9090
ENTRYPOINT ["webhook-normalizer"]
CMD ["run"]
