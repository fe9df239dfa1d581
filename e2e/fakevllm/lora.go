package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// loraModule is one --lora-modules value: NAME=PATH, or vLLM's JSON form.
type loraModule struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Base string `json:"base_model_name,omitempty"`
}

// parseLoRAModule reads a --lora-modules value as vLLM's LoRAParserAction does.
func parseLoRAModule(v string) (loraModule, error) {
	if name, path, ok := strings.Cut(v, "="); ok && !strings.Contains(v, ",") {
		return loraModule{Name: name, Path: path}, nil
	}
	var m loraModule
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("vllm serve: error: Invalid JSON format for --lora-modules: %s", v)
	}
	if m.Name == "" || m.Path == "" {
		return m, fmt.Errorf("vllm serve: error: Invalid fields for --lora-modules: %s", v)
	}
	return m, nil
}

// adapterRank reads an adapter directory's rank, as vLLM does when it loads one.
func adapterRank(path string) (int, error) {
	b, err := os.ReadFile(filepath.Join(path, "adapter_config.json"))
	if err != nil {
		return 0, fmt.Errorf("No adapter found for %s", path)
	}
	var cfg struct {
		R int `json:"r"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.R <= 0 {
		return 0, fmt.Errorf("invalid adapter_config.json in %s", path)
	}
	return cfg.R, nil
}

// serves tells whether name is the model or one of its adapters.
func (s *server) serves(name string) bool {
	if name == s.o.servedName {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.adapters[name]
	return ok
}

// loadAdapter and unloadAdapter answer as vLLM's runtime LoRA routes do.
func (s *server) loadAdapter(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"lora_name"`
		Path string `json:"lora_path"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" || req.Path == "" {
		writeJSON(w, http.StatusBadRequest, errorBody("Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError", 400))
		return
	}
	if !s.o.enableLoRA {
		writeJSON(w, http.StatusBadRequest, errorBody("LoRA is not enabled in this engine.", "BadRequestError", 400))
		return
	}
	s.mu.Lock()
	_, dup := s.adapters[req.Name]
	s.mu.Unlock()
	if dup {
		writeJSON(w, http.StatusBadRequest, errorBody(fmt.Sprintf("The lora adapter '%s' has already been loaded.", req.Name), "InvalidUserInput", 400))
		return
	}
	rank, err := adapterRank(req.Path)
	if err == nil && rank > s.o.maxLoRARank {
		err = fmt.Errorf("LoRA rank %d is greater than max_lora_rank %d", rank, s.o.maxLoRARank)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error(), "BadRequestError", 400))
		return
	}
	s.mu.Lock()
	s.adapters[req.Name] = req.Path
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", req.Name)
}

func (s *server) unloadAdapter(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"lora_name"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	s.mu.Lock()
	_, ok := s.adapters[req.Name]
	delete(s.adapters, req.Name)
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusNotFound, errorBody(fmt.Sprintf("The lora adapter '%s' cannot be found.", req.Name), "NotFoundError", 404))
		return
	}
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "Success: LoRA adapter '%s' removed successfully.", req.Name)
}

// runtimeLoRA is vLLM's switch for the runtime routes, read as vLLM reads a boolean variable.
func runtimeLoRA() bool {
	v := strings.ToLower(os.Getenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING"))
	return v == "1" || v == "true"
}
