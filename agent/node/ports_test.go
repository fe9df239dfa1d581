package node

import (
	"fmt"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// fakeProber treats listed ports as busy and hands out free ports from 40000 up.
type fakeProber struct {
	busy   map[int]bool
	denied map[int]bool
	next   int
}

func (f *fakeProber) Probe(port int) error {
	if f.denied[port] {
		return syscall.EACCES
	}
	if f.busy[port] {
		return fmt.Errorf("listen tcp :%d: %w", port, syscall.EADDRINUSE)
	}
	return nil
}

func (f *fakeProber) Free() (int, error) {
	if f.next == 0 {
		f.next = 40000
	}
	f.next++
	return f.next, nil
}

func busyRange(lo, hi int) map[int]bool {
	m := map[int]bool{}
	for p := lo; p <= hi; p++ {
		m[p] = true
	}
	return m
}

func TestJobOffset(t *testing.T) {
	assert.Equal(t, 42, JobOffset("1042"))
	assert.Equal(t, 0, JobOffset("100"))
	o := JobOffset("local-123")
	assert.True(t, o >= 0 && o < 100)
	assert.Equal(t, o, JobOffset("local-123"), "stable")
}

func TestPickHeadPorts(t *testing.T) {
	tests := []struct {
		name  string
		cfg   func(c *config.Config)
		busy  map[int]bool
		check func(t *testing.T, p jobfiles.Ports, moved []string)
	}{
		{"job defaults when all free", nil, nil, func(t *testing.T, p jobfiles.Ports, moved []string) {
			assert.Equal(t, jobfiles.Ports{API: 8007, Metrics: 9507, RayGCS: 6386, Dashboard: 8272, RayClient: 10008,
				NodeManager: 6507, ObjectManager: 6607, DashboardAgent: 6707, DashboardAgentGRPC: 6807,
				RayMetrics: 6907, RuntimeEnvAgent: 7007, WorkerMin: 12400, WorkerMax: 12599}, p)
			assert.Empty(t, moved)
		}},
		{"configured ports preferred", func(c *config.Config) {
			c.Port = 8000
			c.RayPort = 6379
			c.WorkerPortMin, c.WorkerPortMax = 30000, 30099
		}, nil,
			func(t *testing.T, p jobfiles.Ports, moved []string) {
				assert.Equal(t, 8000, p.API)
				assert.Equal(t, 6379, p.RayGCS)
				assert.Equal(t, 30000, p.WorkerMin)
				assert.Equal(t, 30099, p.WorkerMax)
			}},
		{"busy port falls back to a free one", func(c *config.Config) { c.Port = 8000 }, map[int]bool{8000: true}, func(t *testing.T, p jobfiles.Ports, moved []string) {
			assert.Equal(t, 40001, p.API)
			assert.Equal(t, []string{"port 8000->40001"}, moved)
		}},
		{"two options may not share a port", func(c *config.Config) { c.Port = 9000; c.MetricsPort = 9000 }, nil, func(t *testing.T, p jobfiles.Ports, moved []string) {
			assert.Equal(t, 9000, p.API)
			assert.NotEqual(t, 9000, p.Metrics)
		}},
		{"busy worker range moves to another job's block", nil, busyRange(12450, 12450), func(t *testing.T, p jobfiles.Ports, moved []string) {
			assert.Equal(t, 12600, p.WorkerMin, "the next block")
			assert.Equal(t, 12799, p.WorkerMax)
			assert.Contains(t, moved, "ray-worker-ports 12400-12599->12600-12799")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			p, moved, err := PickHeadPorts(cfg, "7", &fakeProber{busy: tt.busy})
			require.NoError(t, err)
			tt.check(t, p, moved)
		})
	}
}

func TestPickPortsErrors(t *testing.T) {
	cfg := config.Default()
	cfg.Port = 80
	_, _, err := PickHeadPorts(cfg, "7", &fakeProber{denied: map[int]bool{80: true}})
	assert.ErrorIs(t, err, ErrPort)
	assert.Contains(t, err.Error(), "port 80 cannot be bound")
	assert.Contains(t, err.Error(), "--port")

	cfg = config.Default()
	_, _, err = PickHeadPorts(cfg, "7", &fakeProber{busy: busyRange(11000, 31000)})
	assert.ErrorIs(t, err, ErrPort)
	assert.Contains(t, err.Error(), "no free range of 200 Ray worker ports")
}

func TestPickWorkerPorts(t *testing.T) {
	published := jobfiles.Ports{API: 8007, RayGCS: 6386, NodeManager: 6507, ObjectManager: 6607, DashboardAgent: 6707,
		DashboardAgentGRPC: 6807, RayMetrics: 6907, RuntimeEnvAgent: 7007, WorkerMin: 12400, WorkerMax: 12599}
	p, moved, err := PickWorkerPorts(config.Default(), "7", published, &fakeProber{})
	require.NoError(t, err)
	assert.Empty(t, moved)
	assert.Equal(t, 6507, p.NodeManager, "the head's choice when free here")
	assert.Equal(t, 9507, p.Metrics)

	p, moved, err = PickWorkerPorts(config.Default(), "7", published, &fakeProber{busy: map[int]bool{6507: true, 9507: true}})
	require.NoError(t, err)
	assert.NotEqual(t, 6507, p.NodeManager, "busy on this node: another port")
	assert.NotEqual(t, 9507, p.Metrics)
	assert.Len(t, moved, 2)
}

func TestTCPProber(t *testing.T) {
	var p TCPProber
	port, err := p.Free()
	require.NoError(t, err)
	require.NoError(t, p.Probe(port))
}

// TestPickReplicaPorts: a worker's first replica takes the job's API port, or a free one when
// it is busy here; the head's first is its own gateway's (0); the others are free and never
// one that is taken already.
func TestPickReplicaPorts(t *testing.T) {
	api := 8000 + JobOffset("7")
	got, err := PickReplicaPorts(config.Default(), "7", &fakeProber{}, 3, false)
	require.NoError(t, err)
	assert.Equal(t, []int{api, 40001, 40002}, got)

	got, err = PickReplicaPorts(config.Default(), "7", &fakeProber{busy: map[int]bool{api: true}}, 1, false)
	require.NoError(t, err)
	assert.Equal(t, []int{40001}, got, "the API port is busy on this node")

	got, err = PickReplicaPorts(config.Default(), "7", &fakeProber{next: 40000}, 3, true, 40001)
	require.NoError(t, err)
	assert.Equal(t, []int{0, 40002, 40003}, got, "the head's first is its own; 40001 is taken")

	cfg := config.Default()
	cfg.Port = 9100
	_, err = PickReplicaPorts(cfg, "7", &fakeProber{denied: map[int]bool{9100: true}}, 2, false)
	assert.ErrorIs(t, err, ErrPort, "a port given by the user that cannot be bound")
}
