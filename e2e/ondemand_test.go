//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// TestOnDemandApp renders the Open OnDemand app (deploy/ondemand) with real Ruby ERB, submits
// the batch script it makes to the mini-cluster as OnDemand would (its submit.yml's sbatch
// options, its before.sh, its connection file), and checks that the session card's host and
// port are the endpoint's: the agent's gateway is on the port OnDemand's helper chose.
func TestOnDemandApp(t *testing.T) {
	dir, err := os.MkdirTemp(suite.work, "ondemand-")
	require.NoError(t, err)
	model := filepath.Join(dir, "models", "tiny-test")
	require.NoError(t, os.MkdirAll(model, 0o755))
	session := filepath.Join(dir, "session")
	render := func(values ...string) {
		args := append([]string{filepath.Join(suite.root, "e2e", "ondemand", "render.rb"),
			filepath.Join(suite.root, "deploy", "ondemand"), session}, values...)
		out, err := exec.Command("ruby", args...).CombinedOutput()
		require.NoError(t, err, "render: %s", out)
	}
	render("model="+model, "bc_num_slots=2", "gpus_per_node=1", "bc_num_hours=1")

	var asked struct {
		Script struct {
			Native []string `yaml:"native"`
		} `yaml:"script"`
	}
	b, err := os.ReadFile(filepath.Join(session, "submit.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &asked))
	require.Contains(t, asked.Script.Native, "--nodes=2")
	sbatch := append(asked.Script.Native, "--time=60", "--cpus-per-task=1")

	j := submit(t, jobSpec{
		script:  filepath.Join(session, "job.sh"),
		sbatch:  sbatch,
		noModel: true,
		env:     []string{"LLM_AGENT_HOME=" + suite.root},
	})
	c := j.waitState(jobfiles.StateReady, readyTimeout)

	var card struct {
		Host  string `yaml:"host"`
		Port  int    `yaml:"port"`
		JobID string `yaml:"job_id"`
	}
	b, err = os.ReadFile(filepath.Join(session, "connection.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &card))
	require.Equal(t, j.id, card.JobID)
	require.Equal(t, c.HeadHost, card.Host, "the batch script runs on the head")
	require.Equal(t, c.Port, card.Port, "the gateway is on the port OnDemand's find_port chose")
	require.Equal(t, 2, c.Nodes, "the job spans the nodes the form asked for")

	req, err := http.NewRequest(http.MethodGet, c.BaseURL+"/models", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+j.apiKey(c))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "tiny-test")

	render("model="+model, "bc_num_slots=2", "gpus_per_node=1", "bc_num_hours=1",
		"host="+card.Host, fmt.Sprint("port=", card.Port), "job_id="+card.JobID)
	view, err := os.ReadFile(filepath.Join(session, "view.html"))
	require.NoError(t, err)
	require.Contains(t, string(view), fmt.Sprintf("<code>%s:%d</code>", card.Host, card.Port))
	require.Contains(t, string(view), "llm-agent status "+j.id)

	// The card's link, through a proxy set up as OnDemand's /rnode/ (it strips its prefix).
	link := regexp.MustCompile(`action="(/rnode/[^"]+)"`).FindStringSubmatch(string(view))
	require.Len(t, link, 2, "the card links the page: %s", view)
	require.Equal(t, fmt.Sprintf("/rnode/%s/%d/ui/", card.Host, card.Port), link[1])
	proxy := rnodeProxy(t, dir, card.Host, c.HeadAddress, card.Port)
	ctx := browser(t)
	signInPage(t, ctx, proxy+link[1], j.apiKey(c))
	waitJS(t, ctx, textOf("state"), "Live", 15*time.Second)
	waitJS(t, ctx, textOf("nodes"), "node2", 10*time.Second)
	waitJS(t, ctx, "document.getElementById('model').options.length", "1", 10*time.Second)
	ask(t, ctx, "Write a haiku about a queue on a cluster")
	answer := waitJS(t, ctx, lastAnswer, "completion tokens", 30*time.Second)
	// The key's row: the answer's 16 completion tokens, once the audit log reached the disk.
	waitJS(t, ctx, "document.querySelector('#usage tbody td:nth-child(5)')?.textContent", "16", 20*time.Second)
	t.Logf("through the rnode proxy at %s: %q", proxy+link[1], answer)
	if path := os.Getenv("LLM_AGENT_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: a PNG
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, png, 0o644))
	}

	require.NoError(t, exec.Command("scancel", j.id).Run())
	require.NotEqual(t, "FAILED", j.waitEnded(drainBound))
	require.False(t, strings.Contains(j.outputText(), "panic"), "%s", j.outputText())
	requireNoProcesses(t, drainBound)
	t.Logf("session card: job %s on %s:%d, the endpoint's port", card.JobID, card.Host, card.Port)
}

// rnodeProxy runs nginx as Open OnDemand's /rnode/HOST/PORT/ proxy to one job's port: it strips
// the prefix and passes the host the browser asked for in X-Forwarded-Host, as Apache's
// mod_proxy does. It returns the proxy's base URL and stops it with the test.
func rnodeProxy(t *testing.T, dir, host, addr string, port int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := ln.Addr().String()
	ln.Close()
	tmp := filepath.Join(dir, "nginx")
	require.NoError(t, os.MkdirAll(tmp, 0o755))
	conf := fmt.Sprintf(`daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http {
  access_log off;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s;
    location /rnode/%[3]s/%[5]d/ {
      proxy_pass http://%[4]s:%[5]d/;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }
  }
}
`, tmp, listen, host, addr, port)
	path := filepath.Join(tmp, "nginx.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o644))
	cmd := exec.Command("nginx", "-c", path, "-p", tmp, "-e", filepath.Join(tmp, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT) // nginx's graceful stop
		cmd.Wait()
	})
	base := "http://" + listen
	require.True(t, assertEventually(10*time.Second, func() bool {
		resp, err := http.Get(base + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}), "nginx never listened on %s", listen)
	return base
}
