package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/clients/bench"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// errSLOMissed ends `bench --slo` with exit 1 when the endpoint misses the targets.
var errSLOMissed = errors.New("the endpoint missed the service-level targets")

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:         "bench",
		OnUsageError: onUsageError,
		Usage:        "load-test an OpenAI-compatible endpoint: throughput, TTFT, TPOT, ITL and E2EL as vllm bench serve reports them",
		UsageText: "llm-agent bench [options] JOBID|STATE_DIR|connection.json\n" +
			"llm-agent bench [options] --url http://127.0.0.1:8000/v1 [--api-key-file FILE]",
		Description: "Sends streamed requests and times their chunks, with the names and definitions of vllm bench serve. " +
			"Workloads: random prompts of exactly --input-len tokens of the served model (token ids from the server's /tokenize), " +
			"a JSONL prompt file ({\"prompt\": ..., \"output_len\": N} per line) or a ShareGPT file. Load: all at once, " +
			"a fixed --max-concurrency, or arrivals at --request-rate (a Poisson process; a comma-separated list sweeps). " +
			"Each run stops after --num-prompts requests or --duration, whichever comes first. The key comes from the job's " +
			"key file, --api-key-file or $OPENAI_API_KEY, never from the command line. Exit 0; 1 when --slo is missed or " +
			"every request failed; 2 for bad input.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Category: "Endpoint", Usage: "the API's base URL, ending in /v1, instead of a job"},
			&cli.StringFlag{Name: "api-key-file", Category: "Endpoint", Usage: "file holding the API key (default: the job's, or $OPENAI_API_KEY)"},
			&cli.StringFlag{Name: "model", Category: "Endpoint", Usage: "served model name (default: the job's, or the first of /v1/models)"},
			&cli.StringFlag{Name: "endpoint", Category: "Endpoint", Value: "completions", Usage: "completions or chat"},
			&cli.StringFlag{Name: "dataset", Category: "Workload", Value: bench.DatasetRandom, Usage: "random, jsonl or sharegpt"},
			&cli.StringFlag{Name: "dataset-path", Category: "Workload", Usage: "the jsonl or ShareGPT file"},
			&cli.IntFlag{Name: "input-len", Category: "Workload", Value: 128, Usage: "tokens per random prompt"},
			&cli.IntFlag{Name: "output-len", Category: "Workload", Value: 128, Usage: "tokens to generate (max_tokens) for random and jsonl prompts"},
			&cli.BoolFlag{Name: "ignore-eos", Category: "Workload", Usage: "generate --output-len tokens even past the end of sequence (vLLM)"},
			&cli.Uint64Flag{Name: "seed", Category: "Workload", Usage: "random seed of prompts and arrivals"},
			&cli.IntFlag{Name: "num-prompts", Category: "Load", Value: 100, Usage: "requests per run"},
			&cli.DurationFlag{Name: "duration", Category: "Load", Value: 10 * time.Minute, Usage: "time bound of each run; requests still running then are aborted and left out (0: none)"},
			&cli.IntFlag{Name: "max-concurrency", Category: "Load", Usage: "requests in flight at most", DefaultText: "no bound"},
			&cli.StringFlag{Name: "request-rate", Category: "Load", Value: "inf", Usage: "requests per second, or inf for all at once; a comma-separated list sweeps"},
			&cli.Float64Flag{Name: "burstiness", Category: "Load", Value: 1, Usage: "shape of the gamma-distributed arrival gaps: 1 is Poisson, lower is burstier"},
			&cli.StringSliceFlag{Name: "goodput", Category: "Targets", Usage: "service-level targets for goodput, such as \"ttft:200 tpot:50 e2el:5000\" (milliseconds)"},
			&cli.BoolFlag{Name: "slo", Category: "Targets", Usage: "check the spec's criteria (output throughput over 500 tok/s, P99 TTFT under 100 ms, no failure) and exit 1 when missed"},
			&cli.StringFlag{Name: "json", Category: "Output", Usage: "also write the results to this JSON file"},
			&cli.BoolFlag{Name: "no-progress", Category: "Output", Usage: "no progress bar (it shows only on a terminal)"},
		},
		Action: benchAction,
	}
}

