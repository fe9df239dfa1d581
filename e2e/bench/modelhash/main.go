// Command modelhash measures the model package's hashing and staging against the coreutils a
// user would reach for, on the same files in the same run (docs/benchmarks.md, issue 16):
//
//   - per core: sha256sum over every file, one process, against model.Verify with one worker;
//   - scaling: model.Verify with 1, 2, 4 … workers, and `xargs -P N sha256sum` beside it;
//   - staging: model.Stage (copy and hash in one pass, files in parallel) against `cp -r`
//     followed by `sha256sum -c` of the copy.
//
// The files are made once and read once before the rounds, so every round reads them from the
// page cache: this measures the hashing and the copying, not the filesystem under them.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llm-agent/llm-agent/model"
)

type result struct {
	Test    string  `json:"test"`
	Tool    string  `json:"tool"`
	Workers int     `json:"workers,omitempty"`
	Round   int     `json:"round"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MiBps   float64 `json:"mib_per_second"`
}

func main() {
	dir := flag.String("dir", "", "work directory (default: a new one in $TMPDIR)")
	files := flag.Int("files", 16, "files of the made-up model")
	sizeMiB := flag.Int("size-mib", 256, "MiB per file")
	rounds := flag.Int("rounds", 3, "rounds, each measuring every tool in turn")
	workersList := flag.String("workers", "", "worker counts for the scaling (default: 1, 2, 4 … up to the CPUs)")
	smoke := flag.Bool("smoke", false, "a small model, one round, checked for sanity; exit 1 if a check fails (make test runs it)")
	flag.Parse()
	if *smoke {
		*files, *sizeMiB, *rounds, *workersList = 4, 2, 1, "1,2"
	}
	if err := run(*dir, *files, *sizeMiB, *rounds, *workersList); err != nil {
		fmt.Fprintln(os.Stderr, "modelhash:", err)
		os.Exit(1)
	}
}

func run(dir string, files, sizeMiB, rounds int, workersList string) error {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "modelhash-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	src := filepath.Join(dir, "model")
	if err := makeModel(src, files, int64(sizeMiB)<<20); err != nil {
		return err
	}
	total := int64(files) * int64(sizeMiB) << 20
	cpus := runtime.GOMAXPROCS(0)
	workers := []int{}
	if workersList != "" {
		for _, w := range strings.Split(workersList, ",") {
			n, err := strconv.Atoi(w)
			if err != nil {
				return err
			}
			workers = append(workers, n)
		}
	} else {
		for w := 1; w <= cpus; w *= 2 {
			workers = append(workers, w)
		}
		if workers[len(workers)-1] != cpus {
			workers = append(workers, cpus)
		}
	}
	fmt.Printf("# %d files x %d MiB = %d MiB, %d CPUs, %s; %s\n", files, sizeMiB, total>>20, cpus, cpuModel(), firstLine("sha256sum", "--version"))
	names, _ := filepath.Glob(filepath.Join(src, "model-*"))
	// Warm the page cache: every round then reads the same cached files.
	if err := exec.Command("cat", append(names, filepath.Join(src, "config.json"))...).Run(); err != nil {
		return err
	}
	var results []result
	add := func(r result) {
		r.MiBps = float64(r.Bytes) / (1 << 20) / r.Seconds
		results = append(results, r)
		fmt.Printf("%-8s %-36s workers=%-3d round=%d %8.3f s %8.0f MiB/s\n", r.Test, r.Tool, r.Workers, r.Round, r.Seconds, r.MiBps)
	}
	ctx := context.Background()
	for round := 1; round <= rounds; round++ {
		// Per core: one process of sha256sum over every file, against one worker.
		t, err := timed(func() error { return exec.Command("sha256sum", names...).Run() })
		if err != nil {
			return err
		}
		add(result{Test: "percore", Tool: "sha256sum FILES", Workers: 1, Round: round, Bytes: total, Seconds: t})
		t, err = timed(func() error { return verify(ctx, src, 1) })
		if err != nil {
			return err
		}
		add(result{Test: "percore", Tool: "llm-agent model.Verify", Workers: 1, Round: round, Bytes: total, Seconds: t})

		// Scaling with the files hashed at once.
		for _, w := range workers {
			t, err = timed(func() error { return verify(ctx, src, w) })
			if err != nil {
				return err
			}
			add(result{Test: "scaling", Tool: "llm-agent model.Verify", Workers: w, Round: round, Bytes: total, Seconds: t})
			t, err = timed(func() error {
				cmd := exec.Command("xargs", "-0", "-P", strconv.Itoa(w), "-n", "1", "sha256sum")
				cmd.Stdin, cmd.Stdout = strings.NewReader(strings.Join(names, "\x00")), io.Discard
				return cmd.Run()
			})
			if err != nil {
				return err
			}
			add(result{Test: "scaling", Tool: "xargs -P N sha256sum", Workers: w, Round: round, Bytes: total, Seconds: t})
		}

		// Staging: copy and hash in one pass, against cp then sha256sum -c of the copy.
		root, err := model.StageRoot(dir)
		if err != nil {
			return err
		}
		dst := model.StagePath(root, src)
		// One worker shows what the single pass gains alone; all the CPUs, what users get.
		for _, w := range []int{1, cpus} {
			t, err = timed(func() error {
				st, err := model.Stage(ctx, src, dst, model.StageOptions{Verify: true, Workers: w})
				if err == nil {
					_, err = st.Release(true)
				}
				return err
			})
			if err != nil {
				return err
			}
			add(result{Test: "stage", Tool: "llm-agent model.Stage", Workers: w, Round: round, Bytes: total, Seconds: t})
		}
		cpDst := filepath.Join(dir, "cp-copy")
		t, err = timed(func() error {
			if out, err := exec.Command("cp", "-r", src, cpDst).CombinedOutput(); err != nil {
				return fmt.Errorf("cp: %w: %s", err, out)
			}
			cmd := exec.Command("sha256sum", "-c", "--quiet", model.ManifestName)
			cmd.Dir = cpDst
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("sha256sum -c: %w: %s", err, out)
			}
			return nil
		})
		if err != nil {
			return err
		}
		add(result{Test: "stage", Tool: "cp -r && sha256sum -c", Workers: 1, Round: round, Bytes: total, Seconds: t})
		if err := os.RemoveAll(cpDst); err != nil {
			return err
		}
	}
	summarize(results)
	// Whatever the speed, every tool measured something, and every test ran.
	tests := map[string]bool{}
	for _, r := range results {
		if !(r.Seconds > 0) || !(r.MiBps > 0) || math.IsInf(r.MiBps, 0) {
			return fmt.Errorf("%s %s workers=%d: %.6f s, %.1f MiB/s is not a measurement", r.Test, r.Tool, r.Workers, r.Seconds, r.MiBps)
		}
		tests[r.Test] = true
	}
	if len(tests) != 3 {
		return fmt.Errorf("tests run: %v; want percore, scaling and stage", tests)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// verify checks the model with w workers, reading every file (no record).
func verify(ctx context.Context, dir string, w int) error {
	_, err := model.Verify(ctx, dir, model.Options{Workers: w})
	return err
}

// summarize prints each comparison's median ratio.
func summarize(results []result) {
	median := func(test, tool string, workers int) float64 {
		var s []float64
		for _, r := range results {
			if r.Test == test && r.Tool == tool && (workers == 0 || r.Workers == workers) {
				s = append(s, r.Seconds)
			}
		}
		if len(s) == 0 {
			return 0
		}
		slices.Sort(s)
		return s[len(s)/2]
	}
	fmt.Println("# medians")
	sum, ours := median("percore", "sha256sum FILES", 0), median("percore", "llm-agent model.Verify", 0)
	fmt.Printf("per core: sha256sum %.3f s, model.Verify %.3f s: llm-agent at %.2fx the speed of sha256sum\n", sum, ours, sum/ours)
	one := median("scaling", "llm-agent model.Verify", 1)
	seen := map[int]bool{}
	for _, r := range results {
		if r.Test != "scaling" || seen[r.Workers] {
			continue
		}
		seen[r.Workers] = true
		v, x := median("scaling", "llm-agent model.Verify", r.Workers), median("scaling", "xargs -P N sha256sum", r.Workers)
		fmt.Printf("scaling: %2d workers: model.Verify %.3f s (%.2fx one worker), xargs -P %d sha256sum %.3f s\n", r.Workers, v, one/v, r.Workers, x)
	}
	cp := median("stage", "cp -r && sha256sum -c", 0)
	for _, w := range []int{1, runtime.GOMAXPROCS(0)} {
		st := median("stage", "llm-agent model.Stage", w)
		fmt.Printf("staging: model.Stage with %d workers %.3f s, cp -r && sha256sum -c %.3f s: %.2fx faster\n", w, st, cp, cp/st)
	}
}

func timed(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

// makeModel writes files of random weights, a config.json and their SHA256SUMS.
func makeModel(dir string, files int, size int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"llama"}`), 0o644); err != nil {
		return err
	}
	for i := range files {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, files)))
		if err != nil {
			return err
		}
		if _, err := io.CopyN(f, rand.Reader, size); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	_, err := model.WriteManifest(context.Background(), dir, runtime.GOMAXPROCS(0))
	return err
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "model name\t: "); ok {
			sha := "no SHA extensions"
			if bytes.Contains(b, []byte(" sha_ni")) {
				sha = "sha_ni"
			}
			return name + " (" + sha + ")"
		}
	}
	return "unknown CPU"
}

func firstLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).Output()
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}
