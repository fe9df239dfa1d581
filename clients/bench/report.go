package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable prints a result as vllm bench serve does, with p90 and p95 besides p99.
func (r Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	line := func(name string, v any) { fmt.Fprintf(&b, "%-40s %v\n", name, v) }
	f2 := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	b.WriteString(strings.Repeat("=", 12) + " Serving Benchmark Result " + strings.Repeat("=", 12) + "\n")
	line("Successful requests:", r.Completed)
	line("Failed requests:", r.Failed)
	if r.Aborted > 0 {
		line("Aborted at the time bound:", r.Aborted)
	}
	if r.MaxConcurrency > 0 {
		line("Maximum request concurrency:", r.MaxConcurrency)
	}
	line("Request rate configured (RPS):", FormatRate(r.RequestRate))
	line("Benchmark duration (s):", f2(r.Duration))
	line("Total input tokens:", r.TotalInputTokens)
	line("Total generated tokens:", r.TotalOutputTokens)
	line("Request throughput (req/s):", f2(r.RequestThroughput))
	if r.RequestGoodput > 0 {
		line("Request goodput (req/s):", f2(r.RequestGoodput))
	}
	line("Output token throughput (tok/s):", f2(r.OutputThroughput))
	line("Total token throughput (tok/s):", f2(r.TotalTokenThroughput))
	for _, m := range []struct {
		title, short string
		s            Stats
	}{
		{"Time to First Token", "TTFT", r.TTFT},
		{"Time per Output Token (excl. 1st token)", "TPOT", r.TPOT},
		{"Inter-token Latency", "ITL", r.ITL},
		{"End-to-end Latency", "E2EL", r.E2EL},
	} {
		pad := max(0, 50-len(m.title)-2)
		b.WriteString(strings.Repeat("-", pad/2) + m.title + strings.Repeat("-", pad-pad/2) + "\n")
		line("Mean "+m.short+" (ms):", f2(m.s.Mean))
		line("Median "+m.short+" (ms):", f2(m.s.Median))
		line("P90 "+m.short+" (ms):", f2(m.s.P90))
		line("P95 "+m.short+" (ms):", f2(m.s.P95))
		line("P99 "+m.short+" (ms):", f2(m.s.P99))
	}
	if r.InputChecked > 0 {
		b.WriteString(strings.Repeat("-", 50) + "\n")
		line("Input length checked (requests):", r.InputChecked)
		line("Input length off (requests):", r.InputMismatched)
	}
	for _, e := range r.Errors {
		line("Error:", e)
	}
	b.WriteString(strings.Repeat("=", 50) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// SLO are the spec's acceptance criteria: output throughput and the 99th percentile of the
// time to first token of interactive queries.
type SLO struct {
	MinOutputThroughput float64 // tokens per second
	MaxP99TTFT          float64 // milliseconds
}

// SpecSLO is the preset: more than 500 tokens/s, P99 under 100 ms.
var SpecSLO = SLO{MinOutputThroughput: 500, MaxP99TTFT: 100}

// Check says whether r meets the targets, one line per target.
func (s SLO) Check(r Result) (bool, []string) {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	tput := r.OutputThroughput >= s.MinOutputThroughput && r.Completed > 0
	p99 := r.TTFT.P99 <= s.MaxP99TTFT && r.Completed > 0
	return tput && p99 && r.Failed == 0, []string{
		fmt.Sprintf("SLO output token throughput %.1f tok/s >= %.0f: %s", r.OutputThroughput, s.MinOutputThroughput, verdict(tput)),
		fmt.Sprintf("SLO P99 TTFT %.1f ms <= %.0f ms: %s", r.TTFT.P99, s.MaxP99TTFT, verdict(p99)),
		fmt.Sprintf("SLO failed requests %d == 0: %s", r.Failed, verdict(r.Failed == 0)),
	}
}

// WriteSweep prints one line per run of a sweep over request rates.
func WriteSweep(w io.Writer, runs []Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %9s %9s %12s %12s %11s %11s %11s %11s\n", "rate", "completed", "failed", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "E2EL p99")
	for _, r := range runs {
		fmt.Fprintf(&b, "%-8s %9d %9d %12.2f %12.2f %11.2f %11.2f %11.2f %11.2f\n", FormatRate(r.RequestRate), r.Completed, r.Failed,
			r.RequestThroughput, r.OutputThroughput, r.TTFT.Median, r.TTFT.P99, r.TPOT.Median, r.E2EL.P99)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
