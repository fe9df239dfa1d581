package agent

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/gateway"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/status"
	"github.com/llm-agent/llm-agent/gpu"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/vllm"
)

// What users, dashboards, alerts and scripts depend on is pinned here: every metric family with
// its labels, and every field of the files the agent writes for others to read. A change of
// structure must leave these as they are; a deliberate change updates the golden files
// (go test ./agent/ -run TestSurface -update) and says so in its commit.

var update = flag.Bool("update", false, "rewrite the golden files of TestSurface*")

func golden(t *testing.T, name string, got []string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	text := strings.Join(got, "\n") + "\n"
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(want), text, "the user-visible surface changed; see %s", path)
}

var descParts = regexp.MustCompile(`fqName: "([^"]+)".*constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}`)

func TestSurfaceMetrics(t *testing.T) {
	noDriver := dgxh100.New()
	noDriver.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	ch := make(chan *prometheus.Desc, 200)
	state := metrics.NewState("n", "j", "head", 1, 1, time.Now(), time.Time{})
	metrics.NewAgentCollector(state, nil).Describe(ch)
	metrics.NewProcessCollector(state, nil, nil).Describe(ch)
	gpu.New(noDriver, gpu.Options{Node: "n", Job: "j"}).Describe(ch)
	gateway.NewMetrics("n", "j").Describe(ch)
	close(ch)
	var got []string
	for d := range ch {
		m := descParts.FindStringSubmatch(d.String())
		require.NotNil(t, m, d.String())
		var consts []string
		for _, kv := range strings.Split(m[2], ",") {
			if k, _, ok := strings.Cut(kv, "="); ok {
				consts = append(consts, strings.TrimSpace(k))
			}
		}
		got = append(got, m[1]+" const{"+strings.Join(consts, ",")+"} labels{"+strings.ReplaceAll(m[3], " ", "")+"}")
	}
	got = append(got, vllm.MetricNames...)
	slices.Sort(got)
	golden(t, "surface-metrics.txt", slices.Compact(got))
}

// jsonFields lists the JSON field names of a struct type, nested ones as parent.child.
func jsonFields(typ reflect.Type, prefix string) []string {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeOf(time.Time{}) {
		return nil
	}
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out = append(out, prefix+name)
		out = append(out, jsonFields(f.Type, prefix+name+".")...)
	}
	return out
}

func TestSurfaceFiles(t *testing.T) {
	var got []string
	for file, v := range map[string]any{jobfiles.ConnectionFile: jobfiles.Connection{}, jobfiles.RendezvousFile: jobfiles.Rendezvous{}, "nodes/HOST.json": jobfiles.NodeInfo{}, jobfiles.EngineFile: jobfiles.EngineGeneration{},
		gateway.AuditFile: gateway.Record{}, "usage --json": gateway.UsageReport{}, "status --json": status.Report{}, "services/NAME/connection.json: service": jobfiles.ServiceInfo{}} {
		for _, f := range jsonFields(reflect.TypeOf(v), "") {
			got = append(got, file+": "+f)
		}
	}
	slices.Sort(got)
	golden(t, "surface-files.txt", got)
}
