#!/usr/bin/env python3
"""The steady client of the service handover test (e2e/service_test.go).

    steady-client.py tunnel OUT STOP   # plain OpenAI SDK at $OPENAI_BASE_URL, key in $KEY_FILE
    steady-client.py service OUT STOP  # llm_agent_client.connect(service=$SERVICE)

One chat completion every $INTERVAL seconds, streamed every other time, with the SDK's own
retries off, until the file STOP exists; every result is a JSON line in OUT.
"""

import json
import os
import sys
import time

import openai

import llm_agent_client as lac


def main():
    mode, out, stop = sys.argv[1:4]
    interval = float(os.environ.get("INTERVAL", "0.25"))
    if mode == "tunnel":
        with open(os.environ["KEY_FILE"]) as f:
            key = f.read().strip()
        client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=key, max_retries=0, timeout=30)
    else:
        client = lac.connect(service=os.environ["SERVICE"], max_retries=0, timeout=30)
    model = os.environ["MODEL"]
    i = 0
    with open(out, "a", encoding="utf-8") as f:
        while not os.path.exists(stop):
            t0 = time.time()
            rec = {"t": t0, "i": i, "stream": i % 2 == 1}
            try:
                msgs = [{"role": "user", "content": "hello %d" % i}]
                if rec["stream"]:
                    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=4, stream=True))
                    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
                    rec["ok"] = bool(finished)
                    if not finished:
                        rec["error"] = "the stream ended without a finish reason (cut)"
                else:
                    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4)
                    rec["ok"] = bool(r.choices)
            except Exception as e:  # every failure is recorded, none is retried
                rec["ok"] = False
                rec["error"] = "%s: %s" % (type(e).__name__, e)
            rec["latency"] = time.time() - t0
            f.write(json.dumps(rec) + "\n")
            f.flush()
            i += 1
            time.sleep(max(0.0, interval - rec["latency"]))


if __name__ == "__main__":
    main()
