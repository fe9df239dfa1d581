# Observer of the time-to-ready benchmark: waits for the GCS at ADDRESS, then polls it every
# 50 ms and prints "ALL <unix time>" when N nodes are alive.  python observe.py ADDRESS N
import socket
import sys
import time

from ray._raylet import GcsClient

address, want = sys.argv[1], int(sys.argv[2])
host, port = address.rsplit(":", 1)
while True:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
client = GcsClient(address=address)
while True:
    nodes = client.get_all_node_info(timeout=5).values()
    if sum(1 for n in nodes if n.state == 0) >= want:
        print("ALL", time.time(), flush=True)
        break
    time.sleep(0.05)
