package model

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// What hashing, verifying and staging share: the read buffers, a reader that ends with its
// context, a byte counter, a file's stat as the records keep it, and the pool of workers.

// bufPool holds the read buffers: large enough that a read is not the cost.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// ctxReader ends a long read when its context does.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// fileStat is what the record keeps of a file to tell it unchanged.
type fileStat struct {
	Size  int64 `json:"size"`
	MTime int64 `json:"mtime_ns"`
	// CTime changes with every write and every change of the times, which a user cannot set
	// back: a file rewritten and touched to its old mtime is read again.
	CTime int64  `json:"ctime_ns"`
	Inode uint64 `json:"inode"`
	Dev   uint64 `json:"dev"`
}

// stat follows links (a cache snapshot's files are links to its blobs).
func stat(path string) (fileStat, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStat{}, err
	}
	if !fi.Mode().IsRegular() {
		return fileStat{}, fmt.Errorf("%s is not a regular file", path)
	}
	st := fileStat{Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Inode, st.Dev, st.CTime = sys.Ino, uint64(sys.Dev), sys.Ctim.Nano()
	}
	return st, nil
}

// parallel runs do(i) for i in [0, n) on at most workers goroutines, and returns the first error;
// the others see their context cancelled.
func parallel(ctx context.Context, n, workers int, do func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(max(workers, 1), n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := do(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// counter adds what passes through it to n.
type counter struct{ n *atomic.Int64 }

func (c counter) Write(p []byte) (int, error) {
	if c.n != nil {
		c.n.Add(int64(len(p)))
	}
	return len(p), nil
}
