"""RAISE's agent with a real vision-language model: an OpenAI-compatible chat endpoint or a local transformers VLM.

`VLMAgent` asks a chat backend for structured JSON (one schema per role, as RAISE's own code does with pydantic
schemas) and maps the answers to the Agent interface. Backends implement one method,
`chat(system, text, image, schema) -> dict`:
- `OpenAIChat`: POST {base_url}/chat/completions (Ollama, vLLM, llama.cpp server, any OpenAI-compatible server) with
  `response_format` json_schema, a timeout per request and a bounded number of tries;
- `TransformersChat`: an image-text-to-text model loaded from a local folder (safetensors only, no remote code),
  its chat template, greedy decoding first and sampling on a retry.
`TransformersVerifier` reads P(yes) from such a model's next-token probabilities: a yes/no verifier for the
offline agent (`ShapesAgent(verifier=...)`) or a fitness reward (`VerifierReward(..., mode="prompt")`).
A reply that is not JSON, misses a required field, or is empty is retried; after `retries` tries the backend raises
`AgentError` (a ValueError) naming the last problem: never a hang, never a silently wrong answer.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

import torch

from accel.search.raise_agents import Analysis, Rewrite, Verdict


class AgentError(ValueError):
    """An agent backend failed after its bounded retries (timeout, bad HTTP status, malformed or empty answer)."""


class ChatBackend(Protocol):
    def chat(self, system: str, text: str, image: torch.Tensor | None, schema: dict) -> dict: ...


# --- JSON answers -----------------------------------------------------------------------------------------------


def conforms(value: Any, schema: dict) -> str | None:
    """Why `value` does not match a JSON schema of the subset the roles use (object / array / string / boolean /
    integer / number, required, enum), or None when it does."""
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in checks and (not isinstance(value, checks[kind]) or (kind in ("integer", "number")
                                                                    and isinstance(value, bool))):
        return f"expected {kind}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of {schema['enum']}"
    if kind == "object":
        for key in schema.get("required", []):
            if key not in value:
                return f"missing field {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value and (why := conforms(value[key], sub)):
                return f"{key}: {why}"
    if kind == "array":
        for k, item in enumerate(value):
            if why := conforms(item, schema.get("items", {})):
                return f"[{k}]: {why}"
    return None


def parse_json(text: str | None, schema: dict) -> dict:
    """The JSON object in a model's reply (the first {...} block: local models wrap it in prose or code fences),
    checked against the schema. Raises ValueError saying what is wrong."""
    if not text or not text.strip():
        raise ValueError("empty answer")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError(f"no JSON object in the answer {text[:80]!r}")
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg}) in the answer {text[:80]!r}") from None
    if why := conforms(value, schema):
        raise ValueError(f"the answer does not match the schema: {why}")
    return value


def png_data_url(image: torch.Tensor) -> str:
    """(3, H, W) in [0, 1] -> a data: URL of the PNG."""
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pil(image: torch.Tensor):
    from PIL import Image

    from accel.rewards.base import to_uint8

    return Image.fromarray(to_uint8(image[None])[0].numpy())


# --- backends ---------------------------------------------------------------------------------------------------


class OpenAIChat:
    """An OpenAI-compatible chat completions endpoint.

    Args:
        base_url: e.g. "http://localhost:11434/v1" (Ollama) or "http://localhost:8000/v1" (vLLM).
        model: the model's name at the endpoint (e.g. "mistral-small3.2:24b", RAISE's default agent).
        api_key: sent as a bearer token when given.
        timeout: seconds per request (connect and each read).
        retries: tries per call (>= 1) before AgentError; timeouts, connection errors, HTTP 429 / 5xx, malformed,
            empty or schema-violating answers are retried, other HTTP errors are not.
        backoff: seconds before the second try, doubled after each.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, temperature: float = 0.0, max_tokens: int = 1024):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not (timeout > 0 and isinstance(retries, int) and retries >= 1):
            raise ValueError(f"need timeout > 0 and retries >= 1, got timeout={timeout}, retries={retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, retries
        self.backoff, self.temperature, self.max_tokens = backoff, temperature, max_tokens
        self.requests = 0  # HTTP requests made (tries included)

    def chat(self, system: str, text: str, image: torch.Tensor | None, schema: dict) -> dict:
        content: list[dict] = [{"type": "text", "text": text}]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": png_data_url(image)}})
        body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": schema.get("title", "answer"), "schema": schema}}}
        problem = "no try made"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post(body)
                return parse_json(self._content(reply), schema)
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:
                    break  # the request itself is wrong: retrying cannot help
            except (TimeoutError, socket.timeout):
                problem = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as e:
                problem = f"cannot reach the endpoint ({e.reason})"
            except ValueError as e:
                problem = str(e)
        raise AgentError(f"agent endpoint {self.url} (model {self.model!r}) failed after {attempt + 1} "
                         f"tr{'y' if attempt == 0 else 'ies'}: {problem}")

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        self.requests += 1
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"the endpoint's response is not JSON: {raw[:80]!r}") from None

    @staticmethod
    def _content(reply: dict) -> str | None:
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"not a chat completion: {str(reply)[:80]}") from None


