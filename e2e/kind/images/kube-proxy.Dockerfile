# kube-proxy programs the node's iptables or nftables rules, so it needs those tools and
# conntrack: the Debian base has them.
ARG BASE
FROM ${BASE}
COPY kube-proxy /usr/local/bin/kube-proxy
