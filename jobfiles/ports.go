package jobfiles

// Ports are the TCP ports of one job on one node. The head chooses them and publishes them in
// the rendezvous file; each worker uses the published per-node ports unless they are busy there.
type Ports struct {
	API                int `json:"api"`
	Engine             int `json:"engine,omitempty"`
	Metrics            int `json:"metrics"`
	RayGCS             int `json:"ray_gcs"`
	Dashboard          int `json:"ray_dashboard"`
	RayClient          int `json:"ray_client"`
	NodeManager        int `json:"ray_node_manager"`
	ObjectManager      int `json:"ray_object_manager"`
	DashboardAgent     int `json:"ray_dashboard_agent"`
	DashboardAgentGRPC int `json:"ray_dashboard_agent_grpc"`
	RayMetrics         int `json:"ray_metrics_export"`
	RuntimeEnvAgent    int `json:"ray_runtime_env_agent"`
	WorkerMin          int `json:"ray_worker_min"`
	WorkerMax          int `json:"ray_worker_max"`
	// EngineMaster is where the ranks of an engine across nodes without Ray meet (vLLM's
	// --master-port, on the head); EngineRPC is where each node's vLLM starts looking for free
	// ports for its own connections (VLLM_PORT). Both only with --launcher mp.
	EngineMaster int `json:"engine_master,omitempty"`
	EngineRPC    int `json:"engine_rpc,omitempty"`
}