def load_local_vlm(path: str, device: str | None = None, dtype: torch.dtype | None = None):
    """(model, processor) of an image-text-to-text model in a local folder: offline, safetensors only, no remote
    code."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False,
        **({"dtype": dtype} if dtype is not None else {})).eval()
    return (model.to(device) if device is not None else model), processor


def _chat_inputs(processor, model, system: str | None, text: str, image: torch.Tensor | None):
    """The processor's chat-template inputs for one user turn (an optional image, then the text)."""
    content: list[dict] = ([{"type": "image", "image": _pil(image)}] if image is not None else [])
    content.append({"type": "text", "text": text})
    messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + \
        [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt").to(model.device)


class TransformersChat:
    """A local vision-language model (transformers' image-text-to-text models: Qwen2.5-VL, Gemma 3, LLaVA,
    Mistral Small 3.x, ...) loaded from a folder, offline, safetensors only, no remote code.

    The schema is stated in the prompt (local generation has no constrained decoding here); the first try decodes
    greedily, retries sample (seeded, without touching the global random state), and after `retries` tries a reply
    that still is not valid JSON raises AgentError.
    """

    def __init__(self, path: str, device: str | None = None, dtype: torch.dtype | None = None,
                 max_new_tokens: int = 512, retries: int = 3, seed: int = 0):
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        self.model, self.processor = load_local_vlm(path, device, dtype)
        self.max_new_tokens, self.retries, self.seed = max_new_tokens, retries, seed

    @torch.no_grad()
    def chat(self, system: str, text: str, image: torch.Tensor | None, schema: dict) -> dict:
        text = f"{text}\n\nAnswer with one JSON object only, matching this JSON schema: {json.dumps(schema)}"
        inputs = _chat_inputs(self.processor, self.model, system, text, image)
        problem = "no try made"
        for attempt in range(self.retries):
            sampling = {"do_sample": True, "temperature": 0.7} if attempt else {"do_sample": False}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + attempt)
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
            reply = self.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            try:
                return parse_json(reply, schema)
            except ValueError as e:
                problem = str(e)
        raise AgentError(f"the local VLM gave no valid JSON answer in {self.retries} tries: {problem}")


class TransformersVerifier:
    """P(yes) from a local VLM's next-token probabilities: the yes/no verifier role NVILA-Lite-2B-Verifier plays in
    RAISE's fitness, for any image-text-to-text model in a folder.

    P(yes) = p(yes tokens) / (p(yes tokens) + p(no tokens)) at the first answer token, the question put in
    `template`. (RAISE scores P(yes) when the answer is yes and -P(no) otherwise: the same order.) Usable as an
    agent's Verifier (`verifier(image, question)`) and as a Reward through
    `accel.rewards.VerifierReward(verifier, mode="prompt")` (a prompt is then asked as a question).
    """

    def __init__(self, path: str, device: str | None = None, dtype: torch.dtype | None = None,
                 template: str = "{question} Answer yes or no.", yes: tuple[str, ...] = ("yes", "Yes"),
                 no: tuple[str, ...] = ("no", "No")):
        if "{question}" not in template:
            raise ValueError("template must contain {question}")
        self.model, self.processor = load_local_vlm(path, device, dtype)
        self.template = template
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.yes, self.no = (sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})
                             for words in (yes, no))
        if set(self.yes) & set(self.no):
            raise ValueError(f"the yes and no words share a first token ({set(self.yes) & set(self.no)})")

    def __call__(self, image: torch.Tensor, question: str) -> float:
        return float(self.probabilities(image[None], [question])[0])

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """P(yes) (B,) for images (B, 3, H, W) in [0, 1] and one question each (one forward per pair)."""
        out = []
        for image, question in zip(images, questions):
            inputs = _chat_inputs(self.processor, self.model, None, self.template.format(question=question), image)
            logits = self.model(**inputs).logits[0, -1].float()  # (vocab,)
            yes, no = torch.logsumexp(logits[self.yes], 0), torch.logsumexp(logits[self.no], 0)
            out.append(torch.sigmoid(yes - no))
        return torch.stack(out).cpu()


# --- the agent --------------------------------------------------------------------------------------------------

_ANALYZE = {
    "title": "analysis", "type": "object", "required": ["requirements", "ending"],
    "properties": {
        "requirements": {"type": "array", "items": {
            "type": "object", "required": ["requirement", "question", "satisfied"],
            "properties": {"requirement": {"type": "string"}, "question": {"type": "string"},
                           "satisfied": {"type": "boolean"}}}},
        "ending": {"type": "boolean"}}}
