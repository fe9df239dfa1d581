# Lists the nodes the Ray GCS knows, as one JSON array on stdout. Run by llm-agent with the
# Python interpreter of the ray executable's environment: python nodes.py GCS_ADDRESS TIMEOUT_S
import json
import sys

from ray._raylet import GcsClient

ALIVE = 0  # GcsNodeInfo.GcsNodeState.ALIVE

address, timeout = sys.argv[1], float(sys.argv[2])
client = GcsClient(address=address)
nodes = []
for info in client.get_all_node_info(timeout=timeout).values():
    nodes.append({
        "node_id": info.node_id.hex(),
        "address": info.node_manager_address,
        "hostname": info.node_manager_hostname,
        "alive": info.state == ALIVE,
        "head": bool(info.is_head_node),
    })
json.dump(nodes, sys.stdout)
