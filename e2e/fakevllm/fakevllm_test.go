package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/vllm"
)

func TestParseArgs(t *testing.T) {
	o, err := parseArgs(strings.Fields("serve /m --host 127.0.0.1 --port=9000 --served-model-name m --tensor-parallel-size 2 " +
		"--pipeline-parallel-size 3 --distributed-executor-backend ray --max-model-len 4096 --max-num-seqs 8 " +
		"--max-num-batched-tokens 2048 --gpu-memory-utilization 0.9 --enable-prefix-caching --dtype bfloat16 " +
		"--quantization awq --scheduling-policy priority"))
	require.NoError(t, err)
	assert.Equal(t, "/m", o.model)
	assert.Equal(t, 9000, o.port)
	assert.Equal(t, 2, o.tp)
	assert.Equal(t, 3, o.pp)
	assert.Equal(t, "ray", o.backend)
	assert.Equal(t, 0.9, o.gpuMemUtil)
	assert.True(t, o.prefixCaching)
	o, err = parseArgs([]string{"serve", "org/model"})
	require.NoError(t, err)
	assert.Equal(t, "org/model", o.servedName, "served name defaults to the model")

	tests := []struct {
		args, err string
	}{
		{"serve /m --bogus 1", "unrecognized arguments: --bogus 1"},
		{"run /m", "invalid choice"},
		{"serve --port 1", "the following arguments are required: model_tag"},
		{"serve /m --port", "argument --port: expected one argument"},
		{"serve /m --port x", "argument --port: invalid int value: 'x'"},
		{"serve /m --gpu-memory-utilization 2", "invalid float value"},
		{"serve /m --distributed-executor-backend slurm", "invalid choice: 'slurm'"},
	}
	for _, tt := range tests {
		_, err := parseArgs(strings.Fields(tt.args))
		assert.ErrorContains(t, err, tt.err, tt.args)
	}
}

func testServer(t *testing.T, keys ...string) (*server, string) {
	o, err := parseArgs([]string{"serve", "/models/tiny", "--served-model-name", "tiny"})
	require.NoError(t, err)
	s := newServer(o, keys, time.Millisecond)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)
	return s, srv.URL
}

func post(t *testing.T, url, key, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	return resp
}

func TestEndpointsAndAuth(t *testing.T) {
	_, url := testServer(t, "k1", "k2")
	resp, err := http.Get(url + "/health")
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)
	resp, _ = http.Get(url + "/v1/models")
	assert.Equal(t, 401, resp.StatusCode, "/v1 needs a key")
	resp = post(t, url+"/tokenize", "", `{"prompt":"a b c"}`)
	assert.Equal(t, 200, resp.StatusCode, "like vLLM, /tokenize is not guarded")

	resp = post(t, url+"/v1/chat/completions", "k2", `{"model":"tiny","messages":[{"role":"user","content":"one two"}],"max_tokens":3}`)
	require.Equal(t, 200, resp.StatusCode)
	var out struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
		Usage map[string]int `json:"usage"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	assert.Equal(t, "chat.completion", out.Object)
	assert.Equal(t, "the quick brown ", out.Choices[0].Message.Content)
	assert.Equal(t, map[string]int{"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}, out.Usage)

	resp = post(t, url+"/v1/completions", "k1", `{"model":"tiny","prompt":"x","max_tokens":2}`)
	b, _ := io.ReadAll(resp.Body)
	assert.Contains(t, string(b), `"text":"the quick "`)
	resp = post(t, url+"/v1/completions", "k1", `{"model":"other","prompt":"x"}`)
	assert.Equal(t, 404, resp.StatusCode)
	resp = post(t, url+"/v1/completions", "k1", `{`)
	assert.Equal(t, 400, resp.StatusCode)
	resp = post(t, url+"/v1/completions", "k1", `{"model":"tiny","prompt":"x","priority":1}`)
	assert.Equal(t, 400, resp.StatusCode, "priority needs --scheduling-policy priority")
	resp = post(t, url+"/v1/completions", "bad", `{"model":"tiny","prompt":"x"}`)
	assert.Equal(t, 401, resp.StatusCode)
}

func TestStreamAndMetrics(t *testing.T) {
	_, url := testServer(t)
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		resp := post(t, url+path, "", `{"model":"tiny","messages":[{"content":"hi"}],"prompt":"hi","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}`)
		require.Equal(t, 200, resp.StatusCode)
		assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		var events []string
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				events = append(events, strings.TrimPrefix(sc.Text(), "data: "))
			}
		}
		assert.Equal(t, "[DONE]", events[len(events)-1], path)
		assert.Contains(t, events[len(events)-2], `"usage":{"completion_tokens":4`, path)
		tokens := 0
		for _, e := range events {
			if strings.Contains(e, `"fox `) || strings.Contains(e, `"the `) || strings.Contains(e, `"quick `) || strings.Contains(e, `"brown `) {
				tokens++
			}
		}
		assert.Equal(t, 4, tokens, "one token per chunk on %s", path)
	}
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	text := string(b)
	// Every vLLM name the agent, the dashboard and the alerts rely on is here.
	for _, name := range vllm.MetricNames {
		assert.Contains(t, text, "# TYPE "+name+" ", name)
	}
	assert.Contains(t, text, "vllm:request_success_total")
	assert.Contains(t, text, `vllm:generation_tokens_total{engine="0",model_name="tiny"} 8`)
}