_REWRITE = {
    "title": "rewrite", "type": "object",
    "required": ["adjusted_prompt", "single_editing_prompt", "comprehensive_editing_prompt", "planned_edits"],
    "properties": {"adjusted_prompt": {"type": "string"}, "single_editing_prompt": {"type": "string"},
                   "comprehensive_editing_prompt": {"type": "string"},
                   "planned_edits": {"type": "array", "items": {"type": "string"}}}}
_VERIFY = {
    "title": "verdict", "type": "object", "required": ["answers"],
    "properties": {"answers": {"type": "array", "items": {
        "type": "object", "required": ["question", "answer"],
        "properties": {"question": {"type": "string"}, "answer": {"type": "string", "enum": ["yes", "no"]},
                       "explanation": {"type": "string"}}}}}}

_SYSTEM = {
    "analyze": "You analyze a text-to-image prompt. List its atomic requirements, explicit and implicit, each with "
               "one yes/no question that checks it, and say for the image shown (if any) whether each is "
               "satisfied. Set ending to true only if everything unmet is a minor aspect the prompt does not "
               "require (lighting, mood, lens, composition).",
    "rewrite": "You rewrite a text-to-image prompt so that a model meets the unmet requirements: a significantly "
               "different adjusted prompt (subject, action, style, context; 30 to 80 words; positive wording), and "
               "edit instructions for the current image: atomic planned edits, the single most important one, and "
               "one comprehensive edit that merges them.",
    "verify": "You verify an image against yes/no questions. Answer each with yes or no and a short explanation "
              "grounded in what is visible; answer no when it is ambiguous or cannot be verified.",
}


class VLMAgent:
    """RAISE's analyzer, rewriter and verifier as three structured-output calls to one chat backend.

    The verifier's yes/no answers become P(yes) of 1 or 0 (a chat endpoint gives no token probabilities). A reply
    that is valid JSON but unusable (no requirements, an empty prompt, a different number of answers than
    questions) is asked again, up to `retries` times, then raises AgentError; the backend retries transport and
    format failures on its own.
    """

    def __init__(self, backend: ChatBackend, retries: int = 2):
        if not callable(getattr(backend, "chat", None)):
            raise ValueError("backend must have chat(system, text, image, schema) -> dict (OpenAIChat, "
                             "TransformersChat)")
        if not isinstance(retries, int) or retries < 1:
            raise ValueError(f"retries must be an int >= 1, got {retries!r}")
        self.backend, self.retries = backend, retries

    def _ask(self, role: str, text: str, image: torch.Tensor | None, schema: dict, usable) -> dict:
        problem = ""
        for _ in range(self.retries):
            reply = self.backend.chat(_SYSTEM[role], text, image, schema)
            problem = usable(reply)
            if not problem:
                return reply
        raise AgentError(f"the {role} role gave no usable answer in {self.retries} tries: {problem}")

    def analyze(self, prompt: str, image: torch.Tensor | None, verdict: Verdict | None) -> Analysis:
        text = f"Prompt: {prompt}"
        if image is None:
            text += "\nNo image yet: mark every requirement unsatisfied."
        elif verdict is not None and verdict.explanations:
            text += "\nThe verifier said about this image:\n" + "\n".join(verdict.explanations)
        reply = self._ask("analyze", text, image, _ANALYZE,
                          lambda r: "" if r["requirements"] else f"no requirements found in {prompt!r}")
        reqs = reply["requirements"]
        unsatisfied = [k for k, r in enumerate(reqs) if image is None or not r["satisfied"]]
        return Analysis([r["requirement"] for r in reqs], [r["question"] for r in reqs], unsatisfied,
                        ending=bool(reply["ending"]) and image is not None)

    def rewrite(self, prompt: str, analysis: Analysis, editing: bool) -> Rewrite:
        unmet = [analysis.requirements[k] for k in analysis.unsatisfied]
        text = f"Prompt: {prompt}\nUnmet requirements:\n" + "\n".join(f"- {r}" for r in unmet)
        reply = self._ask("rewrite", text, None, _REWRITE,
                          lambda r: "" if r["adjusted_prompt"].strip() else "an empty adjusted prompt")
        if not editing:
            return Rewrite(reply["adjusted_prompt"])
        others = [e for e in reply["planned_edits"] if e and e != reply["single_editing_prompt"]]
        return Rewrite(reply["adjusted_prompt"],
                       [reply["single_editing_prompt"], reply["comprehensive_editing_prompt"], *others])

    def verify(self, image: torch.Tensor, analysis: Analysis) -> Verdict:
        text = "Questions:\n" + "\n".join(f"{k + 1}. {q}" for k, q in enumerate(analysis.questions))
        n = len(analysis.questions)
        reply = self._ask("verify", text, image, _VERIFY, lambda r: "" if len(r["answers"]) == n else
                          f"{len(r['answers'])} answers to {n} questions")
        answers = reply["answers"]
        probs = [1.0 if a["answer"] == "yes" else 0.0 for a in answers]
        notes = [f"{a['question']}: {a['answer']} ({a.get('explanation', '')})" for a in answers]
        return Verdict(probs, all(p == 1.0 for p in probs), notes)
