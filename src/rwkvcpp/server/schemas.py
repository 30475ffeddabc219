"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic.

Types are strict: a string where a number belongs (``"temperature": "0.5"``), a float where an
integer belongs (``"n": 1.5``) or a boolean for a number is an error, not silently converted.
Ranges follow OpenAI's API; the server's own caps (``max_tokens``, ``n``, prompt length; see
:class:`~rwkvcpp.server.config.ServerConfig`) are checked by the endpoints. Fields the server
does not know are ignored, so clients that send newer OpenAI fields keep working; fields it
knows but cannot honour (``suffix``, images) are errors.

RWKV's extra sampling knobs ride along as extra fields (``extra_body`` in the openai client):
``top_k``, ``min_p``, ``penalty_decay`` and ``global_penalty`` (count the prompt's tokens
towards the presence and frequency penalties).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "ChatMessage",
    "Tool",
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: str = Field(description="'text' (other kinds, such as images, are refused)")
    text: Optional[str] = None


class FunctionCall(_Strict):
    name: str
    arguments: Union[str, dict[str, Any]] = Field("{}", description="JSON text of the arguments object")


class ToolCall(_Strict):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: Optional[bool] = None


class _Sampling(_Strict):
    """Fields shared by chat and text completions. None means the server's default."""

    model: Optional[str] = Field(None, description="any name; the server has one model")
    max_tokens: Optional[int] = Field(None, ge=0, description="most tokens to generate (capped by the server)")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0 = always the most likely token")
    top_p: Optional[float] = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, description="number of choices")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = Field(None, description="token id -> bias in [-100, 100]")
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64)
    user: Optional[str] = None
    # RWKV extras
    top_k: Optional[int] = Field(None, ge=0, description="RWKV extra: keep the k most likely tokens (0 = off)")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="RWKV extra: drop tokens below min_p x the best")
    penalty_decay: Optional[float] = Field(
        None, ge=0, le=1, description="RWKV extra: penalty counts shrink by this factor per token (1 = off)"
    )
    global_penalty: Optional[bool] = Field(
        None, description="RWKV extra: count the prompt's tokens towards the presence/frequency penalties"
    )
    response_format: Optional[dict[str, Any]] = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}'
    )
    grammar: Optional[str] = Field(None, description="llama.cpp extra: a GBNF grammar the output must follow")
    json_schema: Optional[dict[str, Any]] = Field(None, description="llama.cpp extra: a JSON schema the output "
                                                                    "must follow")
    rwkv_state: Optional[str] = Field(None, description="RWKV extra: continue a saved session (POST /v1/states): "
                                                         "the prompt, or the messages, come after it")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0, description="newer name of max_tokens")
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists"
    )
    echo: bool = False
    suffix: Optional[str] = None
    logprobs: Optional[int] = Field(None, ge=0, le=20, description="logprobs of each token and this many alternatives")
    best_of: Optional[int] = Field(None, ge=1)


class EmbeddingRequest(_Strict):
    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists"
    )
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None
