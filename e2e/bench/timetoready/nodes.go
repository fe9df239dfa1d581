package main

// What a run leaves on the mini-cluster's nodes: the processes it started, its files under /tmp.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func jobEnded(id string) bool {
	out, _ := exec.Command("squeue", "-h", "-j", id, "-o", "%T").Output()
	return strings.TrimSpace(string(out)) == ""
}

// nodeProcesses lists the processes in the nodes' namespaces other than slurmd.
func nodeProcesses(nodes int) []string {
	var left []string
	for i := 1; i <= nodes; i++ {
		out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", i)).Output()
		for _, pid := range strings.Fields(string(out)) {
			b, err := os.ReadFile("/proc/" + pid + "/cmdline")
			if err != nil || len(b) == 0 {
				continue
			}
			c := strings.ReplaceAll(string(b), "\x00", " ")
			if strings.HasPrefix(c, "slurmd ") {
				continue
			}
			left = append(left, fmt.Sprintf("node%d %s %.80s", i, pid, c))
		}
	}
	return left
}

// slurmdRoot returns /proc/PID/root of a node's slurmd, a window on the node's own /tmp.
func slurmdRoot(node int) string {
	out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", node)).Output()
	for _, pid := range strings.Fields(string(out)) {
		if b, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(b)) == "slurmd" {
			return "/proc/" + pid + "/root"
		}
	}
	return ""
}

// tmpLeftovers lists Ray directories left in the nodes' /tmp.
func tmpLeftovers(nodes int) []string {
	var left []string
	for i := 1; i <= nodes; i++ {
		root := slurmdRoot(i)
		if root == "" {
			continue
		}
		for _, pat := range []string{"/tmp/ray", "/tmp/llm-agent-*"} {
			matches, _ := filepath.Glob(root + pat)
			for _, m := range matches {
				left = append(left, fmt.Sprintf("node%d:%s", i, strings.TrimPrefix(m, root)))
			}
		}
	}
	return left
}

// cleanNodes removes what a run left, so the next run starts from the same state. Only the
// mini-cluster's own namespaces are touched.
func cleanNodes(nodes int) {
	for i := 1; i <= nodes; i++ {
		out, _ := exec.Command("ip", "netns", "pids", fmt.Sprintf("llmnode%d", i)).Output()
		for _, pid := range strings.Fields(string(out)) {
			if b, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(b)) != "slurmd" {
				n, _ := strconv.Atoi(pid)
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		if root := slurmdRoot(i); root != "" {
			os.RemoveAll(root + "/tmp/ray")
			matches, _ := filepath.Glob(root + "/tmp/llm-agent-*")
			for _, m := range matches {
				os.RemoveAll(m)
			}
		}
	}
}
