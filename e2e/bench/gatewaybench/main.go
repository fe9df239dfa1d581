// Command gatewaybench measures what the agent's gateway adds to a request, against the engine
// reached directly and through nginx as a plain reverse proxy with buffering off. The engine is
// the fakevllm test double with no token delay, so the proxies' own cost is what shows. It runs
// on one machine and sends traffic to loopback only.
//
// -smoke runs one short round and checks the results for sanity (make test runs it).
//
//	go run ./e2e/bench/gatewaybench -rounds 3 -duration 5s
//	go run ./e2e/bench/gatewaybench -smoke
package main

import (
	"github.com/shirou/gopsutil/v4/process"

	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

const (
	engineKey = "sk-bench-engine-0123456789"
	jobKey    = "sk-bench-gateway-0123456789"
	directURL = "http://127.0.0.1:18101"
	agentURL  = "http://127.0.0.1:18102"
	nginxURL  = "http://127.0.0.1:18103"
)

var body = []byte(`{"model":"tiny","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}`)

type result struct {
	target      string
	concurrency int
	p50, p99    time.Duration
	rps         float64
	errors      int
	// cpuPerReq is the proxy process's CPU time per request (user + system), 0 for direct.
	cpuPerReq time.Duration
}

func main() {
	rounds := flag.Int("rounds", 3, "rounds per target and concurrency")
	duration := flag.Duration("duration", 5*time.Second, "length of one measurement")
	tokenDelay := flag.Duration("token-delay", 0, "the engine's time per generated token (16 tokens a request)")
	smoke := flag.Bool("smoke", false, "one round of 1 s, checked for sanity; exit 1 if a check fails")
	flag.Parse()
	if *smoke {
		*rounds, *duration = 1, time.Second
	}
	root, _ := os.Getwd()
	bin := filepath.Join(root, "bin")
	work, err := os.MkdirTemp("", "gatewaybench-")
	check(err)
	defer os.RemoveAll(work)

	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
			p.Wait()
		}
	}()
	start := func(env []string, name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		log, _ := os.Create(filepath.Join(work, filepath.Base(name)+fmt.Sprint(len(procs))+".log"))
		cmd.Stdout, cmd.Stderr = log, log
		check(cmd.Start())
		procs = append(procs, cmd)
	}
	fake := []string{"FAKEVLLM_TOKEN_DELAY=" + tokenDelay.String()}
	// The engine reached directly and through nginx.
	start(append(fake, "VLLM_API_KEY="+engineKey), filepath.Join(bin, "fakevllm"), "serve", "tiny", "--host", "127.0.0.1", "--port", "18101")
	// The agent, with its gateway on 18102 and its own identical engine behind it.
	keyFile := filepath.Join(work, "key")
	check(os.WriteFile(keyFile, []byte(jobKey+"\n"), 0o600))
	model := filepath.Join(work, "tiny")
	check(os.MkdirAll(model, 0o755))
	start(fake, filepath.Join(bin, "llm-agent"), "run", "--model", model, "--vllm-bin", filepath.Join(bin, "fakevllm"),
		"--state-dir", filepath.Join(work, "state"), "--targets-dir", "none", "--port", "18102", "--metrics-port", "18104",
		"--api-key-file", keyFile, "--log-level", "warn")
	// nginx as a plain reverse proxy with buffering off.
	conf := filepath.Join(work, "nginx.conf")
	check(os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  upstream engine { server 127.0.0.1:18101; keepalive 128; }
  server {
    listen 127.0.0.1:18103;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`, work)), 0o644))
	start(nil, "nginx", "-p", work, "-c", conf)

	targets := []struct {
		name, url, key string
		pid            int // the proxy's process, whose CPU time is counted
	}{
		{"direct", directURL, engineKey, 0}, {"gateway", agentURL, jobKey, procs[1].Process.Pid}, {"nginx", nginxURL, engineKey, procs[2].Process.Pid},
	}
	for _, t := range targets {
		waitOK(t.url, t.key)
	}
	var all []result
	for _, c := range []int{1, 64} {
		for r := 0; r < *rounds; r++ {
			for _, t := range targets {
				before := cpuTime(t.pid)
				res := load(t.url, t.key, c, *duration)
				res.target = t.name
				if t.pid > 0 && res.rps > 0 {
					res.cpuPerReq = time.Duration(float64(cpuTime(t.pid)-before) / (res.rps * duration.Seconds()))
				}
				all = append(all, res)
				fmt.Printf("c=%-3d round %d %-8s p50 %8s p99 %8s  %8.0f req/s  proxy CPU %6s/req  errors %d\n", c, r+1, t.name,
					res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond), res.rps, res.cpuPerReq.Round(100*time.Nanosecond), res.errors)
			}
		}
	}
	report(all)
	if *smoke {
		bad := false
		for _, r := range all {
			if r.errors > 0 || r.rps <= 0 || r.p50 <= 0 || r.p99 < r.p50 || (r.target != "direct" && r.cpuPerReq <= 0) {
				fmt.Fprintf(os.Stderr, "gatewaybench smoke: %s at c=%d: %d errors, %.0f req/s, p50 %s, p99 %s, proxy CPU %s/req\n",
					r.target, r.concurrency, r.errors, r.rps, r.p50, r.p99, r.cpuPerReq)
				bad = true
			}
		}
		if bad || len(all) != 6 {
			os.Exit(1)
		}
		fmt.Println("gatewaybench smoke: ok")
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(1)
	}
}

func post(c *http.Client, url, key string) error {
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// waitOK polls the target until one request succeeds.
func waitOK(url, key string) {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if post(c, url, key) == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	check(fmt.Errorf("%s never answered", url))
}

// load runs concurrency closed-loop clients for d after a short warm-up.
func load(url, key string, concurrency int, d time.Duration) result {
	tr := &http.Transport{MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency, DisableCompression: true}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	run := func(d time.Duration) ([]time.Duration, int, time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var mu sync.Mutex
		var lat []time.Duration
		errs := 0
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < concurrency; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				bad := 0
				for ctx.Err() == nil {
					s := time.Now()
					if err := post(c, url, key); err != nil {
						bad++
						continue
					}
					mine = append(mine, time.Since(s))
				}
				mu.Lock()
				lat = append(lat, mine...)
				errs += bad
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat, errs, time.Since(start)
	}
	run(500 * time.Millisecond)
	lat, errs, took := run(d)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	return result{concurrency: concurrency, p50: q(0.5), p99: q(0.99), rps: float64(len(lat)) / took.Seconds(), errors: errs}
}

// cpuTime is the user and system time of pid and its children (nginx's workers), read
// through gopsutil; 0 for pid 0.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	root, err := process.NewProcess(int32(pid))
	if err != nil {
		return 0
	}
	kids, _ := root.Children()
	var total float64
	for _, p := range append([]*process.Process{root}, kids...) {
		if t, err := p.Times(); err == nil {
			total += t.User + t.System
		}
	}
	return time.Duration(total * float64(time.Second))
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

func report(all []result) {
	type key struct {
		target string
		c      int
	}
	p50, p99, rps, cpu := map[key][]float64{}, map[key][]float64{}, map[key][]float64{}, map[key][]float64{}
	for _, r := range all {
		k := key{r.target, r.concurrency}
		p50[k] = append(p50[k], float64(r.p50)/1e3)
		p99[k] = append(p99[k], float64(r.p99)/1e3)
		rps[k] = append(rps[k], r.rps)
		cpu[k] = append(cpu[k], float64(r.cpuPerReq)/1e3)
	}
	fmt.Println()
	fmt.Println("| concurrency | path | p50 µs | p99 µs | added p50 µs | added p99 µs | req/s | % of direct req/s | proxy CPU µs/req |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, c := range []int{1, 64} {
		d := key{"direct", c}
		for _, t := range []string{"direct", "gateway", "nginx"} {
			k := key{t, c}
			fmt.Printf("| %d | %s | %.0f | %.0f | %s | %s | %.0f | %.0f%% | %s |\n", c, t, median(p50[k]), median(p99[k]),
				added(t, median(p50[k])-median(p50[d])), added(t, median(p99[k])-median(p99[d])),
				median(rps[k]), 100*median(rps[k])/median(rps[d]), added(t, median(cpu[k])))
		}
	}
	g1, n1 := median(p50[key{"gateway", 1}])-median(p50[key{"direct", 1}]), median(p50[key{"nginx", 1}])-median(p50[key{"direct", 1}])
	fmt.Printf("\ngateway/nginx added p50 at c=1: %.2f; gateway/nginx throughput at c=64: %.2f\n",
		g1/n1, median(rps[key{"gateway", 64}])/median(rps[key{"nginx", 64}]))
}

func added(target string, v float64) string {
	if target == "direct" {
		return "-"
	}
	return fmt.Sprintf("%.0f", v)
}
