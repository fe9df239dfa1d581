// Command gpuscrape measures the agent's metrics endpoint on a GPU node: scrape latency over many
// scrapes, the same for `nvidia-smi --query-gpu` timed in the same run, the agent's memory, and
// whether the agent's GPU values agree with nvidia-smi's. It runs on the GPU machine against an
// agent that is already serving:
//
//	gpuscrape -url http://127.0.0.1:9500/metrics -pid AGENT_PID -n 1000
//
// -smoke needs no GPU: it starts an agent on loopback with the stand-in engine (bin/llm-agent,
// bin/fakevllm), scrapes it, and checks the scrape and its timing for sanity (make test runs it).
package main

import (
	"github.com/shirou/gopsutil/v4/process"

	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llm-agent/llm-agent/vllm"
)

type stats struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(d []time.Duration) stats {
	ms := make([]float64, len(d))
	for i, x := range d {
		ms[i] = float64(x) / 1e6
	}
	sort.Float64s(ms)
	q := func(p float64) float64 { return ms[int(math.Ceil(p*float64(len(ms))))-1] }
	return stats{N: len(ms), P50: q(0.5), P99: q(0.99), Max: ms[len(ms)-1]}
}

// comparison is one field, as nvidia-smi and the agent read it.
type comparison struct {
	Field     string  `json:"field"`
	SMI       float64 `json:"nvidia_smi"`
	Agent     float64 `json:"agent"`
	Tolerance string  `json:"tolerance"`
	Agree     bool    `json:"agree"`
}

type report struct {
	GPU            string       `json:"gpu"`
	Driver         string       `json:"driver"`
	Scrape         stats        `json:"scrape"`
	ScrapeLoaded   *stats       `json:"scrape_under_load,omitempty"`
	ScrapeBytes    int          `json:"scrape_bytes"`
	GPUCollectorMS float64      `json:"gpu_collector_ms"`
	SMI            stats        `json:"nvidia_smi"`
	SMIFirstMS     float64      `json:"nvidia_smi_first_ms"`
	SpeedupP50     float64      `json:"speedup_p50"`
	RSSKiB         int          `json:"agent_rss_kib"`
	Idle           []comparison `json:"idle"`
	Loaded         []comparison `json:"loaded,omitempty"`
}

const smiFields = "memory.used,memory.total,temperature.gpu,power.draw,clocks.sm,clocks.mem,utilization.gpu"

