package service

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/scale"
	"github.com/llm-agent/llm-agent/jobfiles"
	"github.com/llm-agent/llm-agent/slurm"
)

// pool is the serving job's engines as a test sets their load.
type pool struct {
	mu      sync.Mutex
	load    scale.Sample
	retired []string
}

func (p *pool) Load(context.Context) scale.Sample {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.load
}

func (p *pool) Retire(_ context.Context, id string, _ time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retired = append(p.retired, id)
}

func (p *pool) set(x scale.Sample) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.load = x
}

// TestScaleOutAndBack: under load the serving job adds a job (queued with --extra-of), which
// joins as the entry made for it and serves once ready; when the serving job alone would
// suffice, the added job is taken out of the rotation, cancelled and dropped. A job that claims
// to be added but was not is refused.
func TestScaleOutAndBack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sch := &sched{states: map[string]slurm.QueueState{}}
	o := options(t, dir, "501", time.Time{}, sch)
	o.Config.MaxJobs, o.Config.ScaleTarget = 2, 1
	o.Config.ScaleInterval, o.Config.ScaleWindow = 10*time.Millisecond, 50*time.Millisecond
	o.Config.ScaleUpDelay, o.Config.ScaleDownDelay = 0, 100*time.Millisecond
	o.Config.Grace = time.Second
	o.Config.VLLMArgs = []string{"--max-num-seqs", "4"}
	s, err := Join(context.Background(), o)
	require.NoError(t, err)
	p := &pool{load: scale.Sample{Engines: 1, Running: 4, Waiting: 6}}
	s.SetPool(p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan string, 1)
	go func() { done <- s.Watch(ctx, func() bool { return true }, &front{}) }()
	defer func() { cancel(); <-done }()

	f := waitFor(t, dir, "a job added", func(f jobfiles.ServiceFile) bool { return len(f.Service.Extras) == 1 })
	x := f.Service.Extras[0]
	assert.Equal(t, "601", x.JobID)
	assert.Equal(t, jobfiles.ExtraPending, x.State)
	assert.Contains(t, x.Reason, "above the target 1")
	args := sch.submitted()[0]
	assert.Equal(t, []string{"--service", "svc", "--extra-of", "501"}, args[len(args)-4:])
	assert.True(t, slices.ContainsFunc(args, func(a string) bool { return filepath.Base(a) == "extra.sbatch" }))

	// A job that was not added cannot join; the one that was does, and serves.
	stray := options(t, dir, "999", time.Time{}, sch)
	stray.Config.ExtraOf = "501"
	_, err = Join(context.Background(), stray)
	assert.ErrorIs(t, err, jobfiles.ErrService)
	eo := options(t, dir, "601", time.Time{}, sch)
	eo.Config.ExtraOf = "501"
	extra, err := Join(context.Background(), eo)
	require.NoError(t, err)
	extra.Mirror(jobfiles.Connection{JobID: "601", State: jobfiles.StateReady, HeadAddress: "10.0.0.2", Port: 8601,
		Metrics: []jobfiles.NodeEndpoint{{Node: "n2", Role: "head", EngineMetricsURL: "http://10.0.0.2:9601/metrics/engine"}}})
	f = waitFor(t, dir, "the added job ready", func(f jobfiles.ServiceFile) bool {
		return len(f.Service.Extras) == 1 && f.Service.Extras[0].State == jobfiles.ExtraReady
	})
	x = f.Service.Extras[0]
	assert.Equal(t, "10.0.0.2", x.Address)
	assert.Equal(t, 8601, x.Port)
	assert.Equal(t, "http://10.0.0.2:9601/metrics/engine", x.EngineMetricsURL)
	assert.Equal(t, "501", f.Service.Current, "an added job never takes the service over")
	assert.Len(t, sch.submitted(), 1, "--max-jobs 2: no third")

	// The load falls: the serving job's engine alone runs it without a queue.
	p.set(scale.Sample{Engines: 2, Running: 3})
	waitFor(t, dir, "the added job drained", func(f jobfiles.ServiceFile) bool { return len(f.Service.Extras) == 0 })
	p.mu.Lock()
	assert.Equal(t, []string{"601"}, p.retired, "out of the rotation first")
	p.mu.Unlock()
	assert.Equal(t, []string{"601"}, sch.cancelled)
	ectx, ecancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ecancel()
	assert.Equal(t, "the service no longer needs this added job", extra.Watch(ectx, func() bool { return true }, nil))
}

// waitFor waits until cond holds on the service's file in dir.
func waitFor(t *testing.T, dir, what string, cond func(f jobfiles.ServiceFile) bool) jobfiles.ServiceFile {
	t.Helper()
	var f jobfiles.ServiceFile
	require.Eventually(t, func() bool {
		var err error
		f, err = jobfiles.ReadService(dir)
		return err == nil && cond(f)
	}, 10*time.Second, 5*time.Millisecond, "never %s", what)
	return f
}
