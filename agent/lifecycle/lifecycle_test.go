package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder notes the order in which stages start and stop.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// stage records its start and stop; done, if not nil, is its end while the run goes on.
func (r *recorder) stage(name string, startErr error, done <-chan error) Stage {
	return Stage{Name: name,
		Start: func(context.Context) (<-chan error, error) {
			r.add("start " + name)
			return done, startErr
		},
		Stop: func() { r.add("stop " + name) }}
}

func TestRunStopsInReverseOnRequest(t *testing.T) {
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	var seen error = errors.New("unset")
	result := make(chan error, 1)
	go func() {
		result <- Run(ctx, []Stage{r.stage("a", nil, nil), r.stage("b", nil, nil), {Name: "c", Start: func(context.Context) (<-chan error, error) {
			r.add("start c")
			return nil, nil
		}}}, func(failure error) error {
			seen = failure
			r.add("before stop")
			return failure
		})
	}()
	require.Eventually(t, func() bool { return len(r.list()) == 3 }, 5*time.Second, time.Millisecond)
	select {
	case <-result:
		t.Fatal("Run returned before the stop request")
	default:
	}
	cancel()
	require.NoError(t, <-result)
	assert.NoError(t, seen, "a requested stop is no failure")
	assert.Equal(t, []string{"start a", "start b", "start c", "before stop", "stop b", "stop a"}, r.list(), "c has no stop")
}

func TestRunFailsWithAStageThatEnds(t *testing.T) {
	r := &recorder{}
	done := make(chan error, 1)
	done <- errors.New("engine gave up")
	err := Run(context.Background(), []Stage{r.stage("a", nil, nil), r.stage("b", nil, done)}, func(f error) error { return f })
	assert.EqualError(t, err, "engine gave up")
	assert.Equal(t, []string{"start a", "start b", "stop b", "stop a"}, r.list())
}

func TestRunStartFailureStopsWhatStarted(t *testing.T) {
	r := &recorder{}
	err := Run(context.Background(), []Stage{r.stage("a", nil, nil), r.stage("b", errors.New("port busy"), nil), r.stage("c", nil, nil)},
		func(f error) error { return fmt.Errorf("found: %w", f) })
	assert.EqualError(t, err, "found: port busy", "beforeStop's answer is the result")
	assert.Equal(t, []string{"start a", "start b", "stop a"}, r.list(), "b failed, so it is not stopped; c never starts")
}

// TestRunStopDuringStart: a start abandoned because the stop came is not a failure.
func TestRunStopDuringStart(t *testing.T) {
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	waits := Stage{Name: "waits", Start: func(ctx context.Context) (<-chan error, error) {
		r.add("start waits")
		cancel()
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	err := Run(ctx, []Stage{r.stage("a", nil, nil), waits, r.stage("c", nil, nil)}, func(f error) error {
		assert.NoError(t, f)
		return f
	})
	assert.NoError(t, err)
	assert.Equal(t, []string{"start a", "start waits", "stop a"}, r.list())
}

// TestRunBeforeStopFindsAFailure: a stop request behind which beforeStop finds a failure (a
// worker that ended) reports it.
func TestRunBeforeStopFindsAFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, nil, func(f error) error {
		require.NoError(t, f)
		return errors.New("node2's agent ended")
	})
	assert.EqualError(t, err, "node2's agent ended")
}

func TestEnded(t *testing.T) {
	errc := make(chan error, 1)
	done, finished := Ended(errc, func(err error) error { return fmt.Errorf("ray: %w", err) })
	select {
	case <-finished:
		t.Fatal("finished before the value")
	default:
	}
	cause := errors.New("exit 1")
	errc <- cause
	<-finished
	err := <-done
	assert.ErrorIs(t, err, cause)
	assert.EqualError(t, err, "ray: exit 1")

	errc = make(chan error, 1)
	done, finished = Ended(errc, func(err error) error { return fmt.Errorf("never: %w", err) })
	errc <- nil
	<-finished
	assert.NoError(t, <-done, "a clean end is not wrapped")
}

func TestBackground(t *testing.T) {
	type key struct{}
	parent := context.WithValue(context.Background(), key{}, "v")
	started := make(chan string, 1)
	returned := false
	stop := Background(parent, func(ctx context.Context) {
		started <- ctx.Value(key{}).(string)
		<-ctx.Done()
		returned = true
	})
	assert.Equal(t, "v", <-started, "the parent's values")
	stop()
	assert.True(t, returned, "stop waits for fn to return")
}

func TestLifeOutlivesItsParent(t *testing.T) {
	type key struct{}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, 7))
	life := Life(ctx)
	cancel()
	assert.NoError(t, life.Err(), "the run's context does not end with the stop request")
	assert.Equal(t, 7, life.Value(key{}))
}
