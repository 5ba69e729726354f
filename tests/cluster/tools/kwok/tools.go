//go:build tools

// Package tools records the main package scripts/install-cluster.sh builds from this module (see ../kube).
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
