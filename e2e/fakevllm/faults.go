package main

// The faults the tests inject through FAKEVLLM_CONTROL while the server runs.

import (
	"context"
	"fmt"
	"os"
	"time"
)

// watchControl applies faults written to the control file while the server runs.
func watchControl(ctx context.Context, path string, srv *server) {
	if path == "" {
		return
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		switch readControl(path) {
		case "crash":
			os.WriteFile(path, nil, 0o644)
			fmt.Fprintln(os.Stderr, "fakevllm: injected crash")
			os.Exit(1)
		case "grow":
			// Host memory that grows until a limit stops it: the kernel's OOM killer, in a test
			// that put the engine in a memory cgroup.
			os.WriteFile(path, nil, 0o644)
			fmt.Fprintln(os.Stderr, "fakevllm: injected growth of host memory")
			go grow()
		case "hang":
			// Hang first: an emptied file tells the tests the fault is in force.
			srv.hang()
			os.WriteFile(path, nil, 0o644)
			fmt.Fprintln(os.Stderr, "fakevllm: injected hang; no request will be answered")
		}
	}
}

// grow takes host memory, touching every page, until the process is killed.
func grow() {
	var held [][]byte
	for {
		b := make([]byte, 16<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		held = append(held, b)
		time.Sleep(20 * time.Millisecond)
	}
}
