#!/usr/bin/env python3
"""The SDK test: the official OpenAI and Anthropic Python SDKs against a live `tollgate dev`.

Starts the dev broker on a free loopback port with a fresh data dir (mock provider for every
model), runs the quick start it prints *verbatim* in bash, then drives both SDKs through plain
and streamed calls, checking answers and usage. Prints 'N passed, N failed' and exits non-zero
on any failure.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request

RESULTS = []


def check(name):
    def wrap(fn):
        def run(*a):
            try:
                fn(*a)
                RESULTS.append((name, None))
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                RESULTS.append((name, e))
                print(f"FAIL {name}: {e}")
                traceback.print_exc()
        return run
    return wrap


def start_dev(binary, data_dir, policies):
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    out = open(os.path.join(data_dir, "stdout.txt"), "w")
    err = open(os.path.join(data_dir, "stderr.txt"), "w")
    proc = subprocess.Popen(
        [binary, "dev", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--policies", policies],
        stdout=out, stderr=err, env=env,
    )
    deadline = time.time() + 60
    state = os.path.join(data_dir, "dev.json")
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("tollgate dev exited: " + open(os.path.join(data_dir, "stderr.txt")).read())
        text = open(os.path.join(data_dir, "stdout.txt")).read()
        if os.path.exists(state) and "In another terminal" in text:
            return proc, json.load(open(state))["url"]
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tollgate dev did not start within 60 s")


def exchange(binary, base, data_dir, namespace="demo", service_account="sdk"):
    wl = subprocess.check_output(
        [binary, "dev", "workload-token", "--namespace", namespace, "--service-account", service_account, "--data-dir", data_dir],
        text=True,
    ).strip()
    body = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "subject_token": wl,
    }).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/v1/token", data=body)) as r:
            return json.load(r)["access_token"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"token exchange for {namespace}:{service_account} refused: {e.code} {e.read().decode(errors='replace')}") from None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--policies", default=os.path.join(os.path.dirname(__file__), "..", "..", "policies"))
    args = ap.parse_args()
    import anthropic
    import openai

    data_dir = tempfile.mkdtemp(prefix="tollgate-sdk-")
    proc, base = start_dev(args.binary, data_dir, os.path.abspath(args.policies))
    try:
        quick_start = open(os.path.join(data_dir, "stdout.txt")).read().split("In another terminal:", 1)[1]

        @check("quick start printed by `tollgate dev` runs verbatim")
        def _():
            env = dict(os.environ)
            env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", quick_start], capture_output=True, text=True, env=env, timeout=120)
            assert r.returncode == 0, r.stderr
            assert "Mock reply" in r.stdout or "mock" in r.stdout.lower(), r.stdout
            # two curl answers and one SDK answer
            assert r.stdout.count('"usage"') >= 2, r.stdout
            assert '"group_by":"subject"' in r.stdout, r.stdout  # the admin API answered the spend report
        _()

        token = exchange(args.binary, base, data_dir)
        oa = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0)
        an = anthropic.Anthropic(base_url=base, api_key=token, max_retries=0)

        @check("openai: chat completion")
        def _():
            r = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello to the SDK test"}])
            assert r.choices[0].message.content, r
            assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage
        _()

        @check("openai: streamed chat completion, no usage chunk unless asked")
        def _():
            chunks = list(oa.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream please"}]))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text, chunks
            assert all(c.usage is None for c in chunks), "usage chunk leaked to a client that did not ask"
        _()

        @check("openai: streamed chat completion with include_usage")
        def _():
            chunks = list(oa.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": "stream with usage"}]))
            usage = [c.usage for c in chunks if c.usage is not None]
            assert len(usage) == 1 and usage[0].completion_tokens > 0, chunks[-2:]
        _()

        @check("openai: embeddings")
        def _():
            r = oa.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
            assert len(r.data) == 2 and len(r.data[0].embedding) > 0
            assert r.usage.prompt_tokens > 0
        _()

        @check("openai: completions (legacy)")
        def _():
            r = oa.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=20)
            assert r.choices[0].text
        _()

        @check("openai: responses API, plain and streamed")
        def _():
            r = oa.responses.create(model="gpt-4o-mini", input="hello responses")
            assert r.output_text, r
            events = list(oa.responses.create(model="gpt-4o-mini", input="stream responses", stream=True))
            assert any(e.type == "response.completed" for e in events), [e.type for e in events]
        _()

        @check("openai: models list shows the token's models")
        def _():
            ids = {m.id for m in oa.models.list()}
            assert {"gpt-4o-mini", "claude-haiku-4-5"} <= ids, ids
        _()

        @check("openai: an unknown model is refused with 404 model_not_found in OpenAI shape")
        def _():
            t = exchange(args.binary, base, data_dir)
            narrow = openai.OpenAI(base_url=base + "/v1", api_key=t, max_retries=0)
            try:
                narrow.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
                raise AssertionError("expected an error")
            except openai.NotFoundError as e:
                assert e.body["code"] == "model_not_found", e.body
        _()

        @check("anthropic: message")
        def _():
            r = an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hello Claude"}])
            assert r.content[0].text and r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r
        _()

        @check("anthropic: streamed message")
        def _():
            with an.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Stream, Claude"}]) as s:
                text = "".join(s.text_stream)
                final = s.get_final_message()
            assert text and final.usage.output_tokens > 0, final
        _()

        @check("anthropic: bad token is refused in Anthropic's error shape")
        def _():
            bad = anthropic.Anthropic(base_url=base, api_key="not-a-token", max_retries=0)
            try:
                bad.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
                raise AssertionError("expected 401")
            except anthropic.AuthenticationError as e:
                assert e.body["type"] == "error" and e.body["error"]["code"] == "invalid_token", e.body
        _()
        @check("README incident runbook runs verbatim: the workload is cut off and the audit log verifies")
        def _():
            app = openai.OpenAI(base_url=base + "/v1", api_key=exchange(args.binary, base, data_dir, service_account="app"), max_retries=0)
            app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "before"}])
            time.sleep(1)  # the spend row is written in the background
            readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
            block = readme.split("<!-- runbook:start -->", 1)[1].split("<!-- runbook:end -->", 1)[0]
            script = block.split("```sh", 1)[1].rsplit("```", 1)[0]
            work = tempfile.mkdtemp(prefix="tollgate-runbook-")
            os.symlink(data_dir, os.path.join(work, ".tollgate-dev"))
            env = dict(os.environ)
            env["PATH"] = os.path.dirname(os.path.abspath(args.binary)) + os.pathsep + env["PATH"]
            env["TOLLGATE_URL"] = base
            env.pop("TOLLGATE_ADMIN_TOKEN", None)
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env, cwd=work, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "system:serviceaccount:demo:app" in r.stdout and "revoked (subject)" in r.stdout, r.stdout
            assert "ok: the audit log is intact" in r.stdout, r.stdout
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "others still served"}])
            try:
                app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}])
                raise AssertionError("the revoked workload was served")
            except openai.AuthenticationError as e:
                assert e.status_code == 401, e
        _()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    failed = [n for n, e in RESULTS if e is not None]
    print(f"sdk: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    if proc.returncode not in (0, None):
        print("tollgate dev exited with", proc.returncode, open(os.path.join(data_dir, "stderr.txt")).read()[-3000:])
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
