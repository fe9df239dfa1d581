package gpu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = os.Getenv("UPDATE_GOLDEN") != ""

// mockServer returns go-nvml's DGX H100 mock with fixed UUIDs and bus ids, every field the
// collector reads filled with values that differ per GPU, and the bus order reversed against the
// NVML index order so that index mapping is really exercised.
func mockServer(t *testing.T) *server.Server {
	t.Helper()
	s := dgxh100.New()
	n := len(s.Devices)
	for i, dev := range s.Devices {
		d := dev.(*server.Device)
		i := i
		d.UUID = fmt.Sprintf("GPU-00000000-0000-0000-0000-00000000000%d", i)
		d.PciBusID = fmt.Sprintf("00000000:%02X:00.0", 0x10*(n-i))
		d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
			var p nvml.PciInfo
			for k, c := range d.PciBusID {
				p.BusId[k] = int8(c)
			}
			return p, nvml.SUCCESS
		}
		gib := uint64(1 << 30)
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 80 * gib, Used: uint64(i+1) * gib, Free: 80*gib - uint64(i+1)*gib, Reserved: gib / 2}, nvml.SUCCESS
		}
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i), Memory: uint32(5 * i)}, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(40 + i), nvml.SUCCESS }
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(100000 + 1000*i), nvml.SUCCESS }
		d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 700000, nvml.SUCCESS }
		d.GetClockInfoFunc = func(ct nvml.ClockType) (uint32, nvml.Return) {
			if ct == nvml.CLOCK_SM {
				return 1980, nvml.SUCCESS
			}
			return 2619, nvml.SUCCESS
		}
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
			if i == 2 {
				return nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwThermalSlowdown, nvml.SUCCESS
			}
			return nvml.ClocksEventReasonGpuIdle, nvml.SUCCESS
		}
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return uint64(i), nvml.SUCCESS }
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			return make([]nvml.ProcessInfo, i%2), nvml.SUCCESS
		}
		d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return uint64(1000000 * (i + 1)), nvml.SUCCESS }
		d.GetPcieThroughputFunc = func(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
			if c == nvml.PCIE_UTIL_TX_BYTES {
				return 100, nvml.SUCCESS
			}
			return 200, nvml.SUCCESS
		}
	}
	return s
}

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func newCollector(t *testing.T, s *server.Server, visible []string, accessible func(int) bool) *Collector {
	t.Helper()
	now := t0
	return New(s, Options{Node: "gpu01", Job: "77", Visible: visible, InJob: true, Accessible: accessible,
		Now: func() time.Time { now = now.Add(time.Second); return now }})
}

// compareGolden checks the collector's whole exposition, except its own scrape duration, against
// testdata/NAME.prom (UPDATE_GOLDEN=1 rewrites it).
func compareGolden(t *testing.T, c *Collector, name string) {
	t.Helper()
	path := filepath.Join("testdata", name+".prom")
	reg := newRegistry(c)
	if update {
		families, err := reg.Gather()
		require.NoError(t, err)
		var buf bytes.Buffer
		for _, f := range families {
			if f.GetName() == "llm_agent_gpu_scrape_duration_seconds" {
				continue
			}
			require.NoError(t, writeFamily(&buf, f))
		}
		require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	}
	golden, err := os.ReadFile(path)
	require.NoError(t, err)
	var names []string
	for _, line := range strings.Split(string(golden), "\n") {
		if strings.HasPrefix(line, "# TYPE ") {
			names = append(names, strings.Fields(line)[2])
		}
	}
	require.NoError(t, testutil.GatherAndCompare(reg, bytes.NewReader(golden), names...))
	// And nothing beyond the golden file but the scrape duration.
	got, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	want := 0
	for _, n := range append(names, "llm_agent_gpu_scrape_duration_seconds") {
		k, _ := testutil.GatherAndCount(reg, n)
		want += k
	}
	assert.Equal(t, want, got, "series outside the golden file")
}

func TestCollectorByIndex(t *testing.T) {
	// Indices count GPUs in PCI bus order; the mock's bus order is the reverse of NVML's index
	// order, so CUDA 0 and 1 are NVML 7 and 6.
	c := newCollector(t, mockServer(t), []string{"0", "1"}, nil)
	require.True(t, c.Up())
	var idx []int
	for _, d := range c.Devices() {
		idx = append(idx, d.Index)
	}
	assert.Equal(t, []int{7, 6}, idx)
	compareGolden(t, c, "by_index")
}

