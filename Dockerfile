# One image for the operator and the agent (`extbackend operator|agent`).
# Node 24 runs the TypeScript sources directly (type stripping); no build step.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim
# The agent's data-plane tools; the operator does not use them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipvsadm ipset iproute2 conntrack procps \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
# Non-root by default (the operator); the agent's DaemonSet runs it as root with NET_ADMIN.
USER 65532:65532
ENTRYPOINT ["node", "--disable-warning=ExperimentalWarning", "/app/bin/extbackend.js"]
