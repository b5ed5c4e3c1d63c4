"""Rendering conversations: the tokenizer's own chat template, or babelmerge's documented default.

Base models often ship no chat template. babelmerge then uses :data:`DEFAULT_CHAT_TEMPLATE`::

    <s><|user|>
    What is 2+2?
    <|assistant|>
    4</s>

i.e. BOS once, then for each message a ``<|role|>`` line followed by its content on the next line, the
assistant's content closed by EOS. Instruction tuning (which masks everything but the assistant's tokens) and
instruction evaluation (which renders the user turn plus ``<|assistant|>\\n`` and generates) use the same
template, so a model tuned by babelmerge is evaluated the way it was trained.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and bos_token %}{{ bos_token }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
)


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template, or :data:`DEFAULT_CHAT_TEMPLATE` if it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the tokenizer's template or the default one."""
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
