//go:build tools

// Package tools records the main packages scripts/install-cluster.sh builds from this module, so that
// `go mod tidy` keeps every module they need in go.sum. The file is never compiled (build tag "tools").
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