func main() {
	url := flag.String("url", "http://127.0.0.1:9500/metrics", "agent metrics URL")
	n := flag.Int("n", 1000, "scrapes")
	smiRuns := flag.Int("smi-runs", 20, "nvidia-smi calls to time")
	pid := flag.Int("pid", 0, "agent pid, for its RSS")
	gpuIndex := flag.String("gpu", "0", "nvidia-smi index of the GPU")
	loadCmd := flag.String("load", "", "command that keeps the GPU busy for the loaded comparison")
	socket := flag.String("unix-socket", "", "reach the URL's server through this Unix socket (the engine behind the gateway)")
	smoke := flag.Bool("smoke", false, "no GPU: scrape an agent it starts on loopback, and check the results; exit 1 if a check fails")
	flag.Parse()
	if *smoke {
		if err := smokeRun(50); err != nil {
			fmt.Fprintln(os.Stderr, "gpuscrape smoke:", err)
			os.Exit(1)
		}
		fmt.Println("gpuscrape smoke: ok")
		return
	}
	client := &http.Client{}
	if *socket != "" {
		client.Transport = vllm.Endpoint{Socket: *socket}.Transport(1)
	}
	var r report
	r.GPU = strings.TrimSpace(run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", *gpuIndex))
	r.Driver = strings.TrimSpace(run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", *gpuIndex))

	var last string
	durs := make([]time.Duration, 0, *n)
	for i := 0; i < *n; i++ {
		start := time.Now()
		last = scrape(client, *url)
		durs = append(durs, time.Since(start))
	}
	r.Scrape = summarize(durs)
	r.ScrapeBytes = len(last)
	r.GPUCollectorMS = value(parse(last), "llm_agent_gpu_scrape_duration_seconds") * 1000

	var smi []time.Duration
	for i := 0; i < *smiRuns; i++ {
		start := time.Now()
		run("nvidia-smi", "--query-gpu="+smiFields, "--format=csv,noheader,nounits", "-i", *gpuIndex)
		smi = append(smi, time.Since(start))
	}
	r.SMIFirstMS = float64(smi[0]) / 1e6
	r.SMI = summarize(smi)
	r.SpeedupP50 = r.SMI.P50 / r.Scrape.P50
	r.Idle = compare(client, *url, *gpuIndex)

	if *loadCmd != "" {
		load := exec.Command("sh", "-c", *loadCmd)
		load.Stdout, load.Stderr = os.Stderr, os.Stderr
		load.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := load.Start(); err == nil {
			// Wait for the load to show, on nvidia-smi's reading, not for a fixed time.
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				f := strings.Split(run("nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", *gpuIndex), ",")
				if u, _ := strconv.ParseFloat(strings.TrimSpace(f[0]), 64); u >= 90 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			var loaded []time.Duration
			for i := 0; i < 200; i++ {
				start := time.Now()
				scrape(client, *url)
				loaded = append(loaded, time.Since(start))
			}
			s := summarize(loaded)
			r.ScrapeLoaded = &s
			r.Loaded = compare(client, *url, *gpuIndex)
			syscall.Kill(-load.Process.Pid, syscall.SIGKILL)
			load.Wait()
		} else {
			fmt.Fprintln(os.Stderr, "load:", err)
		}
	}
	if *pid > 0 {
		r.RSSKiB = rss(*pid)
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	fmt.Println(string(b))
}

func run(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	return string(out)
}

func scrape(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// parse reads "name{labels} value" lines into name -> first value.
func parse(text string) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if _, seen := m[name]; err == nil && !seen {
			m[name] = v
		}
	}
	return m
}

func value(m map[string]float64, name string) float64 { return m[name] }

// compare reads nvidia-smi and the agent back to back, twice in opposite order, and compares the
// agent's reading with the nvidia-smi reading nearest to it.
func compare(c *http.Client, url, gpu string) []comparison {
	smi := func() []float64 {
		f := strings.Split(strings.TrimSpace(run("nvidia-smi", "--query-gpu="+smiFields, "--format=csv,noheader,nounits", "-i", gpu)), ",")
		out := make([]float64, len(f))
		for i := range f {
			out[i], _ = strconv.ParseFloat(strings.TrimSpace(f[i]), 64)
		}
		return out
	}
	s := smi()
	a := parse(scrape(c, url))
	mib := float64(1 << 20)
	within := func(field string, smiV, agentV, abs, rel float64, tol string) comparison {
		d := math.Abs(smiV - agentV)
		return comparison{Field: field, SMI: smiV, Agent: agentV, Tolerance: tol, Agree: d <= abs || d <= rel*math.Abs(smiV)}
	}
	return []comparison{
		within("memory.used MiB", s[0], a["llm_agent_gpu_memory_used_bytes"]/mib, 2, 0.01, "2 MiB or 1%"),
		within("memory.total MiB", s[1], a["llm_agent_gpu_memory_total_bytes"]/mib, 1, 0, "1 MiB"),
		within("temperature C", s[2], a["llm_agent_gpu_temperature_celsius"], 2, 0, "2 C"),
		within("power W", s[3], a["llm_agent_gpu_power_watts"], 0, 0.10, "10%"),
		within("clocks.sm MHz", s[4], a["llm_agent_gpu_sm_clock_hertz"]/1e6, 0, 0.05, "5%"),
		within("clocks.mem MHz", s[5], a["llm_agent_gpu_memory_clock_hertz"]/1e6, 0, 0.05, "5%"),
		within("utilization.gpu %", s[6], a["llm_agent_gpu_utilization_ratio"]*100, 10, 0, "10 points"),
	}
}

// rss is pid's resident memory in KiB, read through gopsutil; 0 if it cannot be read.
func rss(pid int) int {
	p, err := process.NewProcess(int32(pid))
	if err != nil {
		return 0
	}
	m, err := p.MemoryInfo()
	if err != nil {
		return 0
	}
	return int(m.RSS / 1024)
}

// smokeRun starts an agent with the stand-in engine on loopback, scrapes its metrics n times,
// and checks what every scrape must give, GPU or not.
func smokeRun(n int) error {
	root, _ := os.Getwd()
	work, err := os.MkdirTemp("", "gpuscrape-smoke-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	model := filepath.Join(work, "tiny")
	if err := os.Mkdir(model, 0o755); err != nil {
		return err
	}
	const metricsPort = "18204"
	agent := exec.Command(filepath.Join(root, "bin", "llm-agent"), "run", "--model", model,
		"--vllm-bin", filepath.Join(root, "bin", "fakevllm"), "--state-dir", filepath.Join(work, "state"),
		"--targets-dir", "none", "--port", "18202", "--metrics-port", metricsPort, "--log-level", "warn")
	agent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() {
		syscall.Kill(-agent.Process.Pid, syscall.SIGTERM)
		agent.Wait()
	}()
	url := "http://127.0.0.1:" + metricsPort + "/metrics"
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get(strings.TrimSuffix(url, "/metrics") + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent was not ready within 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	durs := make([]time.Duration, 0, n)
	var last string
	for range n {
		start := time.Now()
		last = scrape(client, url)
		durs = append(durs, time.Since(start))
	}
	s := summarize(durs)
	m := parse(last)
	fmt.Printf("scrapes %d, p50 %.2f ms, p99 %.2f ms, %d bytes, agent RSS %d KiB\n", s.N, s.P50, s.P99, len(last), rss(agent.Process.Pid))
	switch {
	case s.N != n || !(s.P50 > 0) || s.P99 < s.P50:
		return fmt.Errorf("timings %+v are not measurements", s)
	case m["llm_agent_ready"] != 1:
		return fmt.Errorf("llm_agent_ready is %v in the scrape, not 1", m["llm_agent_ready"])
	case rss(agent.Process.Pid) <= 0:
		return fmt.Errorf("no RSS for the agent")
	}
	return nil
}
