"""RAISE's VLM agent against a fake OpenAI-compatible endpoint on localhost: structured answers drive a refinement;
timeouts, malformed JSON, empty answers and HTTP errors give bounded retries and then a clear error."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from accel.search.raise_ import RefineInterrupted, refine
from accel.search.raise_agents import Analysis
from accel.search.raise_vlm import AgentError, OpenAIChat, VLMAgent, conforms, parse_json

from conftest import MeanPixel

PROMPT = "a photo of a red circle and a blue square"

GOOD = {
    "analysis": {"requirements": [{"requirement": "a red circle", "question": "is there a red circle?",
                                   "satisfied": False},
                                  {"requirement": "a blue square", "question": "is there a blue square?",
                                   "satisfied": True}], "ending": False},
    "rewrite": {"adjusted_prompt": "a photo of a blue square and a red circle",
                "single_editing_prompt": "a photo of a red circle",
                "comprehensive_editing_prompt": "a photo of a red circle and a blue square",
                "planned_edits": ["a photo of a red circle", "a photo of a blue square"]},
    "verdict": {"answers": [{"question": "is there a red circle?", "answer": "no", "explanation": "none seen"},
                            {"question": "is there a blue square?", "answer": "yes", "explanation": "top left"}]},
}


class Endpoint:
    """A fake chat-completions server. `script` is a list of behaviours used in turn (the last one repeats):
    "good" (the right answer for the role asked), ("raw", text) as the message content, ("body", bytes) as the
    whole HTTP body, ("status", code), ("sleep", seconds), ("json", dict) as the message content."""

    def __init__(self, script=("good",)):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                action = outer.script[min(len(outer.requests) - 1, len(outer.script) - 1)]
                kind, arg = (action, None) if isinstance(action, str) else action
                if kind == "sleep":
                    time.sleep(arg)
                    kind = "good"
                if kind == "status":
                    self.send_error(arg)
                    return
                role = body["response_format"]["json_schema"]["name"]
                content = {"good": lambda: json.dumps(GOOD[role]), "raw": lambda: arg,
                           "json": lambda: json.dumps(arg)}.get(kind, lambda: None)()
                raw = arg if kind == "body" else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def chat(endpoint, **kw):
    return OpenAIChat(endpoint.url, "fake-vlm", **({"timeout": 5.0, "retries": 3, "backoff": 0.0} | kw))


IMAGE = torch.rand(3, 32, 32)


def test_agent_roles_over_the_endpoint():
    with Endpoint() as ep:
        agent = VLMAgent(chat(ep, api_key="k"))
        analysis = agent.analyze(PROMPT, IMAGE, None)
        assert analysis.questions == ["is there a red circle?", "is there a blue square?"]
        assert analysis.unsatisfied == [0] and not analysis.ending
        assert agent.analyze(PROMPT, None, None).unsatisfied == [0, 1]  # nothing seen yet: nothing satisfied
        rewrite = agent.rewrite(PROMPT, analysis, editing=True)
        assert rewrite.prompt == GOOD["rewrite"]["adjusted_prompt"]
        assert rewrite.edits == ["a photo of a red circle", "a photo of a red circle and a blue square",
                                 "a photo of a blue square"]
        verdict = agent.verify(IMAGE, analysis)
        assert verdict.answers == [0.0, 1.0] and not verdict.all_satisfied and verdict.failed == [0]
    first = ep.requests[0]
    assert first["model"] == "fake-vlm" and first["response_format"]["type"] == "json_schema"
    assert first["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_refine_with_the_endpoint_agent(denoiser):
    with Endpoint() as ep:
        result = refine(denoiser, {"prompt": PROMPT, "num_inference_steps": 2}, MeanPixel(),
                        "raise:population=2:originals=1:edits=1", 4 * 2 * 2 * 2, VLMAgent(chat(ep)),
                        generator=torch.Generator().manual_seed(0))
    extra = result.trace.extra
    assert extra["rounds"] == 4 and extra["verifier_calls"] == 4 and extra["agent_calls"] == 8
    assert len(ep.requests) == 12  # one HTTP request per agent and verifier call: no retries needed
    assert any(c["prompt"] == "a photo of a red circle" and c["kind"] == "edit" for c in result.candidates)


def test_timeout_is_bounded():
    with Endpoint([("sleep", 2.0)]) as ep:
        backend = chat(ep, timeout=0.3, retries=2)
        start = time.perf_counter()
        with pytest.raises(AgentError, match=r"failed after 2 tries: no answer within 0.3 s"):
            backend.chat("s", "t", None, {"title": "verdict", "type": "object"})
        assert time.perf_counter() - start < 1.5 and backend.requests == 2


@pytest.mark.parametrize("bad, message", [
    (("raw", "sure! {\"answers\": [oops]}"), "malformed JSON"),
    (("raw", "I cannot see an image."), "no JSON object"),
    (("raw", ""), "empty answer"),
    (("raw", None), "empty answer"),
    (("body", b"<html>busy</html>"), "not JSON"),
    (("json", {"answer": "yes"}), "missing field 'answers'"),
    (("json", {"answers": [{"question": "q", "answer": "maybe"}]}), "not one of"),
])
def test_malformed_answers_are_retried_then_fail(bad, message):
    with Endpoint([bad, "good"]) as ep:  # one bad answer, then a good one: the retry recovers
        assert chat(ep).chat("s", "t", None, _verify_schema())["answers"][0]["answer"] == "no"
        assert len(ep.requests) == 2
    with Endpoint([bad]) as ep:
        with pytest.raises(AgentError, match=f"after 3 tries: .*{message}"):
            chat(ep).chat("s", "t", None, _verify_schema())
        assert len(ep.requests) == 3


def test_http_errors():
    with Endpoint([("status", 400)]) as ep:
        with pytest.raises(AgentError, match="after 1 try: HTTP 400"):
            chat(ep).chat("s", "t", None, _verify_schema())
        assert len(ep.requests) == 1  # a bad request is not retried
    with Endpoint([("status", 503), "good"]) as ep:
        chat(ep).chat("s", "t", None, _verify_schema())
        assert len(ep.requests) == 2
    with Endpoint() as ep:
        url = ep.url
    with pytest.raises(AgentError, match="cannot reach the endpoint"):
        OpenAIChat(url, "m", timeout=1.0, retries=2, backoff=0.0).chat("s", "t", None, _verify_schema())


def test_unusable_answers_and_bad_arguments():
    wrong_count = {"answers": [{"question": "q", "answer": "yes"}]}  # one answer to two questions
    with Endpoint([("json", wrong_count)]) as ep:
        agent = VLMAgent(chat(ep, retries=1), retries=2)
        with pytest.raises(AgentError, match="verify role gave no usable answer in 2 tries: 1 answers to 2"):
            agent.verify(IMAGE, Analysis(["a", "b"], ["is there a?", "is there b?"], [0, 1]))
    with pytest.raises(ValueError, match="http"):
        OpenAIChat("localhost:1234", "m")
    with pytest.raises(ValueError, match="retries"):
        OpenAIChat("http://localhost:1", "m", retries=0)
    with pytest.raises(ValueError, match="chat"):
        VLMAgent(object())


def test_an_agent_failure_mid_run_keeps_the_best(denoiser):
    # Rounds 1 takes 3 calls (analyze, rewrite, verify); the endpoint then goes down for good.
    with Endpoint(["good", "good", "good", ("status", 500)]) as ep:
        with pytest.raises(RefineInterrupted, match="round 2") as info:
            refine(denoiser, {"prompt": PROMPT, "num_inference_steps": 2}, MeanPixel(),
                   "raise:population=2:originals=1:edits=1", 4 * 2 * 2 * 2, VLMAgent(chat(ep, retries=2)),
                   generator=torch.Generator().manual_seed(0))
    assert isinstance(info.value.__cause__, AgentError)
    assert len(info.value.result.candidates) == 2 and info.value.result.best.shape == (1, 3, 32, 32)


def _verify_schema():
    from accel.search.raise_vlm import _VERIFY

    return _VERIFY


def test_json_helpers():
    schema = _verify_schema()
    assert parse_json('```json\n{"answers": []}\n```', schema) == {"answers": []}
    assert conforms({"answers": [{"question": "q", "answer": 1}]}, schema) == "answers: [0]: answer: expected " \
                                                                               "string, got int"
