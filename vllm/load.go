package vllm

import (
	"context"
	"fmt"
	"io"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Load is what an engine is doing now, from its own metrics: the requests it runs, and those
// waiting for a place in its batch.
type Load struct {
	Running, Waiting float64
}

// maxMetricsBody bounds an engine's /metrics page as the agent reads it.
const maxMetricsBody = 8 << 20

// ReadLoad asks the engine's /metrics at url for vllm:num_requests_running and
// vllm:num_requests_waiting, summed over its label sets (one per engine core and model).
func ReadLoad(ctx context.Context, client *http.Client, url string) (Load, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Load{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Load{}, fmt.Errorf("engine metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Load{}, fmt.Errorf("engine metrics: %s answered %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, maxMetricsBody))
	if err != nil {
		return Load{}, fmt.Errorf("engine metrics: %w", err)
	}
	running, ok1 := gaugeSum(families["vllm:num_requests_running"])
	waiting, ok2 := gaugeSum(families["vllm:num_requests_waiting"])
	if !ok1 || !ok2 {
		return Load{}, fmt.Errorf("engine metrics: %s has no vllm:num_requests_running or vllm:num_requests_waiting", url)
	}
	return Load{Running: running, Waiting: waiting}, nil
}

// gaugeSum sums a gauge family's samples; false when there is none.
func gaugeSum(f *dto.MetricFamily) (float64, bool) {
	if f == nil || len(f.GetMetric()) == 0 {
		return 0, false
	}
	var sum float64
	for _, m := range f.GetMetric() {
		sum += m.GetGauge().GetValue()
	}
	return sum, true
}
