// Command fakevllm is a TEST DOUBLE of `vllm serve`, not vLLM. The end-to-end tests start it in
// place of vllm on machines without GPUs. It takes exactly the `vllm serve` flags llm-agent
// passes, rejects unknown ones as vLLM's argument parser does, and serves vLLM's endpoints and
// metric names with made-up tokens.
//
// Environment:
//
//	VLLM_API_KEY             keys (comma separated) that /v1 routes require, as in vLLM
//	RAY_ADDRESS              the Ray GCS; it must accept connections or the start fails
//	VLLM_HOST_IP             must be an address of this host
//	FAKEVLLM_CONTROL         a file the tests write to inject faults: "fail-start" (exit 1 at
//	                         every start), "gpu-oom-start" (vLLM's CUDA out of memory error at
//	                         every start), "crash" (exit 1 now), "hang" (stop answering) and
//	                         "grow" (take host memory, 16 MiB every 20 ms, until killed);
//	                         crash and hang are taken once: the file is emptied when they act
//	FAKEVLLM_STARTUP_DELAY   time before the server listens, like model loading (default 0)
//	FAKEVLLM_TOKEN_DELAY     time between streamed tokens (default 2ms)
//	FAKEVLLM_ECHO            1: a chat's answer repeats the words of its last message, so that
//	                         tests can send what a hostile answer would hold
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const usage = "usage: vllm serve [model_tag] [options]"

// options are the parsed `vllm serve` flags.
type options struct {
	model, host, uds, servedName, backend, dtype, quantization, schedulingPolicy, kvCacheDtype string
	port, tp, pp, maxModelLen, maxNumSeqs, maxBatchedTokens                                    int
	gpuMemUtil                                                                                 float64
	prefixCaching, enforceEager                                                                bool
	// vLLM's multi-node mode without Ray: this process's rank among nnodes, and rank 0's
	// address; every rank but 0 is headless.
	nnodes, nodeRank int
	masterAddr       string
	masterPort       int
	headless         bool
	// LoRA: --enable-lora, --max-lora-rank and the --lora-modules served from the start.
	enableLoRA  bool
	maxLoRARank int
	loraModules []loraModule
}

// valueFlags are the flags that take a value, with their parser.
func (o *options) valueFlags() map[string]func(string) error {
	str := func(dst *string) func(string) error { return func(v string) error { *dst = v; return nil } }
	num := func(dst *int) func(string) error {
		return func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("invalid int value: '%s'", v)
			}
			*dst = n
			return nil
		}
	}
	return map[string]func(string) error{
		"--host":                         str(&o.host),
		"--uds":                          str(&o.uds),
		"--port":                         num(&o.port),
		"--served-model-name":            str(&o.servedName),
		"--tensor-parallel-size":         num(&o.tp),
		"-tp":                            num(&o.tp),
		"--pipeline-parallel-size":       num(&o.pp),
		"-pp":                            num(&o.pp),
		"--distributed-executor-backend": str(&o.backend),
		"--max-model-len":                num(&o.maxModelLen),
		"--max-num-seqs":                 num(&o.maxNumSeqs),
		"--max-num-batched-tokens":       num(&o.maxBatchedTokens),
		"--dtype":                        str(&o.dtype),
		"--quantization":                 str(&o.quantization),
		"--scheduling-policy":            str(&o.schedulingPolicy),
		"--kv-cache-dtype":               str(&o.kvCacheDtype),
		"--nnodes":                       num(&o.nnodes),
		"-n":                             num(&o.nnodes),
		"--node-rank":                    num(&o.nodeRank),
		"-r":                             num(&o.nodeRank),
		"--master-addr":                  str(&o.masterAddr),
		"--master-port":                  num(&o.masterPort),
		"--max-lora-rank": func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || !slices.Contains([]int{1, 8, 16, 32, 64, 128, 256, 320, 512}, n) {
				return fmt.Errorf("invalid choice: '%s' (choose from 1, 8, 16, 32, 64, 128, 256, 320, 512)", v)
			}
			o.maxLoRARank = n
			return nil
		},
		"--gpu-memory-utilization": func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1 {
				return fmt.Errorf("invalid float value: '%s'", v)
			}
			o.gpuMemUtil = f
			return nil
		},
	}
}

