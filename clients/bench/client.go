package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// client sends requests to the endpoint.
type client struct {
	http *http.Client
	base string // .../v1
	root string // the server's root, for /tokenize
	key  string
}

func newClient(o Options, conns int) *client {
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: 90 * time.Second,
		// Streams pass as they come: compression would hold chunks back.
		DisableCompression: true,
	}
	base := strings.TrimRight(o.BaseURL, "/")
	return &client{http: &http.Client{Transport: tr}, base: base, root: strings.TrimSuffix(base, "/v1"), key: o.APIKey}
}

func (c *client) do(req *http.Request) (*http.Response, error) {
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.http.Do(req)
}

// servedModel asks /v1/models for the first model.
func (c *client) servedModel(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/models", nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInput, err)
	}
	resp, err := c.do(req)
	if err != nil {
		return "", fmt.Errorf("%w: cannot reach %s: %v", ErrInput, c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return "", fmt.Errorf("%w: %s refused the API key (401)", ErrInput, c.base)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&list) != nil || len(list.Data) == 0 {
		return "", fmt.Errorf("%w: %s/models answered %s with no model; give --model", ErrInput, c.base, resp.Status)
	}
	return list.Data[0].ID, nil
}

// send makes one streamed request and times its chunks as vllm bench serve does: the first
// chunk that carries choices is the first token; each later one adds an inter-token latency.
func (c *client) send(ctx context.Context, o Options, r Request) Output {
	body := map[string]any{"model": o.Model, "max_tokens": r.OutputLen, "stream": true,
		"stream_options": map[string]any{"include_usage": true}}
	if o.IgnoreEOS {
		body["ignore_eos"] = true
	}
	path := "/completions"
	if o.Endpoint == "chat" {
		path = "/chat/completions"
		body["messages"] = []map[string]any{{"role": "user", "content": r.Prompt}}
	} else {
		body["prompt"] = r.Prompt
	}
	b, _ := json.Marshal(body)
	out := Output{WantPromptLen: r.PromptLen, PromptLen: r.PromptLen}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		out.Err = err.Error()
		return out
	}
	out.Start = time.Now()
	resp, err := c.do(req)
	if err != nil {
		out.Err = err.Error()
		return out
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		out.Err = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
		return out
	}
	readStream(resp.Body, &out)
	return out
}

// streamEvent is what the timing needs of one event of a stream.
type streamEvent struct {
	Choices []json.RawMessage `json:"choices"`
	Usage   *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// readStream reads a stream's events into out, timed from out.Start, until the stream ends;
// out.Err says why it failed, or out.Success is set.
func readStream(body io.Reader, out *Output) {
	rd := bufio.NewReaderSize(body, 16<<10)
	last := out.Start
	chunks := 0
	for {
		line, err := rd.ReadBytes('\n')
		data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data:"))
		data = bytes.TrimSpace(data)
		if ok && len(data) > 0 && !bytes.Equal(data, []byte("[DONE]")) {
			now := time.Now()
			var ev streamEvent
			if json.Unmarshal(data, &ev) != nil {
				out.Err = "a chunk that is not JSON: " + string(data[:min(len(data), 80)])
				return
			}
			switch {
			case len(ev.Error) > 0:
				out.Err = "error event: " + string(ev.Error)
				return
			case len(ev.Choices) > 0:
				if chunks == 0 {
					out.TTFT = now.Sub(out.Start)
				} else {
					out.ITL = append(out.ITL, now.Sub(last))
				}
				chunks++
				last = now
			case ev.Usage != nil:
				out.OutputTokens = ev.Usage.CompletionTokens
				if ev.Usage.PromptTokens > 0 {
					out.PromptLen = ev.Usage.PromptTokens
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				out.Err = err.Error()
				return
			}
			break
		}
	}
	if chunks == 0 {
		out.Err = "no chunk with a token"
		return
	}
	if out.OutputTokens == 0 {
		out.OutputTokens = chunks // no usage: one token per chunk
	}
	out.Latency = last.Sub(out.Start)
	out.Success = true
}
