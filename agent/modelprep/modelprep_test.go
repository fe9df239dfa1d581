package modelprep

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/agent/metrics"
	"github.com/llm-agent/llm-agent/agent/node"
	"github.com/llm-agent/llm-agent/clock"
	"github.com/llm-agent/llm-agent/slurm"
)

func testEnv(t *testing.T) *node.Env {
	dir := t.TempDir()
	return &node.Env{Log: hclog.NewNullLogger(), Clock: clock.Real{}, Getenv: func(string) string { return "" },
		Alloc: slurm.Allocation{JobID: "7", Nodes: []string{"n1", "n2"}, NodeID: 1}, StateDir: dir,
		State: metrics.NewState("n2", "7", "worker", 0, 1, time.Now(), time.Time{})}
}

// TestVerifiable: off verifies nothing, auto a model with something to verify against, and on
// refuses a model without.
func TestVerifiable(t *testing.T) {
	e := testEnv(t)
	dir := t.TempDir() // a model directory with no manifest and no cache to check against
	e.Cfg.VerifyModel = config.VerifyOff
	ok, err := verifiable(e, dir)
	assert.False(t, ok)
	assert.NoError(t, err)
	e.Cfg.VerifyModel = config.VerifyAuto
	ok, err = verifiable(e, dir)
	assert.False(t, ok)
	assert.NoError(t, err)
	e.Cfg.VerifyModel = config.VerifyOn
	_, err = verifiable(e, dir)
	assert.ErrorIs(t, err, config.ErrBadInput)
	assert.ErrorContains(t, err, "--verify-model on")
	e.Cfg.Model = dir
	assert.True(t, Prepares(e), "a model that cannot be verified as asked is the preparation's failure to report")
}

// TestAwaitVerdict: a worker that starts engines waits for the head's verdict, takes its
// failure as its own, and gives up once the head cannot have decided.
func TestAwaitVerdict(t *testing.T) {
	e := testEnv(t)
	e.Cfg.ModelTimeout, e.Cfg.RendezvousTimeout = 200*time.Millisecond, 100*time.Millisecond
	err := awaitVerdict(t.Context(), e)
	assert.ErrorContains(t, err, "the head decided nothing on the model's preparation within 300ms")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	assert.ErrorIs(t, awaitVerdict(ctx, e), context.Canceled)

	require.NoError(t, os.MkdirAll(filepath.Join(e.StateDir, DirName), 0o700))
	Fail(e, errors.New("n1: model.safetensors differs"))
	assert.EqualError(t, awaitVerdict(t.Context(), e), "the head failed the model's preparation: n1: model.safetensors differs")
	require.NoError(t, Reset(e.StateDir))
	assert.NoDirExists(t, filepath.Join(e.StateDir, DirName))
}

func TestRate(t *testing.T) {
	assert.Equal(t, "-", rate(1<<20, 0))
	assert.Equal(t, "2 MiB/s", rate(4<<20, 2*time.Second))
}

// TestUnstageWithoutCopy: a node that staged nothing has nothing to release.
func TestUnstageWithoutCopy(t *testing.T) {
	Unstage(testEnv(t))
}
