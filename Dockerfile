# gradscope with CPU PyTorch. For CUDA, build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130
# and run with the NVIDIA container runtime (`--gpus all`).

# The dashboard's chart library, from npm.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && mkdir -p vendor \
    && cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css vendor/

FROM rust:1-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.11.0
ENV VIRTUAL_ENV=/opt/torch PATH=/opt/torch/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
# The dashboard (static/, with the chart library) is built into the binary.
COPY --from=web /src/vendor static/vendor
RUN cargo build --release --locked && cp target/release/gradscope /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 && rm -rf /var/lib/apt/lists/*
# The binary's rpath points at this folder.
COPY --from=build /opt/torch /opt/torch
COPY --from=build /usr/local/bin/gradscope /usr/local/bin/gradscope
WORKDIR /app
# Listening on 0.0.0.0 with no GRADSCOPE_API_TOKEN, the service makes up a token at each
# start and prints it once on stderr (`docker logs`); set GRADSCOPE_API_TOKEN to choose one.
# The probes (/healthz, /readyz) need no token, so the HEALTHCHECK below works either way.
ENV GRADSCOPE_ADDR=0.0.0.0:8080 \
    GRADSCOPE_DATABASE_URL=sqlite:///data/gradscope.db \
    GRADSCOPE_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s CMD ["gradscope", "healthcheck", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["gradscope"]
CMD ["serve"]
