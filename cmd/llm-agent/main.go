// Command llm-agent turns a Slurm allocation into a supervised, monitored OpenAI-compatible LLM
// endpoint. Run one agent per node: srun --ntasks-per-node=1 llm-agent run --model ...
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	beforeMain()
	if err := newApp().Run(os.Args); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "llm-agent:", msg)
		}
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for input the user must fix and 1 for failures while running.
func exitCode(err error) int {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if errors.As(err, new(usageError)) {
		return 2
	}
	for _, bad := range append(inputErrors, clientInputErrors...) {
		if errors.Is(err, bad) {
			return 2
		}
	}
	return 1
}
