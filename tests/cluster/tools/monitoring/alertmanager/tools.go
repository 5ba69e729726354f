//go:build tools

// Package tools records the main package scripts/install-monitoring.sh builds from this module (see ../../kube/tools.go).
package tools

import (
	_ "github.com/prometheus/alertmanager/cmd/alertmanager"
)