func TestCollectorByUUIDSubset(t *testing.T) {
	c := newCollector(t, mockServer(t), []string{"GPU-00000000-0000-0000-0000-000000000002", "GPU-00000000-0000-0000-0000-000000000005"}, nil)
	require.Len(t, c.Devices(), 2)
	compareGolden(t, c, "by_uuid")
}

func TestCollectorInsideDeviceCgroup(t *testing.T) {
	// A job that may open only minors 0-3, with CUDA_VISIBLE_DEVICES renumbered from 0: its
	// "0" is the first accessible GPU in bus order, and no other job's GPU is reported.
	c := newCollector(t, mockServer(t), []string{"0", "1", "2", "3"}, func(minor int) bool { return minor < 4 })
	var idx []int
	for _, d := range c.Devices() {
		idx = append(idx, d.Index)
	}
	assert.Equal(t, []int{3, 2, 1, 0}, idx)
	n, err := testutil.GatherAndCount(newRegistry(c), "llm_agent_gpu_memory_used_bytes")
	require.NoError(t, err)
	assert.Equal(t, 4, n)
}

func TestCollectorUnsupportedFields(t *testing.T) {
	s := mockServer(t)
	for _, dev := range s.Devices {
		d := dev.(*server.Device)
		d.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
			return 0, nvml.ERROR_NOT_SUPPORTED
		}
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND }
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_FUNCTION_NOT_FOUND }
		d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) { return nvml.ClocksThrottleReasonSwPowerCap, nvml.SUCCESS }
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	}
	c := newCollector(t, s, []string{"0"}, nil)
	// PCIe and ECC are absent, memory comes from the v1 call, throttle reasons from the old call,
	// and the lost GPU's temperature is counted as a read error.
	compareGolden(t, c, "unsupported")
}

func TestCollectorNoDriver(t *testing.T) {
	s := mockServer(t)
	s.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	var log bytes.Buffer
	c := New(s, Options{Node: "gpu01", Job: "77", Visible: []string{"0"}, InJob: true,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	assert.False(t, c.Up())
	compareGolden(t, c, "no_driver")
	assert.Equal(t, 1, strings.Count(log.String(), "\n"), "one log line")
	assert.Contains(t, log.String(), "no NVIDIA driver on this node")
	c.Run(context.Background()) // returns at once
}

func TestCollectorSelectionProblems(t *testing.T) {
	tests := []struct {
		name    string
		visible []string
		inJob   bool
		devices int
		up      bool
		log     string
	}{
		{"job without GPUs reports none", nil, true, 0, true, ""},
		{"outside a job every GPU", nil, false, 8, true, ""},
		{"index beyond the GPUs", []string{"9"}, true, 0, false, "names GPU 9, but this job can access 8"},
		{"unknown UUID", []string{"GPU-ffff"}, true, 0, false, "not a GPU this job can access"},
		{"garbage", []string{"first"}, true, 0, false, "neither an index nor a GPU UUID"},
		{"duplicates collapse", []string{"0", "0"}, true, 1, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			c := New(mockServer(t), Options{Visible: tt.visible, InJob: tt.inJob, Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
			assert.Equal(t, tt.up, c.Up())
			assert.Len(t, c.Devices(), tt.devices)
			assert.Contains(t, log.String(), tt.log)
		})
	}
	s := mockServer(t)
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	_, err := SelectDevices(s, nil, false, nil)
	assert.ErrorIs(t, err, ErrSelect)
	s = mockServer(t)
	s.InitFunc = func() nvml.Return { return nvml.ERROR_NO_PERMISSION }
	var log bytes.Buffer
	c := New(s, Options{Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	assert.False(t, c.Up())
	assert.Contains(t, log.String(), "NVML did not initialise")
}

func TestSlowSamplerRunsInBackground(t *testing.T) {
	s := mockServer(t)
	energy := uint64(0)
	d0 := s.Devices[7].(*server.Device) // CUDA 0
	d0.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { energy += 5000; return energy, nvml.SUCCESS }
	shut := make(chan struct{})
	s.ShutdownFunc = func() nvml.Return { close(shut); return nvml.SUCCESS }
	c := New(s, Options{Visible: []string{"0"}, InJob: true, SlowInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.slow[d0.UUID].energyJoules >= 15
	}, 5*time.Second, time.Millisecond, "the sampler keeps sampling")
	cancel()
	<-done
	<-shut
	assert.True(t, DeviceAccessible(-1) == false, "no /dev/nvidia-1")
}

func newRegistry(c prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	return r
}

func writeFamily(w io.Writer, f *dto.MetricFamily) error {
	_, err := expfmt.MetricFamilyToText(w, f)
	return err
}
