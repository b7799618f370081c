r"""Prompt and response templates, as pure string functions.

* `R1_ZERO_TEMPLATE` / `render_r1_zero`: the DeepSeek-R1-Zero template, verbatim (R1 report,
  Table 1), with the question substituted for `{prompt}`.
* `render_r1_zero_completion` / `render_r1_zero_example`: the completion the template asks for,
  `<think> ... </think> <answer> ... </answer>`, used to build pretraining / SFT corpora.
* `render_chat`: chat templates for instruct and distilled models (`qwen` ChatML, `llama3`,
  `deepseek_r1`), with `<think>` handling: earlier assistant turns lose their reasoning (as the
  DeepSeek-R1 chat template does) and the generation prompt can open `<think>\n` (as the
  R1 authors recommend, so the model never skips thinking).
* `render_readable` / `split_readable`: the R1 cold-start "readable" response format
  `|special_token|<reasoning_process>|special_token|<summary>`.
* `render_chat_template`: a checkpoint's own Jinja chat template (from its
  tokenizer_config.json), rendered as transformers renders it.

Everything here is a pure function of strings: no tokenizer, no I/O.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)
# The fixed text before and after the question (the demo tokenizer makes each one token).
R1_ZERO_PREFIX, R1_ZERO_SUFFIX = R1_ZERO_TEMPLATE.split("{prompt}")

# The instruction DeepSeek appends to math prompts at evaluation time (R1 report).
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

READABLE_SPECIAL_TOKEN = "|special_token|"


def render_r1_zero(prompt: str) -> str:
    """The R1-Zero prompt for one question: the template with `prompt` substituted.

    The template itself ends "User: {prompt}. Assistant:", so a trailing full stop in `prompt`
    is kept as is (the paper's template is used verbatim, not "fixed").
    """
    return R1_ZERO_TEMPLATE.replace("{prompt}", prompt)


def render_r1_zero_completion(thinking: str, answer: str) -> str:
    """The completion R1-Zero is rewarded for:
    `" <think>{thinking}</think> <answer>{answer}</answer>"`.

    It starts with a space because the prompt ends with "Assistant:". Empty `thinking` gives
    `<think></think>` (a direct answer that still satisfies the format).
    """
    return f" {THINK_OPEN}{thinking}{THINK_CLOSE} {ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def render_r1_zero_example(prompt: str, thinking: str, answer: str) -> str:
    """A full training text: `render_r1_zero(prompt) + render_r1_zero_completion(...)`."""
    return render_r1_zero(prompt) + render_r1_zero_completion(thinking, answer)


# ------------------------------------------------------------------------------ chat templates
CHAT_FORMATS = ("qwen", "llama3", "deepseek_r1")

_DS_BOS = "<｜begin▁of▁sentence｜>"
_DS_EOS = "<｜end▁of▁sentence｜>"
_DS_USER = "<｜User｜>"
_DS_ASSISTANT = "<｜Assistant｜>"


def strip_thinking(text: str) -> str:
    """The part of an assistant message after its last `</think>` (the visible answer).

    Text without `</think>` is returned unchanged (stripped of surrounding whitespace only if
    a think block was removed).
    """
    if THINK_CLOSE not in text:
        return text
    return text.split(THINK_CLOSE)[-1].lstrip()


def render_chat(
    messages: Sequence[Mapping[str, str]] | str,
    *,
    format: str = "deepseek_r1",  # noqa: A002 - the natural name for the chat format
    system: str | None = None,
    add_generation_prompt: bool = True,
    open_think: bool = True,
    keep_thinking: bool = False,
    add_bos: bool = True,
) -> str:
    r"""Render a conversation in an instruct/distilled model's chat format.

    Args:
      messages: a list of `{"role": "user"|"assistant"|"system", "content": str}`, or one user
        prompt as a string.
      format: "qwen" (ChatML, Qwen2/2.5 instruct), "llama3" (Llama-3.x instruct) or
        "deepseek_r1" (DeepSeek-R1 and its distilled Qwen/Llama students).
      system: an optional system message placed first (a "system" message in `messages` wins).
      add_generation_prompt: end with the assistant header so the model answers next.
      open_think: with `add_generation_prompt`, also open `<think>\n` so the model starts with
        its reasoning (the DeepSeek-R1 usage recommendation; applies to every format).
      keep_thinking: keep `<think>...</think>` in earlier assistant turns. The default drops
        it, as DeepSeek-R1's template does (history carries only final answers).
      add_bos: begin with the BOS text for formats that spell it (llama3, deepseek_r1). Turn
        this off when the tokenizer adds BOS itself.

    Returns:
      The prompt text. Matches the Hugging Face chat templates of those model families for
      plain text messages (no tools).
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    msgs = [dict(m) for m in messages]
    for i, m in enumerate(msgs):
        if m.get("role") not in ("system", "user", "assistant") or "content" not in m:
            raise ValueError(
                f"messages[{i}]: expected a role of system/user/assistant and a content, got {m!r}"
            )
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
    if any(m["role"] == "system" for m in msgs):
        raise ValueError("messages: a system message is only allowed first")

    def assistant_text(content: str) -> str:
        return content if keep_thinking else strip_thinking(content)

    out: list[str] = []
    if format == "qwen":
        if system is not None:
            out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
        for m in msgs:
            content = assistant_text(m["content"]) if m["role"] == "assistant" else m["content"]
            out.append(f"<|im_start|>{m['role']}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
    elif format == "llama3":
        if add_bos:
            out.append("<|begin_of_text|>")
        if system is not None:
            out.append(f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>")
        for m in msgs:
            content = assistant_text(m["content"]) if m["role"] == "assistant" else m["content"]
            out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{content}<|eot_id|>")
        if add_generation_prompt:
            out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    elif format == "deepseek_r1":
        if add_bos:
            out.append(_DS_BOS)
        if system is not None:
            out.append(system)
        for m in msgs:
            if m["role"] == "user":
                out.append(_DS_USER + m["content"])
            else:
                out.append(_DS_ASSISTANT + assistant_text(m["content"]) + _DS_EOS)
        if add_generation_prompt:
            out.append(_DS_ASSISTANT)
    else:
        raise ValueError(f"format: expected one of {CHAT_FORMATS}, got {format!r}")
    if add_generation_prompt and open_think:
        out.append(THINK_OPEN + "\n")
    return "".join(out)


# ------------------------------------------------------------------------------ readable format
def render_readable(
    reasoning: str, summary: str, special_token: str | tuple[str, str] = READABLE_SPECIAL_TOKEN
) -> str:
    """R1's readable cold-start format: `|special_token|<reasoning>|special_token|<summary>`.

    Pass `special_token` to use a real tag pair instead, e.g. DeepSeek-R1's released models
    use `<think>` ... `</think>`: `render_readable(r, s, ("<think>\\n", "\\n</think>\\n\\n"))`.
    """
    if isinstance(special_token, str):
        open_tok = close_tok = special_token
    else:
        open_tok, close_tok = special_token
    return f"{open_tok}{reasoning}{close_tok}{summary}"


def split_readable(
    text: str, special_token: str | tuple[str, str] = READABLE_SPECIAL_TOKEN
) -> tuple[str, str] | None:
    """Inverse of `render_readable`: `(reasoning, summary)`, or None if `text` is not in the
    format."""
    if isinstance(special_token, str):
        open_tok = close_tok = special_token
    else:
        open_tok, close_tok = special_token
    if not text.startswith(open_tok):
        return None
    rest = text[len(open_tok) :]
    if close_tok not in rest:
        return None
    reasoning, summary = rest.split(close_tok, 1)
    if open_tok in reasoning:
        return None
    return reasoning, summary


# ------------------------------------------------------------------------ Jinja chat templates
# Names a message's reasoning may be given under; templates read `reasoning_content` (Qwen3,
# DeepSeek) or `thinking` (gpt-oss), so transformers hands every template both.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


@functools.cache
def _chat_template_environment() -> Any:
    """The Jinja environment Hugging Face tokenizers render chat templates in: sandboxed and
    immutable (templates come from the Hub: untrusted code), ``trim_blocks`` and
    ``lstrip_blocks``, loop controls (``break`` / ``continue``), a ``tojson`` filter that keeps
    non-ASCII text and HTML characters as they are, the ``raise_exception`` and
    ``strftime_now`` globals, and a ``namespace`` that refuses underscore-prefixed names."""
    import jinja2  # noqa: PLC0415 - only chat-template users need it
    import jinja2.ext  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(date_format: str) -> str:
        return datetime.datetime.now().strftime(date_format)

    def refuse_private(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not store {name!r} (underscore-prefixed) on a namespace"
            )

    class GuardedNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - `namespace(self=...)`
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                refuse_private(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            refuse_private(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now, namespace=GuardedNamespace
    )
    return env


@functools.lru_cache(maxsize=16)
def _compile_chat_template(template: str) -> Any:
    """`template` compiled in `_chat_template_environment` (cached: one compile per template).

    Raises ValueError naming the line and the problem when the template does not parse."""
    import jinja2  # noqa: PLC0415

    try:
        return _chat_template_environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"chat template: line {err.lineno}: {err.message}") from None


def _template_messages(messages: Sequence[Mapping[str, Any]] | str) -> list[dict[str, Any]]:
    """Fresh copies of `messages` as transformers hands them to a template: keys whose value is
    None dropped, and reasoning given under any of `REASONING_KEYS` also given as
    `reasoning_content` and `thinking`. A string is one user message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not messages:
        raise ValueError("messages: an empty conversation has nothing to render")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}]: expected a mapping, got {message!r}")
        plain = {key: value for key, value in message.items() if value is not None}
        if not isinstance(plain.get("role"), str) or not isinstance(plain.get("content"), str):
            raise ValueError(
                f"messages[{i}]: expected a string role and a string content, got {message!r}"
            )
        reasoning = next((plain[key] for key in REASONING_KEYS if key in plain), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        out.append(plain)
    return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, str]] | str,
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> str:
    """Render `messages` with a model's own Jinja chat template (the `chat_template` of its
    tokenizer_config.json, or its chat_template.jinja) exactly as transformers'
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`` does
    for plain text messages (no tools, no documents: both are None to the template).

    Args:
      template: the Jinja source.
      messages: ``[{"role": str, "content": str}, ...]`` (optionally with a
        `reasoning_content` / `thinking` / `reasoning` string), or one user message as a string.
      add_generation_prompt: end with the assistant header so the model answers next.
      special_tokens: the tokenizer's ``bos_token``, ``eos_token``, ... texts (templates such
        as DeepSeek's write ``{{ bos_token }}``); a token left out is undefined (renders "").
      variables: more template variables (e.g. ``enable_thinking=False`` for Qwen3); they
        override `special_tokens` of the same name.

    Returns:
      The rendered text (nothing is tokenised: BOS appears only if the template writes it).

    Raises:
      ValueError: a template that does not parse or fails while rendering (including its own
        ``raise_exception(...)``), or malformed messages.
    """
    import jinja2  # noqa: PLC0415

    chat = _template_messages(messages)
    compiled = _compile_chat_template(template)
    context = {"tools": None, "documents": None, **dict(special_tokens or {}), **variables}
    try:
        return compiled.render(
            **context, messages=chat, add_generation_prompt=add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template: {err}") from None
