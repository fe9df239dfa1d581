// Package plan works out tensor and pipeline parallelism from a model's own files and the
// allocation, and explains its choice. It reads config.json and the safetensors index or
// headers; it never loads a tensor. It knows nothing of Slurm's environment or of starting
// anything.
package plan

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrModel is wrapped by errors about the model's files.
var ErrModel = errors.New("cannot read model")

// Model is what the planner knows of a checkpoint.
type Model struct {
	Path         string `json:"path"`
	Architecture string `json:"architecture"`
	Layers       int    `json:"layers"`
	Heads        int    `json:"attention_heads"`
	KVHeads      int    `json:"kv_heads"`
	HeadDim      int    `json:"head_dim"`
	Hidden       int    `json:"hidden_size"`
	Intermediate int    `json:"intermediate_size"`
	Vocab        int    `json:"vocab_size"`
	Experts      int    `json:"experts,omitempty"`
	TiedEmbed    bool   `json:"tied_embeddings,omitempty"`
	MaxPosition  int    `json:"max_position_embeddings"`
	Dtype        string `json:"dtype"`
	// Quantization is the checkpoint's quant_method ("awq", "gptq", "fp8", "compressed-tensors"),
	// empty when it is not quantized.
	Quantization string `json:"quantization,omitempty"`
	QuantBits    int    `json:"quantization_bits,omitempty"`
	// WeightBytes is the size of the weights as stored.
	WeightBytes int64 `json:"weight_bytes"`
	// WeightSource says where WeightBytes came from.
	WeightSource string `json:"weight_source"`
}

// config is the part of a Hugging Face config.json the planner reads.
type config struct {
	Architectures         []string        `json:"architectures"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      int             `json:"num_key_value_heads"`
	HeadDim               int             `json:"head_dim"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	VocabSize             int             `json:"vocab_size"`
	NumLocalExperts       int             `json:"num_local_experts"`
	NumExperts            int             `json:"num_experts"`
	TieWordEmbeddings     bool            `json:"tie_word_embeddings"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	TorchDtype            string          `json:"torch_dtype"`
	Dtype                 string          `json:"dtype"`
	QuantizationConfig    *quantConfig    `json:"quantization_config"`
	TextConfig            json.RawMessage `json:"text_config"`
}

type quantConfig struct {
	QuantMethod  string `json:"quant_method"`
	Bits         int    `json:"bits"`
	ConfigGroups map[string]struct {
		Weights struct {
			NumBits int    `json:"num_bits"`
			Type    string `json:"type"`
		} `json:"weights"`
	} `json:"config_groups"`
}

// ResolveModel finds the directory of model: a local directory, or a Hugging Face id in the
// cache under hfHome (HF_HOME; "" means ~/.cache/huggingface).
func ResolveModel(model, hfHome, home string) (string, error) {
	if fi, err := os.Stat(model); err == nil && fi.IsDir() {
		return model, nil
	}
	if strings.HasPrefix(model, "/") || strings.HasPrefix(model, ".") {
		return "", fmt.Errorf("%w: %s is not a directory", ErrModel, model)
	}
	if hfHome == "" {
		hfHome = filepath.Join(home, ".cache", "huggingface")
	}
	repo := filepath.Join(hfHome, "hub", "models--"+strings.ReplaceAll(model, "/", "--"))
	snapshots := filepath.Join(repo, "snapshots")
	if ref, err := os.ReadFile(filepath.Join(repo, "refs", "main")); err == nil {
		dir := filepath.Join(snapshots, strings.TrimSpace(string(ref)))
		if _, err := os.Stat(dir); err == nil {
			return dir, nil
		}
	}
	entries, err := os.ReadDir(snapshots)
	if err != nil || len(entries) == 0 {
		return "", fmt.Errorf("%w: %q is neither a directory nor in the Hugging Face cache (%s)", ErrModel, model, repo)
	}
	return filepath.Join(snapshots, entries[len(entries)-1].Name()), nil
}

// LoadModel reads a model directory's config.json and weight sizes.
func LoadModel(dir string) (Model, error) {
	m := Model{Path: dir}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("%w: %s has no config.json; give the directory of a Hugging Face model", ErrModel, dir)
	}
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrModel, err)
	}
	var c config
	if err := json.Unmarshal(b, &c); err != nil {
		return m, fmt.Errorf("%w: %s/config.json: %w", ErrModel, dir, err)
	}
	if len(c.TextConfig) > 0 && c.NumAttentionHeads == 0 {
		// Multimodal configs keep the language model's shape in text_config.
		q := c.QuantizationConfig
		if err := json.Unmarshal(c.TextConfig, &c); err != nil {
			return m, fmt.Errorf("%w: %s/config.json text_config: %w", ErrModel, dir, err)
		}
		if c.QuantizationConfig == nil {
			c.QuantizationConfig = q
		}
	}
	if err := c.fill(&m); err != nil {
		return m, fmt.Errorf("%w: %s/config.json: %w", ErrModel, dir, err)
	}
	if m.WeightBytes, m.WeightSource, err = weightBytes(dir); err != nil {
		return m, err
	}
	if m.WeightBytes == 0 {
		m.WeightBytes = m.EstimateWeightBytes(m.Quantization, m.QuantBits, m.Dtype)
		m.WeightSource = "estimated from config.json"
	}
	return m, nil
}

func (c config) fill(m *Model) error {
	if len(c.Architectures) > 0 {
		m.Architecture = c.Architectures[0]
	}
	m.Layers, m.Heads, m.KVHeads = c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads
	m.Hidden, m.Intermediate, m.Vocab = c.HiddenSize, c.IntermediateSize, c.VocabSize
	m.TiedEmbed, m.MaxPosition = c.TieWordEmbeddings, c.MaxPositionEmbeddings
	m.Experts = max(c.NumLocalExperts, c.NumExperts)
	switch {
	case m.Heads <= 0:
		return errors.New("num_attention_heads is missing; the planner needs the head counts")
	case m.Layers <= 0:
		return errors.New("num_hidden_layers is missing")
	case m.Hidden <= 0:
		return errors.New("hidden_size is missing")
	}
	if m.KVHeads == 0 {
		m.KVHeads = m.Heads // no grouped-query attention
	}
	m.HeadDim = c.HeadDim
	if m.HeadDim == 0 {
		m.HeadDim = m.Hidden / m.Heads
	}
	m.Dtype = c.TorchDtype
	if m.Dtype == "" {
		m.Dtype = c.Dtype
	}
	if m.Dtype == "" {
		m.Dtype = "bfloat16"
	}
	if q := c.QuantizationConfig; q != nil {
		m.Quantization = strings.ToLower(q.QuantMethod)
		m.QuantBits = q.Bits
		for _, g := range q.ConfigGroups {
			if g.Weights.NumBits > 0 {
				m.QuantBits = g.Weights.NumBits
			}
		}
		if m.QuantBits == 0 {
			m.QuantBits = map[string]int{"awq": 4, "gptq": 4, "fp8": 8}[m.Quantization]
		}
	}
	return nil
}

// dtypeBytes is the size of one element of a dtype name, as config.json and safetensors spell it.
var dtypeBytes = map[string]float64{
	"float32": 4, "F32": 4, "float16": 2, "F16": 2, "bfloat16": 2, "BF16": 2, "half": 2,
	"float8_e4m3fn": 1, "F8_E4M3": 1, "F8_E5M2": 1, "int8": 1, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8,
	"BOOL": 1, "I16": 2, "U16": 2, "U32": 4,
}

// weightBytes sums the weights' sizes from the index's metadata.total_size, or else from the
// safetensors headers, without reading tensor data. It returns 0 when neither exists.
func weightBytes(dir string) (int64, string, error) {
	if b, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json")); err == nil {
		var idx struct {
			Metadata struct {
				TotalSize json.Number `json:"total_size"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return 0, "", fmt.Errorf("%w: %s/model.safetensors.index.json: %w", ErrModel, dir, err)
		}
		if n, err := idx.Metadata.TotalSize.Int64(); err == nil && n > 0 {
			return n, "model.safetensors.index.json", nil
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	sort.Strings(files)
	var total int64
	for _, f := range files {
		n, err := safetensorsBytes(f)
		if err != nil {
			return 0, "", err
		}
		total += n
	}
	if total > 0 {
		return total, fmt.Sprintf("safetensors headers of %d files", len(files)), nil
	}
	return 0, "", nil
}

