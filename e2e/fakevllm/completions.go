package main

// The completions and chat completions routes of the test double: whole answers and streams.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// complete serves chat (chat=true) and text completions, streamed or not.
func (s *server) complete(chat bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var req request
		if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody("invalid JSON body: "+err.Error(), "BadRequestError", 400))
			return
		}
		if !s.serves(req.Model) {
			writeJSON(w, http.StatusNotFound, errorBody(fmt.Sprintf("The model `%s` does not exist.", req.Model), "NotFoundError", 404))
			return
		}
		if req.Priority != nil && s.o.schedulingPolicy != "priority" {
			writeJSON(w, http.StatusBadRequest, errorBody("priority scheduling is not enabled", "BadRequestError", 400))
			return
		}
		prompt := 0
		if chat {
			for _, m := range req.Messages {
				prompt += len(strings.Fields(fmt.Sprint(m.Content)))
			}
		} else {
			prompt = promptTokens(req.Prompt)
		}
		n := 16
		if req.MaxTokens != nil {
			n = *req.MaxTokens
		}
		lbl := []string{s.o.servedName, "0"}
		// With --max-num-seqs, that many sequences run at once and the others wait, as in
		// vLLM's scheduler: an engine's capacity, for the replica benchmarks.
		queued := time.Now()
		if s.seqs != nil {
			s.m.waiting.WithLabelValues(lbl...).Inc()
			select {
			case s.seqs <- struct{}{}:
				s.m.waiting.WithLabelValues(lbl...).Dec()
				defer func() { <-s.seqs }()
			case <-r.Context().Done():
				s.m.waiting.WithLabelValues(lbl...).Dec()
				return
			}
		}
		s.m.running.WithLabelValues(lbl...).Inc()
		defer s.m.running.WithLabelValues(lbl...).Dec()
		s.m.queue.WithLabelValues(lbl...).Observe(time.Since(queued).Seconds())
		s.mu.Lock()
		s.nextID++
		id := fmt.Sprintf("%s-fake%d", map[bool]string{true: "chatcmpl", false: "cmpl"}[chat], s.nextID)
		s.mu.Unlock()

		say := words
		if s.echo && chat && len(req.Messages) > 0 { // the last message's words, as they came
			if w := strings.Fields(fmt.Sprint(req.Messages[len(req.Messages)-1].Content)); len(w) > 0 {
				say = w
			}
		}
		var text strings.Builder
		var ttft time.Duration
		flusher, _ := w.(http.Flusher)
		if req.Stream {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			if chat {
				sse(w, flusher, chunk(id, s.o.servedName, chat, map[string]any{"role": "assistant", "content": ""}, nil))
			}
		}
		last := time.Now()
		for i := 0; i < n; i++ {
			if s.tokenDelay > 0 {
				select {
				case <-time.After(s.tokenDelay):
				case <-r.Context().Done():
					return
				}
			}
			tok := say[i%len(say)] + " "
			text.WriteString(tok)
			now := time.Now()
			if i == 0 {
				ttft = now.Sub(start)
				s.m.ttft.WithLabelValues(lbl...).Observe(ttft.Seconds())
			} else {
				s.m.itl.WithLabelValues(lbl...).Observe(now.Sub(last).Seconds())
			}
			last = now
			if req.Stream {
				var delta any = map[string]any{"content": tok}
				if !chat {
					delta = tok
				}
				sse(w, flusher, chunk(id, s.o.servedName, chat, delta, nil))
			}
		}
		usage := map[string]int{"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
		s.m.promptTokens.WithLabelValues(lbl...).Add(float64(prompt))
		s.m.generationTokens.WithLabelValues(lbl...).Add(float64(n))
		s.m.success.WithLabelValues(s.o.servedName, "0", "length").Inc()
		s.m.e2e.WithLabelValues(lbl...).Observe(time.Since(start).Seconds())
		s.m.promptLen.WithLabelValues(lbl...).Observe(float64(prompt))
		s.m.genLength.WithLabelValues(lbl...).Observe(float64(n))
		if req.Stream {
			finish := "length"
			if chat {
				sse(w, flusher, chunk(id, s.o.servedName, chat, map[string]any{}, &finish))
			} else {
				sse(w, flusher, chunk(id, s.o.servedName, chat, "", &finish))
			}
			if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
				c := chunk(id, s.o.servedName, chat, nil, nil)
				c["choices"] = []any{}
				c["usage"] = usage
				sse(w, flusher, c)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			if flusher != nil {
				flusher.Flush()
			}
			return
		}
		choice := map[string]any{"index": 0, "finish_reason": "length"}
		object := "text_completion"
		if chat {
			choice["message"] = map[string]any{"role": "assistant", "content": text.String()}
			object = "chat.completion"
		} else {
			choice["text"] = text.String()
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "object": object, "created": start.Unix(), "model": s.o.servedName,
			"choices": []any{choice}, "usage": usage, "system_fingerprint": s.o.fingerprint(),
		})
	}
}

func chunk(id, model string, chat bool, delta any, finish *string) map[string]any {
	choice := map[string]any{"index": 0, "finish_reason": finish}
	object := "text_completion"
	if chat {
		object = "chat.completion.chunk"
		choice["delta"] = delta
	} else {
		choice["text"] = delta
	}
	return map[string]any{"id": id, "object": object, "created": time.Now().Unix(), "model": model, "choices": []any{choice}}
}

func sse(w io.Writer, f http.Flusher, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "data: %s\n\n", b)
	if f != nil {
		f.Flush()
	}
}
