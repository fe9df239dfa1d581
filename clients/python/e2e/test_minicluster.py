"""End-to-end: the official OpenAI SDK, through llm_agent_client, against a job on the mini-cluster.

Run by e2e/client_test.go (make e2e), which starts the job and sets:
  LLM_AGENT_E2E_STATE_DIR    the job's state directory
  LLM_AGENT_E2E_KILL_ENGINE  a command that kills the job's engine (the agent restarts it)
"""

import asyncio
import os
import subprocess
import time

import openai

import llm_agent_client as lac

STATE = os.environ["LLM_AGENT_E2E_STATE_DIR"]
KILL = os.environ["LLM_AGENT_E2E_KILL_ENGINE"]
MESSAGES = [{"role": "user", "content": "hello cluster"}]


def test_chat_completion_streaming_models_and_a_wrong_key():
    conn = lac.wait_ready(state_dir=STATE, timeout=120)
    assert lac.health(state_dir=STATE) == ("ready", "")
    client = lac.connect(state_dir=STATE, max_retries=0)
    model = lac.model(state_dir=STATE)
    assert lac.models(state_dir=STATE) == [model]

    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
    assert chat.choices[0].message.content
    assert chat.usage.completion_tokens == 4

    comp = client.completions.create(model=model, prompt="hello", max_tokens=3)
    assert comp.choices[0].text and comp.usage.completion_tokens == 3

    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, stream=True) if c.choices]
    assert len([p for p in pieces if p]) == 5

    wrong = openai.OpenAI(base_url=conn.base_url, api_key="sk-not-the-key", max_retries=0)
    try:
        wrong.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass


def test_async_client_streams():
    async def go():
        client = lac.connect_async(state_dir=STATE, max_retries=0)
        await lac.wait_ready_async(state_dir=STATE, timeout=120)
        stream = await client.chat.completions.create(model=lac.model(state_dir=STATE), messages=MESSAGES, max_tokens=3, stream=True)
        n = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        await client.close()
        return n

    assert asyncio.run(go()) == 3


def test_a_restart_survived_with_wait_ready():
    lac.wait_ready(state_dir=STATE, timeout=120)
    client = lac.connect(state_dir=STATE, max_retries=0)
    model = lac.model(state_dir=STATE)
    subprocess.run(KILL, shell=True, check=True)
    deadline = time.monotonic() + 60
    while lac.health(state_dir=STATE)[0] == "ready":
        assert time.monotonic() < deadline, "the job never noticed its engine was killed"
        time.sleep(0.1)
    assert lac.health(state_dir=STATE)[0] in ("restarting", "starting", "unreachable")
    conn = lac.wait_ready(state_dir=STATE, timeout=120, poll=0.2)
    assert conn.ready
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
    assert chat.usage.completion_tokens == 2