// parseArgs parses `serve MODEL [flags]` as vLLM's argparse would, returning its error text.
func parseArgs(args []string) (*options, error) {
	o := &options{host: "0.0.0.0", port: 8000, tp: 1, pp: 1, nnodes: 1, masterAddr: "127.0.0.1", masterPort: 29501, maxLoRARank: 16}
	if len(args) == 0 || args[0] != "serve" {
		return nil, errors.New("vllm: error: argument subparser: invalid choice (choose from 'serve')")
	}
	flags := o.valueFlags()
	var unknown []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		name, value, hasValue := strings.Cut(a, "=")
		switch {
		case !strings.HasPrefix(a, "-") && o.model == "":
			o.model = a
		case name == "--enable-prefix-caching" && !hasValue:
			o.prefixCaching = true
		case name == "--no-enable-prefix-caching" && !hasValue:
			o.prefixCaching = false
		case name == "--enforce-eager" && !hasValue:
			o.enforceEager = true
		case name == "--headless" && !hasValue:
			o.headless = true
		case name == "--enable-lora" && !hasValue:
			o.enableLoRA = true
		case name == "--lora-modules":
			// nargs='+': one or more values, up to the next option; the last use wins.
			o.loraModules = nil
			var values []string
			if hasValue {
				values = append(values, value)
			}
			for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				values = append(values, args[i])
			}
			if len(values) == 0 {
				return nil, errors.New("vllm serve: error: argument --lora-modules: expected at least one argument")
			}
			for _, v := range values {
				m, err := parseLoRAModule(v)
				if err != nil {
					return nil, err
				}
				o.loraModules = append(o.loraModules, m)
			}
		case flags[name] != nil:
			if !hasValue {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("vllm serve: error: argument %s: expected one argument", name)
				}
				i++
				value = args[i]
			}
			if err := flags[name](value); err != nil {
				return nil, fmt.Errorf("vllm serve: error: argument %s: %v", name, err)
			}
		default:
			unknown = append(unknown, a)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("vllm serve: error: unrecognized arguments: %s", strings.Join(unknown, " "))
	}
	if o.model == "" {
		return nil, errors.New("vllm serve: error: the following arguments are required: model_tag")
	}
	if o.servedName == "" {
		o.servedName = o.model
	}
	if o.backend != "" && o.backend != "ray" && o.backend != "mp" {
		return nil, fmt.Errorf("vllm serve: error: argument --distributed-executor-backend: invalid choice: '%s'", o.backend)
	}
	return o, o.checkNodes()
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, usage)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "fakevllm (test double):", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	if o.headless {
		return runHeadless(o)
	}
	fmt.Fprintf(os.Stderr, "fakevllm (test double, not vLLM): serving %s as %s on %s tp=%d pp=%d\n",
		o.model, o.servedName, o.listenAddress(), o.tp, o.pp)
	ctl := os.Getenv("FAKEVLLM_CONTROL")
	switch readControl(ctl) {
	case "fail-start":
		return errors.New("RuntimeError: engine core initialization failed (injected fail-start)")
	case "gpu-oom-start":
		// What vLLM prints when the weights or the KV cache do not fit the GPU.
		return errors.New("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free. (injected gpu-oom-start)")
	}
	if err := checkEnvironment(o); err != nil {
		return err
	}
	if d, err := time.ParseDuration(os.Getenv("FAKEVLLM_STARTUP_DELAY")); err == nil && d > 0 {
		time.Sleep(d) // stands in for model loading
	}
	tokenDelay := 2 * time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("FAKEVLLM_TOKEN_DELAY")); err == nil {
		tokenDelay = d
	}
	srv := newServer(o, splitKeys(os.Getenv("VLLM_API_KEY")), tokenDelay)
	srv.echo = os.Getenv("FAKEVLLM_ECHO") == "1"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	lost, err := o.gatherRanks(ctx)
	if err != nil {
		return err
	}
	ln, err := o.listen()
	if err != nil {
		return fmt.Errorf("OSError: [Errno 98] Address already in use: %w", err)
	}
	go watchControl(ctx, ctl, srv)
	hs := &http.Server{Handler: srv.routes(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	fmt.Fprintln(os.Stderr, "INFO:     Application startup complete.")
	select {
	case err := <-errc:
		return err
	case err := <-lost:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "INFO:     Shutting down")
	srv.unhang()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}

// listenAddress is what vLLM logs as its address: the socket wins over host and port.
func (o *options) listenAddress() string {
	if o.uds != "" {
		return "unix:" + o.uds
	}
	return net.JoinHostPort(o.host, strconv.Itoa(o.port))
}

// listen binds as vLLM does: `--uds PATH` makes a Unix socket (and fails if the path exists)
// and ignores host and port; otherwise host and port.
func (o *options) listen() (net.Listener, error) {
	if o.uds != "" {
		return net.Listen("unix", o.uds)
	}
	return net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
}

// checkEnvironment fails as vLLM would when Ray or the host address is wrong.
func checkEnvironment(o *options) error {
	if ip := os.Getenv("VLLM_HOST_IP"); ip != "" && !isLocalAddress(ip) {
		return fmt.Errorf("VLLM_HOST_IP=%s is not an address of this node: No available node types can fulfill resource request", ip)
	}
	addr := os.Getenv("RAY_ADDRESS")
	if o.backend == "ray" && addr == "" {
		return errors.New("ConnectionError: --distributed-executor-backend ray needs a running Ray cluster and RAY_ADDRESS is unset")
	}
	if addr != "" {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("ConnectionError: could not reach the Ray GCS at RAY_ADDRESS=%s: %w", addr, err)
		}
		c.Close()
	}
	return nil
}

func isLocalAddress(ip string) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == ip {
			return true
		}
	}
	return false
}

func splitKeys(s string) []string {
	var keys []string
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

func readControl(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
