package vllm

import (
	"strconv"
	"strings"
)

// Option is one option in a `vllm serve` argument list, read as vLLM's parser reads it.
type Option struct {
	// Name is the option as vLLM knows it: "_" read as "-" in long options, without "=value"
	// or a dotted ".field".
	Name string
	// Value is the option's value: after "=", or the next argument when that is not an option.
	Value string
	// Index is the option's place in the list, and Span how many arguments it takes (1 or 2).
	Index, Span int
}

// Options reads the options of a `vllm serve` argument list; arguments that are not options
// and are not an option's value are skipped.
func Options(args []string) []Option {
	var out []Option
	for i := 0; i < len(args); i++ {
		name, ok := optionName(args[i])
		if !ok {
			continue
		}
		o := Option{Name: name, Index: i, Span: 1}
		if _, v, hasValue := strings.Cut(args[i], "="); hasValue {
			o.Value = v
		} else if i+1 < len(args) {
			if _, next := optionName(args[i+1]); !next {
				o.Value, o.Span = args[i+1], 2
				i++
			}
		}
		out = append(out, o)
	}
	return out
}

// Settings are the engine settings the agent reads from the arguments: the planner's inputs and
// the scheduling policy the gateway follows.
type Settings struct {
	MaxModelLen          int
	GPUMemoryUtilization float64
	// Dtype is empty for vLLM's default ("auto").
	Dtype, Quantization, KVCacheDtype string
	SchedulingPolicy                  string
	// EnableLoRA is --enable-lora; MaxLoRARank is --max-lora-rank, 0 when not given.
	EnableLoRA  bool
	MaxLoRARank int
	// MaxNumSeqs is --max-num-seqs, the sequences the engine runs at once; 0 when not given.
	MaxNumSeqs int
}

// DefaultMaxNumSeqs is vLLM's --max-num-seqs when not given.
const DefaultMaxNumSeqs = 256

// ReadSettings reads Settings from args; the last of a repeated option wins, as in vLLM.
func ReadSettings(args []string) Settings {
	var s Settings
	for _, o := range Options(args) {
		switch o.Name {
		case "--max-model-len":
			s.MaxModelLen, _ = strconv.Atoi(o.Value)
		case "--gpu-memory-utilization":
			s.GPUMemoryUtilization, _ = strconv.ParseFloat(o.Value, 64)
		case "--dtype":
			s.Dtype = o.Value
		case "--quantization", "-q":
			s.Quantization = o.Value
		case "--kv-cache-dtype":
			s.KVCacheDtype = o.Value
		case "--scheduling-policy":
			s.SchedulingPolicy = o.Value
		case "--enable-lora":
			s.EnableLoRA = true
		case "--no-enable-lora":
			s.EnableLoRA = false
		case "--max-lora-rank":
			s.MaxLoRARank, _ = strconv.Atoi(o.Value)
		case "--max-num-seqs":
			s.MaxNumSeqs, _ = strconv.Atoi(o.Value)
		}
	}
	if s.Dtype == "auto" {
		s.Dtype = ""
	}
	return s
}

// Merge puts base's options before override's, dropping every option of base that override
// also gives (either form of a --no- flag counts): override wins.
func Merge(base, override []string) []string {
	given := map[string]bool{}
	for _, o := range Options(override) {
		given[o.Name] = true
		given[strings.Replace(o.Name, "--no-", "--", 1)] = true
		given[strings.Replace(o.Name, "--", "--no-", 1)] = true
	}
	out := make([]string, 0, len(base)+len(override))
	next := 0
	for _, o := range Options(base) {
		out = append(out, base[next:o.Index]...) // arguments that are not options stay
		if !given[o.Name] {
			out = append(out, base[o.Index:o.Index+o.Span]...)
		}
		next = o.Index + o.Span
	}
	out = append(out, base[next:]...)
	return append(out, override...)
}