func TestHangAndControl(t *testing.T) {
	s, url := testServer(t)
	s.hang()
	client := &http.Client{Timeout: 100 * time.Millisecond}
	_, err := client.Get(url + "/health")
	assert.Error(t, err, "a hung engine does not answer")
	s.unhang()
	resp, err := client.Get(url + "/health")
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)

	ctl := filepath.Join(t.TempDir(), "control")
	require.NoError(t, os.WriteFile(ctl, []byte("hang\n"), 0o644))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go watchControl(ctx, ctl, s)
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(ctl)
		return len(b) == 0
	}, 5*time.Second, 10*time.Millisecond, "hang is taken once")
	_, err = client.Get(url + "/health")
	assert.Error(t, err)
	assert.Equal(t, "", readControl(""))
}

func TestCheckEnvironment(t *testing.T) {
	o := &options{}
	t.Setenv("VLLM_HOST_IP", "203.0.113.99")
	assert.ErrorContains(t, checkEnvironment(o), "not an address of this node")
	t.Setenv("VLLM_HOST_IP", "127.0.0.1")
	t.Setenv("RAY_ADDRESS", "")
	assert.NoError(t, checkEnvironment(o))
	o.backend = "ray"
	assert.ErrorContains(t, checkEnvironment(o), "RAY_ADDRESS is unset")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Setenv("RAY_ADDRESS", ln.Addr().String())
	assert.NoError(t, checkEnvironment(o))
	ln.Close()
	assert.ErrorContains(t, checkEnvironment(o), "could not reach the Ray GCS")
	assert.Equal(t, []string{"a", "b"}, splitKeys(" a, ,b"))
}

func TestRunServesUntilSIGTERM(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	o, err := parseArgs([]string{"serve", "/m", "--host", "127.0.0.1", "--port", strconv.Itoa(port)})
	require.NoError(t, err)
	t.Setenv("FAKEVLLM_CONTROL", "")
	t.Setenv("FAKEVLLM_STARTUP_DELAY", "10ms")
	done := make(chan error, 1)
	go func() { done <- run(o) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/health")
		return err == nil && resp.StatusCode == 200
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop on SIGTERM")
	}

	ctl := filepath.Join(t.TempDir(), "control")
	require.NoError(t, os.WriteFile(ctl, []byte("fail-start"), 0o644))
	t.Setenv("FAKEVLLM_CONTROL", ctl)
	assert.ErrorContains(t, run(o), "injected fail-start")
}

// TestRunOnUnixSocket: with --uds the double listens on the socket alone, as vLLM does, and a
// path that exists already makes the start fail, as vLLM's bind does.
func TestRunOnUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "engine.sock")
	o, err := parseArgs([]string{"serve", "/m", "--uds", sock, "--host", "0.0.0.0", "--port", "1"})
	require.NoError(t, err)
	assert.Equal(t, "unix:"+sock, o.listenAddress())
	t.Setenv("FAKEVLLM_CONTROL", "")
	done := make(chan error, 1)
	go func() { done <- run(o) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	require.Eventually(t, func() bool {
		resp, err := client.Get("http://engine/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 5*time.Second, 10*time.Millisecond)
	c, err := net.DialTimeout("tcp", "127.0.0.1:1", 100*time.Millisecond)
	if err == nil {
		c.Close()
	}
	assert.Error(t, err, "no TCP port with --uds")
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop on SIGTERM")
	}
	require.NoError(t, os.WriteFile(sock, nil, 0o600))
	assert.ErrorContains(t, run(o), "Address already in use")
}

func TestMaxNumSeqsBoundsTheEngine(t *testing.T) {
	o, err := parseArgs([]string{"serve", "/models/tiny", "--served-model-name", "tiny", "--max-num-seqs", "2"})
	require.NoError(t, err)
	srv := httptest.NewServer(newServer(o, nil, 20*time.Millisecond).routes())
	defer srv.Close()
	start := time.Now()
	done := make(chan time.Duration, 4)
	for range 4 {
		go func() {
			resp, err := http.Post(srv.URL+"/v1/completions", "application/json", strings.NewReader(`{"model":"tiny","prompt":"x","max_tokens":5}`))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			done <- time.Since(start)
		}()
	}
	var last time.Duration
	for range 4 {
		last = max(last, <-done)
	}
	// Two at a time, 100 ms each: the four take two rounds.
	assert.GreaterOrEqual(t, last, 200*time.Millisecond)
	assert.Less(t, last, 2*time.Second)
}

func TestEchoRepeatsTheLastMessage(t *testing.T) {
	s, url := testServer(t, "k1")
	s.echo = true
	resp := post(t, url+"/v1/chat/completions", "k1", `{"model":"tiny","messages":[{"role":"user","content":"first"},{"role":"user","content":"<b>x</b> y"}],"max_tokens":3}`)
	require.Equal(t, 200, resp.StatusCode)
	b, _ := io.ReadAll(resp.Body)
	assert.Contains(t, string(b), `"content":"\u003cb\u003ex\u003c/b\u003e y \u003cb\u003ex\u003c/b\u003e "`)
}
