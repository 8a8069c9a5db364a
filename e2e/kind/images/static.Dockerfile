# A control-plane component (kube-apiserver, kube-controller-manager, kube-scheduler, etcd)
# as kubeadm's static pods run it: one static binary on PATH. Nothing else is needed.
FROM scratch
ARG BIN
COPY ${BIN} /usr/local/bin/${BIN}
ENV PATH=/usr/local/bin:/usr/bin:/bin
