package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llm-agent/llm-agent/supervisor"
)

// The agent's children in these tests are this test binary behind small scripts named ray and
// vllm whose #! line points back at it; TestMain tells the roles apart by their arguments, as
// os/exec's own tests do with helper processes.
//
//	ray start ...      fake `ray start --block`: registers a node in $FAKE_RAY_DIR, serves the
//	                   GCS port on the head, and blocks until SIGTERM
//	-c SCRIPT ADDR T   fake Python running ray/nodes.py: prints the registered live nodes
//	vllm serve ...     fake engine: /health and /v1/models; $FAKE_VLLM_CONTROL may say "fail"
//	                   (exit 1 at start) or "unhealthy" (/health answers 503)
func TestMain(m *testing.M) {
	supervisor.MaybeRunReaper()
	if len(os.Args) > 1 {
		switch {
		case os.Args[1] == "-c":
			os.Exit(fakePython(os.Args[3:]))
		case filepath.Base(os.Args[1]) == "ray" && len(os.Args) > 2 && os.Args[2] == "start":
			os.Exit(fakeRayStart(os.Args[3:]))
		case filepath.Base(os.Args[1]) == "vllm" && len(os.Args) > 2 && os.Args[2] == "serve":
			os.Exit(fakeVLLM(os.Args[3:]))
		}
	}
	os.Exit(m.Run())
}

// flagValue returns the value after name in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name {
			return true
		}
	}
	return false
}

type fakeNode struct {
	ID       string `json:"node_id"`
	Address  string `json:"address"`
	Hostname string `json:"hostname"`
	Alive    bool   `json:"alive"`
	Head     bool   `json:"head"`
	PID      int    `json:"pid"`
}

// checkRayAuth is what the fakes demand of the agent, as a cluster with token authentication
// does: token mode on, and the token in a file of the user's that no one else can read.
func checkRayAuth() error {
	if os.Getenv("RAY_AUTH_MODE") != "token" {
		return fmt.Errorf("RAY_AUTH_MODE is %q, not token", os.Getenv("RAY_AUTH_MODE"))
	}
	fi, err := os.Stat(os.Getenv("RAY_AUTH_TOKEN_PATH"))
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("token file has mode %04o", fi.Mode().Perm())
	}
	if os.Getenv("RAY_AUTH_TOKEN") != "" {
		return fmt.Errorf("a token in the environment")
	}
	return nil
}

