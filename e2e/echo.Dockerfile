# ferrolb-e2e-echo: the lab's echo server (`ferrolb-lab echo`) as a test and demo workload.
# It answers HTTP and UDP on --port with `pod=NS/NAME`, `node=NODE` and `client=IP:PORT`,
# one per line; args: --pod NS/NAME --node NODE [--port 8080].
#
# Nothing is pulled: `ferrolb-lab` links glibc statically (crt-static). `make images`
# (e2e/scripts/images.sh) compiles it and sends a build context that holds only the binary.
FROM scratch
USER 65532:65532
EXPOSE 8080/tcp 8080/udp
ENTRYPOINT ["/ferrolb-lab", "echo"]
COPY ferrolb-lab /ferrolb-lab
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ferrolb-e2e-echo" \
      org.opencontainers.image.description="ferrolb's end-to-end echo server (HTTP and UDP): who served, who asked" \
      org.opencontainers.image.source="https://github.com/ferrolb/ferrolb" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
