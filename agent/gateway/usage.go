package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"
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
}

// Summarize reads an audit log and shares the job's cost (wall time × GPUs × factor) out by
// each key's prompt plus completion tokens.
func Summarize(r io.Reader, gpus int, wall time.Duration, factor float64) (UsageReport, error) {
	rep := UsageReport{GPUs: gpus, WallHours: wall.Hours(), Factor: factor}
	rep.GPUHours = rep.WallHours * float64(gpus)
	rep.ServiceUnits = rep.GPUHours * factor
	keys := map[string]*UsageRow{}
	projects := map[string]*UsageRow{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return rep, fmt.Errorf("audit log line %d: %w", line, err)
		}
		for _, row := range []*UsageRow{get(keys, rec.Key, rec.Key, rec.Project), get(projects, rec.Project, "", rec.Project)} {
			row.Requests++
			if rec.Status >= 400 {
				row.Errors++
			}
			row.PromptTokens += int64(rec.PromptTokens)
			row.CompletionTokens += int64(rec.CompletionTokens)
		}
	}
	if err := sc.Err(); err != nil {
		return rep, fmt.Errorf("read audit log: %w", err)
	}
	var total int64
	for _, row := range keys {
		total += row.PromptTokens + row.CompletionTokens
	}
	rep.Keys = finish(keys, total, rep)
	rep.Projects = finish(projects, total, rep)
	return rep, nil
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
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Share != rows[j].Share {
			return rows[i].Share > rows[j].Share
		}
		return rows[i].Key+rows[i].Project < rows[j].Key+rows[j].Project
	})
	return rows
}

// SummarizeFile is Summarize on the audit log at path.
func SummarizeFile(path string, gpus int, wall time.Duration, factor float64) (UsageReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return UsageReport{}, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	return Summarize(f, gpus, wall, factor)
}

// WriteTable prints the report for people.
func (rep UsageReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "job: %.2f h × %d GPUs = %.2f GPU-hours = %.1f SU (factor %g), shared out by tokens\n\n",
		rep.WallHours, rep.GPUs, rep.GPUHours, rep.ServiceUnits, rep.Factor)
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
	return tw.Flush()
}
