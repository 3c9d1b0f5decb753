"""The OpenAI chat-completions wire format: what a request may say, and the error shape.

Only the fields this server honours are modelled; unknown fields an OpenAI client may send
(``user``, ``metadata`` ...) are ignored, but a field it cannot honour (``n > 1``, tools,
images on a text model) is a 400 saying so, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: the fields honoured (others ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[MessageIn] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None


class TaskCall(BaseModel):
    """``POST /v1/tasks/{name}``: which model, the task's inputs, and an optional budget."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: dict[str, Any]
    max_tokens: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0, le=5)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape, which the official client turns into its typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
