package model

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// A staged copy's lock (NAME-HASH.lock beside it): held shared while a job uses the copy, and
// exclusive while one writes it.

// Release ends this job's use of the copy; with remove, it removes the copy unless another
// job still uses it.
func (s *Staged) Release(remove bool) (removed bool, err error) {
	if s.lock == nil {
		return false, nil
	}
	defer func() { s.lock.Close(); s.lock = nil }()
	if !remove {
		return false, nil
	}
	if held, _ := tryFlock(s.lock, syscall.LOCK_EX); !held {
		return false, nil // another job loads or serves the copy: it goes with the last one
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		return false, err
	}
	return true, os.Remove(s.lock.Name())
}

// lockCopy takes the copy's lock, shared (LOCK_SH: the copy is in use) or exclusive (LOCK_EX:
// one stager writes it). Jobs, or nodes that share the stage directory, staging the same model
// take turns: the second finds the first's copy complete and uses it beside it.
func lockCopy(ctx context.Context, dst string, how int) (*os.File, error) {
	f, err := os.OpenFile(dst+".lock", os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStage, err)
	}
	if err := flockWait(ctx, f, how); err != nil {
		f.Close()
		return nil, err
	}
	if !same(f) {
		// The last user removed the copy and its lock while this one waited: lock anew.
		f.Close()
		return lockCopy(ctx, dst, how)
	}
	return f, nil
}

// flockWait takes f's lock, trying again until ctx ends.
func flockWait(ctx context.Context, f *os.File, how int) error {
	for {
		if held, err := tryFlock(f, how); held || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(lockPollInterval):
		}
	}
}

// tryFlock takes f's lock if no one else holds it in a way that excludes this one; held is
// false when someone does. A lock held in the other way is given up even so (flock changes a
// lock by letting it go first).
func tryFlock(f *os.File, how int) (held bool, err error) {
	err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return false, nil
	}
	return false, fmt.Errorf("%w: lock %s: %w", ErrStage, f.Name(), err)
}

// same tells whether f is still the file at its name.
func same(f *os.File) bool {
	a, err1 := f.Stat()
	b, err2 := os.Lstat(f.Name())
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// lockPollInterval is how often a stager tries a copy's lock another one holds.
const lockPollInterval = 100 * time.Millisecond
