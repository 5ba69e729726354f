// Our own module: pins the Prometheus Operator whose CustomResourceDefinitions (ServiceMonitor, PrometheusRule,
// ...) the cluster tests install, taken from the module's example/prometheus-operator-crd directory by
// scripts/install-cluster.sh. Nothing is built from it yet.
module spec-sidecar/tests/cluster/tools/monitoring

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.94.0
