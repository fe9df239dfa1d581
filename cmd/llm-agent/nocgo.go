//go:build !cgo

package main

import (
	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/slurm"
)

// A build without cgo (a laptop's: CGO_ENABLED=0, Linux or macOS) has no NVML, so none of the
// commands that run on the nodes; it has the client commands.
func nodeCommands() []*cli.Command { return nil }

func beforeMain() {}

var inputErrors = []error{slurm.ErrAllocation}
