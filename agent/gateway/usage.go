package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/llm-agent/llm-agent/slurm"
)

// UsageRow is one key's or project's share of a job.
type UsageRow struct {
	Key              string  `json:"key,omitempty"`
	Project          string  `json:"project"`
	Requests         int     `json:"requests"`
	Errors           int     `json:"errors"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	Share            float64 `json:"token_share"`
	GPUHours         float64 `json:"gpu_hours"`
	ServiceUnits     float64 `json:"service_units"`
}

// UsageReport apportions a job's GPU-hours and service units to keys and projects by tokens.
type UsageReport struct {
	GPUs         int        `json:"gpus"`
	WallHours    float64    `json:"wall_hours"`
	GPUHours     float64    `json:"gpu_hours"`
	ServiceUnits float64    `json:"service_units"`
	Factor       float64    `json:"su_factor"`
	Keys         []UsageRow `json:"keys"`
	Projects     []UsageRow `json:"projects"`
	// Skipped counts the audit lines that could not be read: damaged by a crash mid-write, cut,
	// or not records at all.
	Skipped int `json:"skipped_lines"`
	// Jobs counts the jobs summed, for a service's report (Merge).
	Jobs int `json:"jobs,omitempty"`
}

// Merge sums the reports of a service's jobs: each job's cost stays shared out by its own
// tokens, and the shares are taken again over the sum.
func Merge(reps []UsageReport) UsageReport {
	out := UsageReport{Jobs: len(reps)}
	keys := map[string]*UsageRow{}
	projects := map[string]*UsageRow{}
	add := func(m map[string]*UsageRow, id string, r UsageRow) {
		row := get(m, id, r.Key, r.Project)
		row.Requests += r.Requests
		row.Errors += r.Errors
		row.PromptTokens += r.PromptTokens
		row.CompletionTokens += r.CompletionTokens
		row.GPUHours += r.GPUHours
		row.ServiceUnits += r.ServiceUnits
	}
	for _, r := range reps {
		out.GPUs = max(out.GPUs, r.GPUs)
		out.WallHours += r.WallHours
		out.GPUHours += r.GPUHours
		out.ServiceUnits += r.ServiceUnits
		out.Factor = r.Factor
		out.Skipped += r.Skipped
		for _, k := range r.Keys {
			add(keys, k.Key, k)
		}
		for _, p := range r.Projects {
			add(projects, p.Project, p)
		}
	}
	var total int64
	for _, row := range keys {
		total += row.PromptTokens + row.CompletionTokens
	}
	rows := func(m map[string]*UsageRow) []UsageRow {
		list := make([]UsageRow, 0, len(m))
		for _, row := range m {
			if total > 0 {
				row.Share = float64(row.PromptTokens+row.CompletionTokens) / float64(total)
			}
			list = append(list, *row)
		}
		sortRows(list)
		return list
	}
	out.Keys, out.Projects = rows(keys), rows(projects)
	return out
}

// maxAuditLine bounds an audit line worth reading; the gateway writes them far shorter.
const maxAuditLine = 64 << 10

// Summarize reads an audit log and shares the job's cost (wall time × GPUs × factor) out by
// each key's prompt plus completion tokens. Lines that are not whole records, of any length,
// are skipped and counted, so a log damaged by a crash or by hand still adds up.
func Summarize(r io.Reader, gpus int, wall time.Duration, factor float64) (UsageReport, error) {
	t := newTally()
	if _, err := t.read(r, true); err != nil {
		return t.report(gpus, wall, factor), err
	}
	return t.report(gpus, wall, factor), nil
}

// tally counts an audit log's records by key and by project.
type tally struct {
	keys, projects map[string]*UsageRow
	skipped        int
}

func newTally() *tally {
	return &tally{keys: map[string]*UsageRow{}, projects: map[string]*UsageRow{}}
}

// read adds r's records and returns the bytes it took. A last line without its newline is
// taken only when last is set: otherwise it may be a record still being written, and is left
// for the next read.
func (t *tally) read(r io.Reader, last bool) (int64, error) {
	br := bufio.NewReaderSize(r, maxAuditLine)
	var took int64
	for {
		line, n, ended, tooLong, err := readLine(br)
		if err == io.EOF {
			return took, nil
		}
		if err != nil {
			return took, fmt.Errorf("read audit log: %w", err)
		}
		if !ended && !last {
			return took, nil
		}
		took += n
		t.add(line, tooLong)
	}
}

func (t *tally) add(line []byte, tooLong bool) {
	if len(bytes.TrimSpace(line)) == 0 && !tooLong {
		return
	}
	var rec Record
	if tooLong || json.Unmarshal(line, &rec) != nil || rec.Key == "" {
		t.skipped++
		return
	}
	for _, row := range []*UsageRow{get(t.keys, rec.Key, rec.Key, rec.Project), get(t.projects, rec.Project, "", rec.Project)} {
		row.Requests++
		if rec.Status >= 400 {
			row.Errors++
		}
		row.PromptTokens += int64(rec.PromptTokens)
		row.CompletionTokens += int64(rec.CompletionTokens)
	}
}

// report shares the cost out as the counts stand; the tally goes on counting.
func (t *tally) report(gpus int, wall time.Duration, factor float64) UsageReport {
	rep := UsageReport{GPUs: gpus, WallHours: wall.Hours(), Factor: factor, Skipped: t.skipped}
	rep.GPUHours = rep.WallHours * float64(gpus)
	rep.ServiceUnits = slurm.ServiceUnits(wall, gpus, factor)
	var total int64
	for _, row := range t.keys {
		total += row.PromptTokens + row.CompletionTokens
	}
	rep.Keys = finish(t.keys, total, rep)
	rep.Projects = finish(t.projects, total, rep)
	return rep
}

// readLine returns the next line without its newline, the bytes it took from br, and whether
// it ended with its newline; a line longer than the reader's buffer is consumed whole and
// reported as too long. err is io.EOF only when nothing is left.
func readLine(br *bufio.Reader) (line []byte, n int64, ended, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		n += int64(len(chunk))
		switch {
		case err == bufio.ErrBufferFull:
			tooLong = true
			continue
		case err == io.EOF && len(chunk) == 0 && !tooLong:
			return nil, n, false, false, io.EOF
		case err != nil && err != io.EOF:
			return nil, n, false, false, err
		}
		ended = bytes.HasSuffix(chunk, []byte("\n"))
		return bytes.TrimSuffix(chunk, []byte("\n")), n, ended, tooLong, nil
	}
}

func get(m map[string]*UsageRow, id, key, project string) *UsageRow {
	if m[id] == nil {
		m[id] = &UsageRow{Key: key, Project: project}
	}
	return m[id]
}

func finish(m map[string]*UsageRow, total int64, rep UsageReport) []UsageRow {
	rows := make([]UsageRow, 0, len(m))
	for _, row := range m {
		if total > 0 {
			row.Share = float64(row.PromptTokens+row.CompletionTokens) / float64(total)
		}
		row.GPUHours = row.Share * rep.GPUHours
		row.ServiceUnits = row.Share * rep.ServiceUnits
		rows = append(rows, *row)
	}
	sortRows(rows)
	return rows
}

// sortRows puts the largest share first.
func sortRows(rows []UsageRow) {
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Share != rows[j].Share {
			return rows[i].Share > rows[j].Share
		}
		return rows[i].Key+rows[i].Project < rows[j].Key+rows[j].Project
	})
}

// SummarizeFile is Summarize on the audit log at path.
func SummarizeFile(path string, gpus int, wall time.Duration, factor float64) (UsageReport, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return UsageReport{}, fmt.Errorf("no audit log at %s: the job ran without the gateway, or served no request yet", path)
	}
	if err != nil {
		return UsageReport{}, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	return Summarize(f, gpus, wall, factor)
}

// WriteTable prints the report for people.
func (rep UsageReport) WriteTable(w io.Writer) error {
	what := "job"
	if rep.Jobs > 0 {
		what = fmt.Sprintf("service, %d jobs", rep.Jobs)
	}
	fmt.Fprintf(w, "%s: %.2f h × %d GPUs = %.2f GPU-hours = %.1f SU (factor %g), shared out by tokens\n\n",
		what, rep.WallHours, rep.GPUs, rep.GPUHours, rep.ServiceUnits, rep.Factor)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	write := func(title string, rows []UsageRow, withKey bool) {
		if withKey {
			fmt.Fprintln(tw, "KEY\tPROJECT\tREQUESTS\tERRORS\tPROMPT TOKENS\tCOMPLETION TOKENS\tSHARE\tGPU-HOURS\tSU\t")
		} else {
			fmt.Fprintln(tw, "\tPROJECT\tREQUESTS\tERRORS\tPROMPT TOKENS\tCOMPLETION TOKENS\tSHARE\tGPU-HOURS\tSU\t")
		}
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%.1f%%\t%.3f\t%.2f\t\n", r.Key, r.Project, r.Requests, r.Errors,
				r.PromptTokens, r.CompletionTokens, r.Share*100, r.GPUHours, r.ServiceUnits)
		}
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t")
	}
	write("keys", rep.Keys, true)
	write("projects", rep.Projects, false)
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Skipped > 0 {
		fmt.Fprintf(w, "skipped %d damaged audit line(s)\n", rep.Skipped)
	}
	return nil
}
