# One image for the operator and the agent (`extbackend operator|agent`); Node 24 runs
# the TypeScript sources directly (type stripping), so there is no build step.
#
#   docker build -t REGISTRY/extbackend:TAG .      (or podman build / buildah build)
#
# `npm run image` builds this same file here without a Docker engine: buildah, with BASE
# set to a Debian bookworm made locally by mmdebstrap (src/devcluster/image.ts).
ARG BASE=docker.io/library/debian:bookworm-slim

# --- build: Debian's tools, Node from the npm registry, production node_modules ---------
FROM ${BASE} AS build
# The agent's data-plane tools (iptables in nft mode, nftables, ipvsadm, ipset,
# iproute2, conntrack), and what this stage needs: curl and jq to fetch Node, binutils
# to strip it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl jq binutils \
      iptables nftables ipvsadm ipset iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
COPY image/fetch-node.sh /build/
# Node and npm as pinned by package-lock.json, checked against the registry's integrity.
# Behind a TLS-intercepting proxy, pass its CA bundle: --secret id=build-ca,src=FILE.
RUN --mount=type=secret,id=build-ca /build/fetch-node.sh /opt/node
# Type declarations and source maps are never loaded at run time: about half of the 89 MB
# `npm ci --omit=dev` installs (@kubernetes/client-node's dist alone is 63 MB).
RUN --mount=type=secret,id=build-ca \
    if [ -f /run/secrets/build-ca ]; then export npm_config_cafile=/run/secrets/build-ca; fi \
 && PATH=/opt/node/bin:$PATH npm ci --omit=dev --ignore-scripts --no-audit --no-fund --no-update-notifier \
 && rm -rf /root/.npm \
 && find node_modules -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \) -delete \
 && chmod -R a+rX,go-w node_modules

# The runtime's file tree: the tools with exactly the libraries, xtables extensions and
# data files they load, Node's libraries, the users, CA certificates.
COPY image/collect-rootfs.sh /build/
RUN /build/collect-rootfs.sh /rootfs /opt/node/bin/node

# The application, readable by the image's user whatever the checkout's umask was
# (src/ last: it is what changes).
COPY package.json /out/app/
COPY bin /out/app/bin
COPY src /out/app/src
RUN chmod -R a+rX,go-w /out/app

# --- runtime: no shell, no package manager ----------------------------------------------
FROM scratch
# The settings come first, so an edit to the application rebuilds only the last step.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="extbackend" \
      org.opencontainers.image.description="ExternalBackend operator and node agent" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /app
# Non-root by default (the operator); the agent's DaemonSet runs it as root with NET_ADMIN.
USER 65532:65532
ENTRYPOINT ["node", "--disable-warning=ExperimentalWarning", "/app/bin/extbackend.js"]
COPY --from=build /rootfs/ /
COPY --from=build /opt/node/bin/node /usr/local/bin/node
COPY --from=build /app/node_modules /app/node_modules
COPY --from=build /out/app/ /app/