// maxHeader bounds a safetensors header, as the format's reference implementation does.
const maxHeader = 100 << 20

// safetensorsBytes reads one file's header (8-byte length, then JSON) and sums the tensors'
// byte ranges.
func safetensorsBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrModel, err)
	}
	defer f.Close()
	var n uint64
	if err := binary.Read(f, binary.LittleEndian, &n); err != nil {
		return 0, fmt.Errorf("%w: %s: no safetensors header: %w", ErrModel, path, err)
	}
	if n == 0 || n > maxHeader {
		return 0, fmt.Errorf("%w: %s: safetensors header of %d bytes", ErrModel, path, n)
	}
	header := make([]byte, n)
	if _, err := io.ReadFull(f, header); err != nil {
		return 0, fmt.Errorf("%w: %s: short safetensors header: %w", ErrModel, path, err)
	}
	var tensors map[string]json.RawMessage
	if err := json.Unmarshal(header, &tensors); err != nil {
		return 0, fmt.Errorf("%w: %s: safetensors header: %w", ErrModel, path, err)
	}
	var total int64
	for name, raw := range tensors {
		if name == "__metadata__" {
			continue
		}
		var t struct {
			DataOffsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return 0, fmt.Errorf("%w: %s: tensor %s: %w", ErrModel, path, name, err)
		}
		total += t.DataOffsets[1] - t.DataOffsets[0]
	}
	return total, nil
}

// Params splits the parameter count estimated from the shape into the linear layers' (which
// quantization shrinks) and the rest (embeddings and norms, kept in 16 bits).
func (m Model) Params() (linear, other int64) {
	h, kv := int64(m.Hidden), int64(m.KVHeads*m.HeadDim)
	q := int64(m.Heads * m.HeadDim)
	attn := h*q + 2*h*kv + q*h
	experts := int64(max(m.Experts, 1))
	mlp := 3 * h * int64(m.Intermediate) * experts
	router := int64(0)
	if m.Experts > 0 {
		router = h * int64(m.Experts)
	}
	linear = int64(m.Layers) * (attn + mlp)
	embed := int64(m.Vocab) * h
	if !m.TiedEmbed {
		embed *= 2
	}
	other = embed + int64(m.Layers)*(2*h+router) + h
	return linear, other
}

// EstimateWeightBytes sizes the weights from the shape for a quantization method and bits
// ("" for none) and the 16- or 32-bit dtype of everything that is not quantized.
func (m Model) EstimateWeightBytes(quant string, bits int, dtype string) int64 {
	linear, other := m.Params()
	elem := dtypeBytes[dtype]
	if elem == 0 {
		elem = 2
	}
	perLinear := elem
	switch quant {
	case "":
	case "fp8", "int8":
		perLinear = 1
	default: // awq, gptq, int4, compressed-tensors: bits per weight plus group scales and zeros
		if bits == 0 {
			bits = 4
		}
		perLinear = float64(bits)/8 + (2+0.5)/128 // fp16 scale and packed zero per group of 128
	}
	return int64(float64(linear)*perLinear + float64(other)*elem)
}
