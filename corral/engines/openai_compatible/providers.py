"""The cloud providers that speak OpenAI's chat-completions dialect, as data.

A ``Provider`` says where a vendor lives (default base URL, URL shape), how it wants its
key (header style, usual environment variable), and what it does differently from
OpenAI (fields it refuses, ranges it accepts, where the token limit goes). The one
openai-compatible engine applies an entry; no vendor has code of its own. Each entry
was written from the vendor's public API documentation; the tests run every entry
against a loopback fake of that documentation, never against the real service.

Pure data and pure functions: imported by the catalog's consistency test and the engine,
never imports httpx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from corral.core.errors import InvalidRequest
from corral.core.types import GenerationRequest, ToolMode

Auth = Literal["bearer", "api-key"]
BOTH_FORMATS = frozenset({"json_object", "json_schema"})
JSON_OBJECT = frozenset({"json_object"})
# not OpenAI fields: extensions of vLLM-like servers that the clouds (unless their entry
# says otherwise) do not document, so they are refused there rather than sent to be ignored
NOT_OPENAI = frozenset({"ignore_eos", "top_k", "repetition_penalty"})


@dataclass(frozen=True)
class Provider:
    name: str  # the catalog's engine name
    title: str  # for messages and docs
    base_url: str | None  # None: no default (the generic engine's source; Azure's resource)
    key_env: str | None  # the usual environment variable of the key; None: no key needed
    auth: Auth = "bearer"  # "Authorization: Bearer KEY" or "api-key: KEY"
    base_url_env: str | None = None  # where the base URL is read when options.base_url is unset
    deployments: bool = False  # Azure: /openai/deployments/{model}/...?api-version=; no model in the body
    max_tokens_field: str = "max_tokens"  # OpenAI deprecated max_tokens for max_completion_tokens
    stream_usage: bool = True  # send stream_options.include_usage (some vendors send usage unasked and refuse it)
    max_n: int | None = None  # choices per request; None: no documented limit
    temperature: tuple[float, float] | None = None  # the accepted range, values outside are clamped to it
    top_p: tuple[float, float] | None = None
    unsupported: frozenset[str] = frozenset()  # request fields the vendor refuses: a 400 naming them, never dropped
    response_formats: frozenset[str] = BOTH_FORMATS  # response_format types the vendor honours
    tool_choice_required: bool = True  # accepts tool_choice "required"
    completions: bool = False  # has the legacy /completions endpoint (text completion)
    embeddings: bool = False  # has /embeddings
    lists_models: bool = True  # GET /models lists model ids (so a missing one is worth a warning)

    # -- URLs and headers ----------------------------------------------------------------

    def url(self, base: str, path: str, model: str, api_version: str | None) -> str:
        """The URL of an endpoint (``chat/completions``, ``completions``, ``embeddings``)."""
        if self.deployments:
            return f"{base}/openai/deployments/{quote(model, safe='')}/{path}?api-version={quote(api_version or '')}"
        return f"{base}/{path}"

    def models_url(self, base: str, api_version: str | None) -> str:
        if self.deployments:
            return f"{base}/openai/models?api-version={quote(api_version or '')}"
        return f"{base}/models"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        return {"api-key": key} if self.auth == "api-key" else {"authorization": f"Bearer {key}"}

    def auth_header_name(self) -> str:
        return "api-key" if self.auth == "api-key" else "authorization"

    # -- the request body ------------------------------------------------------------------

    def adapt(self, body: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        """``body`` (OpenAI's shape, from ``wire.upstream_body``) made acceptable to this
        vendor. What the vendor cannot honour is refused with a 400 naming the field,
        before anything is sent: a silently dropped field would change the answer."""
        if request.messages is None and not self.completions:
            raise _refused(f"{self.title} has no text-completion endpoint; use /v1/chat/completions", "prompt")
        if self.max_n is not None and request.sampling.n > self.max_n:
            raise _refused(
                f"{self.title} returns at most {self.max_n} choice(s) per request (n={request.sampling.n})", "n"
            )
        for name in sorted(self.unsupported):
            if name in body:  # upstream_body only writes optional fields that differ from their defaults
                raise _refused(f"{self.title} does not support {name}", name)
        fmt = request.response_format
        if fmt is not None and fmt.get("type") not in self.response_formats:
            raise _refused(
                f"{self.title} does not support response_format of type {fmt.get('type')!r} "
                f"(it supports: {', '.join(sorted(self.response_formats))})",
                "response_format",
            )
        if request.tool_choice is not None and request.tool_choice.mode is ToolMode.REQUIRED and not self.tool_choice_required:
            raise _refused(
                f"{self.title} does not support tool_choice 'required'; use 'auto' or name a function", "tool_choice"
            )
        for name, bounds in (("temperature", self.temperature), ("top_p", self.top_p)):
            if bounds is not None and name in body:
                body[name] = min(max(body[name], bounds[0]), bounds[1])
        if self.max_tokens_field != "max_tokens" and "max_tokens" in body:
            body[self.max_tokens_field] = body.pop("max_tokens")
        if not self.stream_usage:
            body.pop("stream_options", None)
        if self.deployments:
            body.pop("model", None)  # the deployment in the URL is the model
        return body


def _refused(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


# The generic engine: whatever the server at ``source`` accepts goes through unchanged.
GENERIC = Provider(
    name="openai-compatible", title="the upstream server", base_url=None, key_env=None,
    completions=True, embeddings=True,
)

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        # platform.openai.com/docs/api-reference/chat: max_tokens is deprecated in favour of
        # max_completion_tokens (which o-series models require)
        Provider(
            name="openai", title="OpenAI", base_url="https://api.openai.com/v1", key_env="OPENAI_API_KEY",
            max_tokens_field="max_completion_tokens", unsupported=NOT_OPENAI, completions=True, embeddings=True,
        ),
        # learn.microsoft.com/azure/ai-services/openai/reference: the deployment is in the
        # path, api-version in the query, the key in an api-key header
        Provider(
            name="azure-openai", title="Azure OpenAI", base_url=None, key_env="AZURE_OPENAI_API_KEY", auth="api-key",
            base_url_env="AZURE_OPENAI_ENDPOINT", deployments=True, max_tokens_field="max_completion_tokens",
            unsupported=NOT_OPENAI, completions=True, embeddings=True, lists_models=False,
        ),
        # ai.google.dev/gemini-api/docs/openai: n (candidateCount) is not available when streaming
        Provider(
            name="gemini", title="Google Gemini", base_url="https://generativelanguage.googleapis.com/v1beta/openai",
            key_env="GEMINI_API_KEY", max_n=1, unsupported=NOT_OPENAI, embeddings=True,
        ),
        # api-docs.deepseek.com: no n, no seed; response_format json_object only
        Provider(
            name="deepseek", title="DeepSeek", base_url="https://api.deepseek.com", key_env="DEEPSEEK_API_KEY",
            max_n=1, unsupported=NOT_OPENAI | {"seed"}, response_formats=JSON_OBJECT,
        ),
        # help.aliyun.com (DashScope compatible mode): n up to 4; json_object; top_k and
        # repetition_penalty are documented request fields (the SDK's extra_body)
        Provider(
            name="dashscope", title="Alibaba DashScope (Qwen)",
            base_url="https://dashscope.aliyuncs.com/compatible-mode/v1", key_env="DASHSCOPE_API_KEY", max_n=4,
            unsupported=NOT_OPENAI - {"top_k", "repetition_penalty"}, response_formats=JSON_OBJECT, embeddings=True,
        ),
        # open.bigmodel.cn / docs.z.ai: temperature in [0, 1], top_p in [0.01, 1]; no n,
        # seed nor penalties; usage comes with the last chunk unasked
        Provider(
            name="zhipu", title="Zhipu GLM", base_url="https://open.bigmodel.cn/api/paas/v4", key_env="ZHIPUAI_API_KEY",
            stream_usage=False, max_n=1, temperature=(0.0, 1.0), top_p=(0.01, 1.0),
            unsupported=NOT_OPENAI | {"seed", "presence_penalty", "frequency_penalty"},
            response_formats=JSON_OBJECT, embeddings=True,
        ),
        # cloud.baidu.com (Qianfan ModelBuilder, inference API v2): temperature in (0, 1]
        Provider(
            name="qianfan", title="Baidu Qianfan (Wenxin)", base_url="https://qianfan.baidubce.com/v2",
            key_env="QIANFAN_API_KEY", max_n=1, temperature=(0.01, 1.0), unsupported=NOT_OPENAI,
            response_formats=JSON_OBJECT, embeddings=True,
        ),
        # platform.moonshot.cn: temperature in [0, 1], n up to 5, no tool_choice "required";
        # usage comes with the last choice unasked
        Provider(
            name="moonshot", title="Moonshot (Kimi)", base_url="https://api.moonshot.cn/v1", key_env="MOONSHOT_API_KEY",
            stream_usage=False, max_n=5, temperature=(0.0, 1.0), unsupported=NOT_OPENAI | {"seed"},
            response_formats=JSON_OBJECT, tool_choice_required=False,
        ),
    )
}
