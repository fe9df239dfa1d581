package vllm

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadLoad sums an engine's running and waiting requests over its label sets, and refuses a
// page without them.
func TestReadLoad(t *testing.T) {
	page := "# TYPE vllm:num_requests_running gauge\n" +
		"vllm:num_requests_running{engine=\"0\",model_name=\"tiny\"} 3\nvllm:num_requests_running{engine=\"1\",model_name=\"tiny\"} 1\n" +
		"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"tiny\"} 5\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprint(w, page)
		case "/empty":
			fmt.Fprint(w, "# TYPE other gauge\nother 1\n")
		case "/garbage":
			fmt.Fprint(w, "not { an exposition\n")
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	l, err := ReadLoad(t.Context(), srv.Client(), srv.URL+"/metrics")
	require.NoError(t, err)
	assert.Equal(t, Load{Running: 4, Waiting: 5}, l)
	for _, path := range []string{"/empty", "/garbage", "/down"} {
		_, err := ReadLoad(t.Context(), srv.Client(), srv.URL+path)
		assert.Error(t, err, path)
	}
	_, err = ReadLoad(t.Context(), srv.Client(), "http://127.0.0.1:1/metrics")
	assert.ErrorContains(t, err, "engine metrics")
}

func TestOutOfGPUMemory(t *testing.T) {
	assert.True(t, OutOfGPUMemory("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."))
	assert.True(t, OutOfGPUMemory("ValueError: To serve at least one request with the models's max seq len (32768), (4.0 GiB KV cache is needed, which is larger than the available KV cache memory (2.1 GiB)."))
	assert.False(t, OutOfGPUMemory("RuntimeError: engine core initialization failed"))
}
