"""OpenAI's completion `prompt` as the runtime takes it, shared by the gateway's and the replicas' request models."""

from __future__ import annotations

from pydantic import BaseModel, field_validator


class OnePrompt(BaseModel):
    """`prompt`: a string, or a list of exactly one string (the runtime serves one prompt per request, as the
    replicas batch across requests rather than within one)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError(f"give one prompt (a string or a list of one string), got a list of {len(v)}")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