func benchAction(c *cli.Context) error {
	if err := oneArgument(c, "job"); err != nil {
		return err
	}
	o := bench.Options{
		Model: c.String("model"), Endpoint: c.String("endpoint"), Dataset: c.String("dataset"), DatasetPath: c.String("dataset-path"),
		InputLen: c.Int("input-len"), OutputLen: c.Int("output-len"), NumPrompts: c.Int("num-prompts"), Duration: c.Duration("duration"),
		MaxConcurrency: c.Int("max-concurrency"), Burstiness: c.Float64("burstiness"), IgnoreEOS: c.Bool("ignore-eos"), Seed: c.Uint64("seed"),
	}
	var err error
	if o.Goodput, err = bench.ParseGoodput(c.StringSlice("goodput")); err != nil {
		return err
	}
	rates, err := bench.ParseRates(c.String("request-rate"))
	if err != nil {
		return err
	}
	if err := benchEndpoint(c, &o); err != nil {
		return err
	}
	if !c.Bool("no-progress") && isTerminal(c.App.ErrWriter) {
		o.Progress = c.App.ErrWriter
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reqs, err := bench.Prepare(ctx, &o)
	if err != nil {
		return err
	}
	runs, err := benchRuns(ctx, c, o, reqs, rates)
	if err != nil {
		return err
	}
	return benchVerdict(c, runs)
}

// benchRuns runs the workload at each rate, printing each run's table and, for a sweep, the
// sweep's, and writes --json.
func benchRuns(ctx context.Context, c *cli.Context, o bench.Options, reqs []bench.Request, rates []float64) ([]bench.Result, error) {
	var runs []bench.Result
	for _, rate := range rates {
		r := bench.Run(ctx, o, reqs, rate)
		runs = append(runs, r)
		if err := r.WriteTable(c.App.Writer); err != nil {
			return nil, err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(runs) > 1 {
		fmt.Fprintln(c.App.Writer, "Sweep over request rates (ms):")
		if err := bench.WriteSweep(c.App.Writer, runs); err != nil {
			return nil, err
		}
	}
	if path := c.String("json"); path != "" {
		doc := map[string]any{"model": o.Model, "base_url": o.BaseURL, "endpoint": o.Endpoint, "dataset": o.Dataset,
			"input_len": o.InputLen, "output_len": o.OutputLen, "num_prompts": o.NumPrompts, "runs": runs, "date": time.Now().UTC()}
		b, _ := json.MarshalIndent(doc, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			return nil, fmt.Errorf("write --json: %w", err)
		}
	}
	return runs, nil
}

// benchVerdict fails a benchmark in which every request of a run failed, or, with --slo, one
// that missed the service-level objectives.
func benchVerdict(c *cli.Context, runs []bench.Result) error {
	for _, r := range runs {
		if r.Completed == 0 {
			return cli.Exit("llm-agent: bench: every request failed at rate "+r.Rate, 1)
		}
	}
	if c.Bool("slo") {
		ok := true
		for _, r := range runs {
			met, lines := bench.SpecSLO.Check(r)
			fmt.Fprintf(c.App.Writer, "rate %s:\n  %s\n", r.Rate, strings.Join(lines, "\n  "))
			ok = ok && met
		}
		if !ok {
			return cli.Exit("llm-agent: bench: "+errSLOMissed.Error(), 1)
		}
	}
	return nil
}

// benchEndpoint fills the base URL, key and model from --url or the job's connection file.
func benchEndpoint(c *cli.Context, o *bench.Options) error {
	keyFile := c.String("api-key-file")
	switch {
	case c.String("url") != "" && c.NArg() > 0:
		return usageErrorf("bench: give a job or --url, not both")
	case c.String("url") != "":
		u := c.String("url")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return usageErrorf("bench: --url %q: give the API's base URL, such as http://127.0.0.1:8000/v1", u)
		}
		o.BaseURL = u
	default:
		arg := c.Args().First()
		if arg == "" {
			arg = os.Getenv("SLURM_JOB_ID")
		}
		path, err := jobfiles.FindConnection(arg, os.Getenv("HOME"))
		if err != nil {
			return usageError{err}
		}
		conn, err := jobfiles.ReadConnection(path)
		if err != nil {
			return usageError{err}
		}
		if conn.State != jobfiles.StateReady {
			return cli.Exit(fmt.Sprintf("llm-agent: bench: job %s is %s, not ready (llm-agent status %s)", conn.JobID, conn.State, conn.JobID), 1)
		}
		o.BaseURL = conn.BaseURL
		if o.Model == "" {
			o.Model = conn.ServedModelName
		}
		if keyFile == "" {
			keyFile = conn.APIKeyFile
		}
	}
	switch {
	case keyFile != "":
		b, err := securefs.ReadSecret(keyFile, 4096)
		if err != nil {
			return usageErrorf("bench: API key: %v", err)
		}
		o.APIKey = strings.TrimSpace(string(b))
	default:
		o.APIKey = os.Getenv("OPENAI_API_KEY")
	}
	return nil
}
