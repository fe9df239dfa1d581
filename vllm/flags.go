package vllm

import (
	"errors"
	"fmt"
	"strings"
)

// ErrManagedFlag is wrapped by the refusal of a pass-through argument that would set what the
// agent manages.
var ErrManagedFlag = errors.New("managed flag")

// managedFlag is a `vllm serve` option the agent sets itself, with its short alias if any.
type managedFlag struct {
	long, short, why string
}

// managed are the options a user's pass-through arguments must not reach: the engine's address
// (a TCP listener would bypass the gateway's keys and audit), secrets (visible in ps), the
// parallelism and multi-node layout the agent plans, and files that could set any of these.
var managed = []managedFlag{
	{long: "--host", why: "the agent binds the engine itself"},
	{long: "--port", why: "use llm-agent's --port"},
	{long: "--uds", why: "the agent puts the engine on its own socket"},
	{long: "--grpc", why: "it opens a listener outside the gateway"},
	{long: "--grpc-port", why: "it opens a listener outside the gateway"},
	{long: "--api-key", why: "a key on the command line is visible to every user of the node in ps; use llm-agent's --api-key-file or --keys-file"},
	{long: "--served-model-name", why: "use llm-agent's --served-model-name"},
	{long: "--model", why: "use llm-agent's --model"},
	{long: "--config", why: "a config file can set any managed flag; pass its settings one by one with --vllm-arg"},
	{long: "--tensor-parallel-size", short: "-tp", why: "use llm-agent's --tensor-parallel-size"},
	{long: "--pipeline-parallel-size", short: "-pp", why: "use llm-agent's --pipeline-parallel-size"},
	{long: "--distributed-executor-backend", why: "the agent chooses the executor for the nodes it runs on"},
	{long: "--headless", why: "the agent decides which node serves the API"},
	{long: "--nnodes", short: "-n", why: "the agent lays out the nodes"},
	{long: "--node-rank", short: "-r", why: "the agent lays out the nodes"},
	{long: "--master-addr", why: "the agent lays out the nodes"},
	{long: "--master-port", why: "the agent lays out the nodes"},
	{long: "--lora-modules", why: "use llm-agent's --lora NAME=PATH, which checks the adapter and sizes --max-lora-rank"},
	{long: "--omni", why: "it hands the whole command line to another program (vllm-omni)"},
}

// optionName returns the option an argument names, as vLLM's parser reads it: the part before
// "=" and before a "." (vLLM's dotted form sets one field of an option, `--opt.field value`),
// with "_" read as "-" in long options. ok is false for an argument that is not an option.
func optionName(arg string) (name string, ok bool) {
	if len(arg) < 2 || arg[0] != '-' || (arg[1] >= '0' && arg[1] <= '9') || arg[1] == '.' {
		return "", false // a value: not an option, or a negative number
	}
	name, _, _ = strings.Cut(arg, "=")
	name, _, _ = strings.Cut(name, ".")
	if strings.HasPrefix(name, "--") {
		name = strings.ReplaceAll(name, "_", "-")
	}
	return name, true
}

// CheckExtraArgs refuses pass-through arguments that vLLM's parser could read as a managed
// option, in any spelling it accepts. The rule follows the parser (Python's argparse with
// vLLM's FlexibleArgumentParser on top):
//   - "_" and "-" are the same in long options, and "=value" and ".field" follow the name;
//   - a long option may be shortened to any unique prefix, so every prefix of a managed long
//     option is refused (a prefix that is ambiguous in vLLM is refused there anyway);
//   - a short option may be shortened likewise (-t for -tp), and a one-letter short option takes
//     its value attached (-n2), so a prefix of a managed short option, and anything that starts
//     with a managed one-letter option, is refused;
//   - "--" alone ends the options; it is refused too, as nothing after it is checked by vLLM's
//     option rules.
//
// Every argument is checked, values included: argparse reads any argument that looks like an
// option as one.
func CheckExtraArgs(args []string) error {
	for _, arg := range args {
		name, ok := optionName(arg)
		if !ok {
			continue
		}
		if m, hit := managedBy(name); hit {
			return fmt.Errorf("%w: %q would set %s: %s", ErrManagedFlag, arg, m.long, m.why)
		}
	}
	return nil
}

// managedBy finds the managed option that an option name can stand for.
func managedBy(name string) (managedFlag, bool) {
	if name == "--" {
		return managedFlag{long: "the end of vLLM's options", why: "the arguments after it are not options"}, true
	}
	long := strings.HasPrefix(name, "--")
	for _, m := range managed {
		if long && strings.HasPrefix(m.long, name) {
			return m, true
		}
		if !long && m.short != "" {
			if strings.HasPrefix(m.short, name) || (len(m.short) == 2 && strings.HasPrefix(name, m.short)) {
				return m, true
			}
		}
	}
	return managedFlag{}, false
}
