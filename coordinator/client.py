"""The one client for the coordinator's REST API: the CLI, the demo, the benchmarks and the tests use it.

    >>> api = CoordinatorClient("http://127.0.0.1:8470", token=admin_token)
    >>> campaign = api.post_campaign(spec)          # a dict as JSON, or TOML text as it is
    >>> api.campaign(campaign["id"])["status"]
    'active'
    >>> api.pause(campaign["id"])
    Traceback (most recent call last):
    ...
    coordinator.client.ApiError: 409 conflict: campaign demo is paused; it can't become paused

Blocking, on the standard library's urllib: for scripts, processes and tests (the dashboard's
JavaScript is the other client). Answers are the JSON the server sends (docs in /api/openapi.json);
list endpoints come back as the list itself. An error status raises `ApiError` carrying the status
and the server's error code and message; a server that can't be reached raises `OSError`
(urllib's `URLError`), so the two never mix in one `except`.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["JSON", "ApiError", "CoordinatorClient"]

JSON = dict[str, Any]


class ApiError(Exception):
    """The coordinator refused a request: `status` is the HTTP status, `code` and `message` its own words."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    @property
    def problems(self) -> list[str]:
        """Every problem the server found in a campaign spec (400 invalid_spec), else nothing."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        problems = error.get("problems", []) if isinstance(error, dict) else []
        return [str(problem) for problem in problems]


class CoordinatorClient:
    """A coordinator's REST API at `base_url` (e.g. http://127.0.0.1:8470), as `token`'s holder."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def with_token(self, token: str | None) -> CoordinatorClient:
        """The same server, as another caller (None: anonymous)."""
        return CoordinatorClient(self.base_url, token, timeout=self.timeout)

    # --- any request ---------------------------------------------------------------------------

    def call(
        self, method: str, path: str, *, body: object = None, toml: str | None = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, decoded body) of any request, error statuses included: for tests of the API itself.

        `body` goes as JSON, `toml` as application/toml. A JSON answer is decoded, any other is text
        (None when empty).
        """
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if toml is not None:
            headers["Content-Type"] = "application/toml"
            data = toml.encode()
        elif body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, _decode(response.headers.get_content_type(), response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _decode(error.headers.get_content_type(), error.read())

    def request(self, method: str, path: str, *, body: object = None, toml: str | None = None) -> Any:
        """The decoded body of a successful request; `ApiError` for an error status."""
        status, answer = self.call(method, path, body=body, toml=toml)
        if status >= 400:
            raise _api_error(status, answer)
        return answer

    def _get(self, path: str) -> Any:
        return self.request("GET", path)

    def _post(self, path: str, body: object = None) -> Any:
        return self.request("POST", path, body=body)

    # --- server --------------------------------------------------------------------------------

    def health(self, *, timeout: float | None = None) -> JSON:
        """GET /api/health: up, release version, campaigns, volunteers connected."""
        status, answer = self.call("GET", "/api/health", timeout=timeout)
        if status >= 400:
            raise _api_error(status, answer)
        return dict(answer)

    def stats(self) -> JSON:
        return dict(self._get("/api/stats"))

    def server(self) -> JSON:
        """GET /api/server (admin): uptime, queues, disk and database size."""
        return dict(self._get("/api/server"))

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text."""
        return str(self._get("/metrics"))

    def metric(self, name: str) -> float:
        """The sum over all label sets of one metric from /metrics (0 when absent)."""
        pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
        return sum(float(value) for value in re.findall(pattern, self.metrics(), re.MULTILINE))

    # --- campaigns -----------------------------------------------------------------------------

    def campaigns(self) -> list[JSON]:
        return list(self._get("/api/campaigns")["campaigns"])

    def post_campaign(self, spec: Mapping[str, Any] | str) -> JSON:
        """POST /api/campaigns (lead or admin): a spec as a mapping (sent as JSON) or TOML text; the new campaign.

        A spec with problems raises `ApiError` 400 with every one in `problems`; a taken name 409.
        """
        if isinstance(spec, str):
            return dict(self.request("POST", "/api/campaigns", toml=spec))
        return dict(self._post("/api/campaigns", dict(spec)))

    def campaign(self, campaign_id: int) -> JSON:
        """GET /api/campaigns/{id}: summary, live stats, spec, model config and latest checkpoint."""
        return dict(self._get(f"/api/campaigns/{campaign_id}"))

    def versions(self, campaign_id: int) -> list[JSON]:
        """Model versions with their holdout loss (None until evaluated), oldest first."""
        return list(self._get(f"/api/campaigns/{campaign_id}/versions")["versions"])

    def rounds(self, campaign_id: int) -> list[JSON]:
        return list(self._get(f"/api/campaigns/{campaign_id}/rounds")["rounds"])

    def leaderboard(self, campaign_id: int) -> list[JSON]:
        return list(self._get(f"/api/campaigns/{campaign_id}/leaderboard")["leaderboard"])

    def checkpoint(self, campaign_id: int, version: int | None = None) -> bytes:
        """The weights of the latest version (or `version`) as safetensors bytes."""
        query = "" if version is None else f"?version={version}"
        answer = self._get(f"/api/campaigns/{campaign_id}/checkpoint{query}")
        return answer if isinstance(answer, bytes) else b""

    def tokenizer(self, campaign_id: int) -> str:
        """The campaign dataset's tokenizer file, as text."""
        answer = self._get(f"/api/campaigns/{campaign_id}/tokenizer")
        return answer if isinstance(answer, str) else json.dumps(answer)

    def card(self, campaign_id: int, version: int | None = None) -> JSON:
        """The records a model card is made of, for the latest version (or `version`)."""
        query = "" if version is None else f"?version={version}"
        return dict(self._get(f"/api/campaigns/{campaign_id}/card{query}"))

    def export(self, campaign_id: int, fmt: str, version: int | None = None) -> bytes:
        """An export the coordinator builds (hf: a zip; gguf-f16, gguf-q8_0, gguf-f32, onnx: the file)."""
        query = "" if version is None else f"?version={version}"
        answer = self._get(f"/api/campaigns/{campaign_id}/exports/{quote(fmt, safe='')}{query}")
        return answer if isinstance(answer, bytes) else b""

    def generate(self, campaign_id: int, prompt: str, **options: Any) -> JSON:
        """The campaign's latest model continuing `prompt` (max_new_tokens, temperature, seed)."""
        return dict(self._post(f"/api/campaigns/{campaign_id}/generate", {"prompt": prompt, **options}))

    def pause(self, campaign_id: int) -> JSON:
        return dict(self._post(f"/api/campaigns/{campaign_id}/pause"))

    def resume(self, campaign_id: int) -> JSON:
        return dict(self._post(f"/api/campaigns/{campaign_id}/resume"))

    def stop(self, campaign_id: int) -> JSON:
        return dict(self._post(f"/api/campaigns/{campaign_id}/stop"))

    # --- volunteers ----------------------------------------------------------------------------

    def volunteers(self) -> list[JSON]:
        return list(self._get("/api/volunteers")["volunteers"])

    def ban(self, volunteer_id: str) -> JSON:
        return dict(self._post(f"/api/volunteers/{quote(volunteer_id, safe='')}/ban"))

    def unban(self, volunteer_id: str) -> JSON:
        return dict(self._post(f"/api/volunteers/{quote(volunteer_id, safe='')}/unban"))

    # --- tokens --------------------------------------------------------------------------------

    def me(self) -> JSON:
        """Who this client's token is: id, role and label."""
        return dict(self._get("/api/me"))

    def tokens(self) -> list[JSON]:
        return list(self._get("/api/tokens")["tokens"])

    def create_token(self, label: str, role: str = "lead") -> JSON:
        """POST /api/tokens (admin): the new token, its secret in `token` (shown only here)."""
        return dict(self._post("/api/tokens", {"label": label, "role": role}))

    def revoke_token(self, token_id: int) -> JSON:
        return dict(self.request("DELETE", f"/api/tokens/{token_id}"))


def _decode(content_type: str, data: bytes) -> Any:
    if not data:
        return None
    if content_type == "application/json":
        return json.loads(data)
    if content_type.startswith("text/"):
        return data.decode("utf-8", errors="replace")
    return data


def _api_error(status: int, body: Any) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("code", "error")), str(error.get("message", "")), body)
    text = body if isinstance(body, str) else ""
    return ApiError(status, "http_error", text.strip()[:500] or f"HTTP {status}", body)
