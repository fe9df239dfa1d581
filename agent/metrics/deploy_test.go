package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/gpu"
	"github.com/llm-agent/llm-agent/vllm"
)

const deployDir = "../../deploy"

var metricName = regexp.MustCompile(`\b(llm_agent_[a-z0-9_]+|vllm:[a-z0-9_:]+|process_[a-z0-9_]+|go_[a-z0-9_]+)`)
var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

// knownNames lists every metric family the agent exports, and the vLLM ones it relies on.
func knownNames(t *testing.T) map[string]bool {
	t.Helper()
	noDriver := dgxh100.New()
	noDriver.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	names := map[string]bool{}
	ch := make(chan *prometheus.Desc, 200)
	state := NewState("n", "j", "head", 1, 1, time.Now(), time.Time{})
	NewAgentCollector(state, nil).Describe(ch)
	NewProcessCollector(state, nil, nil).Describe(ch)
	NewFileCollector(state).Describe(ch)
	gateway.NewMetrics("n", "j").Describe(ch)
	collectors.NewGoCollector().Describe(ch)
	collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}).Describe(ch)
	gpu.New(noDriver, gpu.Options{}).Describe(ch)
	close(ch)
	for d := range ch {
		names[descName.FindStringSubmatch(d.String())[1]] = true
	}
	for _, n := range vllm.MetricNames {
		names[n] = true
	}
	return names
}

// baseName strips the series suffixes of histograms.
func baseName(n string) string {
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if strings.HasPrefix(n, "vllm:") && strings.HasSuffix(n, s) {
			return strings.TrimSuffix(n, s)
		}
	}
	return n
}

func TestDashboardUsesOnlyExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "grafana", "llm-agent.json"))
	require.NoError(t, err)
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash), "the dashboard is valid JSON")
	known := knownNames(t)
	used := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				used++
				assert.True(t, known[baseName(n)], "panel %q uses %s, which nothing exports", p.Title, n)
			}
		}
	}
	assert.Greater(t, used, 20)
	// The panels the issue asks for exist.
	var titles []string
	for _, p := range dash.Panels {
		titles = append(titles, strings.ToLower(p.Title))
	}
	all := strings.Join(titles, "|")
	for _, want := range []string{"gpu utilization", "tokens per second", "time to first token", "kv cache", "running and waiting", "restarts", "service units", "host memory"} {
		assert.Contains(t, all, want)
	}
}

func TestAlertRulesUseOnlyExportedMetricsAndHaveRunbooks(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "prometheus", "llm-agent-alerts.yml"))
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(b, &rules))
	known := knownNames(t)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, n := range metricName.FindAllString(r.Expr, -1) {
				assert.True(t, known[baseName(n)], "alert %s uses %s, which nothing exports", r.Alert, n)
			}
			url := r.Annotations["runbook_url"]
			require.NotEmpty(t, url, r.Alert)
			i := strings.Index(url, "docs/runbooks/")
			require.GreaterOrEqual(t, i, 0, "%s: runbook_url %s is not in docs/runbooks", r.Alert, url)
			_, err := os.Stat(filepath.Join("../..", url[i:]))
			assert.NoError(t, err, "%s: runbook %s", r.Alert, url[i:])
		}
	}
	for _, want := range []string{"LLMEngineDown", "LLMRestartStorm", "GPUTooHot", "GPUThrottling", "LLMKVCacheNearlyFull", "LLMQueueGrowing", "LLMJobEndingSoon", "LLMEngineHostMemoryHigh", "LLMEngineHostMemoryGrowing", "LLMNodeSwapping"} {
		assert.Contains(t, alerts, want)
	}
}
