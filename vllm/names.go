package vllm

// MetricNames are the vLLM metric families that the agent, the Grafana dashboard and the
// alert rules in deploy/ rely on. Tests check that the dashboard and rules use no other vllm:
// names, that the test double exports all of them, and (issue 7) that a real vLLM does.
var MetricNames = []string{
	"vllm:num_requests_running",
	"vllm:num_requests_waiting",
	"vllm:kv_cache_usage_perc",
	"vllm:prompt_tokens_total",
	"vllm:generation_tokens_total",
	"vllm:time_to_first_token_seconds",
	"vllm:inter_token_latency_seconds",
	"vllm:e2e_request_latency_seconds",
	"vllm:request_queue_time_seconds",
}