func fakeRayStart(args []string) int {
	dir := os.Getenv("FAKE_RAY_DIR")
	if err := checkRayAuth(); err != nil {
		fmt.Fprintln(os.Stderr, "fake ray:", err)
		return 1
	}
	// The temp dir must sit in a private directory of the agent's making.
	if fi, err := os.Stat(filepath.Dir(flagValue(args, "--temp-dir"))); err != nil || fi.Mode().Perm() != 0o700 {
		fmt.Fprintln(os.Stderr, "fake ray: --temp-dir is not inside a private directory:", flagValue(args, "--temp-dir"), err)
		return 1
	}
	node := fakeNode{ID: fmt.Sprintf("%056x", os.Getpid()), Address: flagValue(args, "--node-ip-address"),
		Hostname: fmt.Sprintf("fake-%d", os.Getpid()), Alive: true, Head: hasFlag(args, "--head"), PID: os.Getpid()}
	if node.Head {
		ln, err := net.Listen("tcp", net.JoinHostPort(node.Address, flagValue(args, "--port")))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake ray head:", err)
			return 1
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	} else {
		c, err := net.Dial("tcp", flagValue(args, "--address"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake ray worker: cannot reach the head:", err)
			return 1
		}
		c.Close()
	}
	b, _ := json.Marshal(node)
	file := filepath.Join(dir, strconv.Itoa(os.Getpid())+".json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return 1
	}
	defer os.Remove(file)
	fmt.Println("fake ray started; blocking")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

func fakePython(args []string) int {
	dir := os.Getenv("FAKE_RAY_DIR")
	if err := checkRayAuth(); err != nil {
		fmt.Fprintln(os.Stderr, "fake GCS query:", err)
		return 1
	}
	entries, _ := os.ReadDir(dir)
	nodes := []fakeNode{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var n fakeNode
		if json.Unmarshal(b, &n) != nil {
			continue
		}
		// A node whose process died without cleaning up is dead, as the GCS would find.
		n.Alive = syscall.Kill(n.PID, 0) == nil
		nodes = append(nodes, n)
	}
	json.NewEncoder(os.Stdout).Encode(nodes)
	return 0
}

func fakeVLLM(args []string) int {
	control := os.Getenv("FAKE_VLLM_CONTROL")
	state := func() string {
		b, _ := os.ReadFile(control)
		return strings.TrimSpace(string(b))
	}
	if state() == "fail" {
		fmt.Fprintln(os.Stderr, "RuntimeError: injected start failure")
		return 1
	}
	if state() == "gpu-oom" { // what vLLM prints when the model does not fit the GPU
		fmt.Fprintln(os.Stderr, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free.")
		return 1
	}
	if hasFlag(args, "--headless") {
		return fakeHeadlessRank(args)
	}
	key := os.Getenv("VLLM_API_KEY")
	served := flagValue(args, "--served-model-name")
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if state() == "unhealthy" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=%q} 0\n", served)
		if f := os.Getenv("FAKE_VLLM_WAITING"); f != "" { // the requests waiting, as the test sets them
			b, _ := os.ReadFile(f)
			fmt.Fprintf(w, "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=%q} %s\n", served, strings.TrimSpace(string(b)))
		}
	})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"object":"list","data":[{"id":%q}]}`, served)
	})
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model string `json:"model"`
		}
		if r.Header.Get("Authorization") != "Bearer "+key || json.NewDecoder(r.Body).Decode(&req) != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if req.Model != served {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"model":%q,"choices":[{"text":"hi"}]}`, served)
	})
	if os.Getenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True" {
		for _, route := range []string{"/v1/load_lora_adapter", "/v1/unload_lora_adapter"} {
			mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer "+key {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				fmt.Fprint(w, "Success")
			})
		}
	}
	var ln net.Listener
	var err error
	if sock := flagValue(args, "--uds"); sock != "" {
		ln, err = net.Listen("unix", sock) // fails on a stale socket, as vLLM's bind does
	} else {
		ln, err = net.Listen("tcp", net.JoinHostPort(flagValue(args, "--host"), flagValue(args, "--port")))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake vllm:", err)
		return 1
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	if f := os.Getenv("FAKE_VLLM_ARGS"); f != "" {
		os.WriteFile(f, []byte(strings.Join(args, "\n")), 0o644)
		os.WriteFile(f+".pid", []byte(strconv.Itoa(os.Getpid())), 0o644)
		os.WriteFile(f+".offline", []byte(os.Getenv("HF_HUB_OFFLINE")), 0o644)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	return 0
}

// fakeHeadlessRank plays a headless rank of vLLM's multi-node mode: it serves nothing, records
// its arguments and pid in FAKE_VLLM_ARGS.rankN, and runs until it is stopped.
func fakeHeadlessRank(args []string) int {
	if os.Getenv("FAKE_VLLM_RANK_FAIL") != "" {
		fmt.Fprintln(os.Stderr, "RuntimeError: injected rank failure")
		return 1
	}
	if f := os.Getenv("FAKE_VLLM_ARGS"); f != "" {
		rank := f + ".rank" + flagValue(args, "--node-rank")
		os.WriteFile(rank, []byte(strings.Join(args, "\n")), 0o644)
		os.WriteFile(rank+".pid", []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// fakeBins writes the ray and vllm scripts into a temp dir and returns their paths.
func fakeBins(t *testing.T) (rayBin, vllmBin string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"ray", "vllm"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!"+self+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "ray"), filepath.Join(dir, "vllm")
}

// loopbackNet is a host whose only interface is lo with 127.0.0.1.
type loopbackNet struct{}

func (loopbackNet) Interfaces() ([]net.Interface, error) {
	return []net.Interface{{Index: 1, Name: "lo", Flags: net.FlagUp | net.FlagLoopback}}, nil
}

func (loopbackNet) Addrs(net.Interface) ([]net.Addr, error) {
	return []net.Addr{&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)}}, nil
}

func (loopbackNet) LookupHost(string) ([]string, error) { return []string{"127.0.0.1"}, nil }
