package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
)

// Request is one prompt of a workload.
type Request struct {
	// Prompt is text, or token ids ([]int) when the input length must be exact.
	Prompt any
	// PromptLen is the input length in tokens when known (0: the server's count is taken).
	PromptLen int
	OutputLen int
}

// The datasets.
const (
	DatasetRandom   = "random"
	DatasetJSONL    = "jsonl"
	DatasetShareGPT = "sharegpt"
)

// tokenizer asks the server (vLLM's /tokenize, behind the gateway) for token ids, so that
// prompts are made of the served model's own tokens.
type tokenizer struct {
	c     *client
	model string
}

var errNoTokenizer = errors.New("the server has no /tokenize")

func (t tokenizer) tokenize(ctx context.Context, text string) ([]int, error) {
	body, _ := json.Marshal(map[string]any{"model": t.model, "prompt": text, "add_special_tokens": false})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.c.root+"/tokenize", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := t.c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		return nil, errNoTokenizer
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("tokenize: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var out struct {
		Tokens []int `json:"tokens"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("tokenize: %w", err)
	}
	return out.Tokens, nil
}

// words make the text whose tokens random prompts are drawn from.
var words = strings.Fields(`time person year way day thing man world life hand part child eye woman place work week case
point government company number group problem fact be have do say get make go know take see come think look want give use
find tell ask seem feel try leave call good new first last long great little own other old right big high different small
large next early young important few public bad same able to of in for on with at by from up about into over after
beneath under above the and a that I it not he as you this but his they her she or an will my one all would there their
river mountain ocean forest desert valley island planet star galaxy atom molecule protein genome cell neuron climate
weather storm rain snow wind cloud sun moon energy power engine machine computer network signal data model theory
experiment result analysis method sample measure value error rate speed distance pressure temperature volume density`)

// randomRequests makes n prompts of exactly inputLen tokens of the served model (token ids
// from the server's tokenizer), or, without a tokenizer, of inputLen words.
func randomRequests(ctx context.Context, tok tokenizer, rng *rand.Rand, n, inputLen, outputLen int, ids bool) ([]Request, error) {
	reqs := make([]Request, n)
	if ids {
		var text strings.Builder
		for i := 0; i < 4*len(words); i++ {
			text.WriteString(words[rng.IntN(len(words))])
			text.WriteByte(' ')
		}
		pool, err := tok.tokenize(ctx, text.String())
		if err != nil {
			return nil, err
		}
		if len(pool) == 0 {
			return nil, errors.New("tokenize: the server returned no tokens")
		}
		for i := range reqs {
			p := make([]int, inputLen)
			for k := range p {
				p[k] = pool[rng.IntN(len(pool))]
			}
			reqs[i] = Request{Prompt: p, PromptLen: inputLen, OutputLen: outputLen}
		}
		return reqs, nil
	}
	for i := range reqs {
		p := make([]string, inputLen)
		for k := range p {
			p[k] = words[rng.IntN(len(words))]
		}
		reqs[i] = Request{Prompt: strings.Join(p, " "), OutputLen: outputLen}
	}
	return reqs, nil
}

// jsonlRequests reads a prompt file: one JSON object per line with "prompt" and optionally
// "output_len"; n of them, in order, repeated when the file has fewer.
func jsonlRequests(path string, n, outputLen int) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: prompt file: %v", ErrInput, err)
	}
	defer f.Close()
	var all []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var rec struct {
			Prompt    *string `json:"prompt"`
			OutputLen int     `json:"output_len"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.Prompt == nil {
			return nil, fmt.Errorf(`%w: %s:%d: want {"prompt": "...", "output_len": N}`, ErrInput, path, line)
		}
		out := outputLen
		if rec.OutputLen > 0 {
			out = rec.OutputLen
		}
		all = append(all, Request{Prompt: *rec.Prompt, OutputLen: out})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInput, path, err)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("%w: %s has no prompts", ErrInput, path)
	}
	reqs := make([]Request, n)
	for i := range reqs {
		reqs[i] = all[i%len(all)]
	}
	return reqs, nil
}

// shareGPTRequests samples n conversations of a ShareGPT file, as vllm bench serve does: the
// first turn is the prompt, the second's length in tokens is the output length; pairs with
// fewer than 4 tokens on either side, or over 1024 prompt or 2048 total tokens, are left out.
func shareGPTRequests(ctx context.Context, tok tokenizer, rng *rand.Rand, path string, n int) ([]Request, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: ShareGPT file: %v", ErrInput, err)
	}
	var convs []struct {
		Conversations []struct {
			Value string `json:"value"`
		} `json:"conversations"`
	}
	if err := json.Unmarshal(b, &convs); err != nil {
		return nil, fmt.Errorf("%w: %s is not a ShareGPT file (a JSON list of {\"conversations\": [...]}): %v", ErrInput, path, err)
	}
	rng.Shuffle(len(convs), func(i, j int) { convs[i], convs[j] = convs[j], convs[i] })
	var reqs []Request
	for _, c := range convs {
		if len(reqs) == n {
			break
		}
		if len(c.Conversations) < 2 {
			continue
		}
		p, err := tok.tokenize(ctx, c.Conversations[0].Value)
		if err != nil {
			return nil, fmt.Errorf("the ShareGPT workload counts tokens with the server's tokenizer: %w", err)
		}
		o, err := tok.tokenize(ctx, c.Conversations[1].Value)
		if err != nil {
			return nil, err
		}
		if len(p) < 4 || len(o) < 4 || len(p) > 1024 || len(p)+len(o) > 2048 {
			continue
		}
		reqs = append(reqs, Request{Prompt: c.Conversations[0].Value, OutputLen: len(o)})
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: %s has no usable conversations", ErrInput, path)
	}
	return reqs, nil
}
