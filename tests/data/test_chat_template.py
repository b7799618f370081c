"""A checkpoint's own chat template (Jinja, from tokenizer_config.json) rendered by r1 exactly as
transformers' `apply_chat_template` renders it, for a Qwen-style and a DeepSeek-R1-style
template and one that uses every feature of the environment; the ways a tokenizer directory can
hold its template and special tokens; and the errors."""

import json

import pytest

from r1.data import pipeline, templates
from r1.data.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

QWEN = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'system' and loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
DEEPSEEK = (
    "{% set ns = namespace(system_prompt='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
# Block tags on their own lines (trim_blocks / lstrip_blocks decide the whitespace), loop
# controls, a namespace, `tojson` of non-ASCII and HTML characters, `tools` / `documents` given
# as none, every special token, reasoning under its aliases, and the two globals.
FEATURES = """{{ bos_token }}[{{ unk_token }}|{{ pad_token }}|{{ sep_token }}|{{ mask_token }}]
{% set ns = namespace(turns=0) %}
{% if tools is none and documents is none %}
no tools
{% endif %}
{% for message in messages %}
    {% if message.role == 'skip' %}
        {% continue %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    <{{ message.role }}>{{ message | tojson }}
    {% if message.reasoning_content is defined %}
        think={{ message.reasoning_content }}/{{ message.thinking }}
    {% endif %}
    {% if message.content == 'STOP' %}
        {% break %}
    {% endif %}
{% endfor %}
turns={{ ns.turns }} year={{ strftime_now('%Y') | length }} {{ eos_token }}
{% if add_generation_prompt %}
<assistant>
{% endif %}
"""
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|im_start|>", "<|im_end|>"]
LEGACY_SPECIALS = {"pad_token": "<pad>", "sep_token": "<sep>", "mask_token": "<mask>"}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "求 $\\frac{1}{2} + \\frac{1}{3}$ 的值。"},
    ],
    [
        {"role": "user", "content": "Write f."},
        {"role": "assistant", "content": "<think>\nplan\n</think>\n```python\ndef f(): pass\n```"},
        {"role": "user", "content": "Now g, with $\\sum_{i=1}^{n} i^2$ and 「引号」."},
    ],
]
FEATURE_CONVERSATION = [
    {"role": "system", "content": 'Use "quotes" & <tags>, 中文.'},
    {"role": "skip", "content": "never shown"},
    {"role": "user", "content": "$x^2 + y^2 = z^2$", "tool_calls": None},
    {"role": "assistant", "content": "Pythagoras.", "reasoning": "a right triangle"},
    {"role": "user", "content": "STOP"},
    {"role": "user", "content": "after the break"},
]
ADDED_TOKEN = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _directory(tmp_path, name, config_template=None, jinja_file=None, config_extra=None):
    """A tokenizer directory: a tiny WordLevel tokenizer.json, a tokenizer_config.json with the
    DeepSeek-style special tokens (BOS as an AddedToken dict, as DeepSeek spells it) and
    `config_template`, and `jinja_file` as chat_template.jinja."""
    directory = tmp_path / name
    directory.mkdir()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens([*SPECIALS, *LEGACY_SPECIALS.values()])
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": {"__type": "AddedToken", "content": SPECIALS[0], **ADDED_TOKEN},
        "eos_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
        "unk_token": "[UNK]",
        **(config_extra or {}),
    }
    if config_template is not None:
        config["chat_template"] = config_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    if jinja_file is not None:
        (directory / "chat_template.jinja").write_text(jinja_file)
    return directory


def _assert_renders_as_transformers(directory, conversations):
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    ours = load_tokenizer(str(directory))
    for messages in conversations:
        for generation in (True, False):
            expected = reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
            assert ours.render_chat(messages, add_generation_prompt=generation) == expected
    return reference, ours


@pytest.mark.parametrize("template", [QWEN, DEEPSEEK], ids=["qwen", "deepseek"])
def test_rendering_equals_transformers_apply_chat_template(tmp_path, template):
    directory = _directory(tmp_path, "tok", template)
    reference, ours = _assert_renders_as_transformers(directory, CONVERSATIONS)
    system = ours.render_chat("Hi", system="Be kind.")
    assert system == reference.apply_chat_template(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ours.render_chat(CONVERSATIONS[1], system="ignored") == ours.render_chat(
        CONVERSATIONS[1]
    )


def test_environment_features_render_as_transformers(tmp_path):
    directory = _directory(tmp_path, "features", FEATURES, config_extra=LEGACY_SPECIALS)
    _, ours = _assert_renders_as_transformers(directory, [FEATURE_CONVERSATION])
    text = ours.render_chat(FEATURE_CONVERSATION)
    assert "中文" in text and "&" in text and "think=a right triangle/a right triangle" in text
    assert "no tools" in text and "turns=4 year=4" in text and "after the break" not in text


def test_special_tokens_map_overrides_only_legacy_configs(tmp_path):
    template = "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ sep_token }}"
    for legacy in (True, False):
        extra = {} if legacy else {"added_tokens_decoder": {"1": {"content": SPECIALS[0]}}}
        directory = _directory(tmp_path, f"legacy_{legacy}", template, config_extra=extra)
        token_map = {"pad_token": "<pad>", "sep_token": {"content": "<sep>", **ADDED_TOKEN}}
        (directory / "special_tokens_map.json").write_text(json.dumps(token_map))
        _assert_renders_as_transformers(directory, CONVERSATIONS[:1])
        ours = load_tokenizer(str(directory))
        assert ours.special_tokens.get("sep_token") == ("<sep>" if legacy else None)
        assert [ours.pad_id] == ours.encode("<pad>" if legacy else SPECIALS[1])


def test_templates_from_a_jinja_file_or_a_named_list(tmp_path):
    jinja = _directory(tmp_path, "file", config_template=DEEPSEEK, jinja_file=QWEN)
    _assert_renders_as_transformers(jinja, CONVERSATIONS)
    qwen_prompt = load_tokenizer(str(jinja)).render_chat("Hi")
    assert qwen_prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": DEEPSEEK}]
    listed = _directory(tmp_path, "list", named)
    _assert_renders_as_transformers(listed, CONVERSATIONS)
    assert (
        load_tokenizer(str(listed)).render_chat("Hi")
        == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"
    )


def test_no_template_and_broken_templates_give_clear_errors(tmp_path):
    for name, template in (("none", None), ("nodefault", [{"name": "rag", "template": "x"}])):
        directory = _directory(tmp_path, name, template)
        with pytest.raises(ValueError, match=f"{directory}.*no chat template"):
            load_tokenizer(str(directory)).render_chat("Hi")
    with pytest.raises(ValueError, match="template 'chat' needs"):
        pipeline.prompt_renderer("chat", object())
    bad = "{% if messages %}{{ raise_exception('only one turn') }}{% endif %}"
    with pytest.raises(ValueError, match="chat template: only one turn"):
        templates.render_chat_template(bad, "Hi")
    with pytest.raises(ValueError, match="chat template: line 2"):
        templates.render_chat_template("ok\n{% if %}", "Hi")
    with pytest.raises(ValueError, match="underscore"):
        templates.render_chat_template("{% set ns = namespace(_x=1) %}", "Hi")
    with pytest.raises(ValueError, match="empty conversation"):
        templates.render_chat_template(QWEN, [])
    with pytest.raises(ValueError, match=r"messages\[1\]: expected a string role"):
        templates.render_chat_template(QWEN, [{"role": "user", "content": "a"}, {"role": "x"}])


def test_variables_and_special_tokens_reach_the_template():
    template = "{{ bos_token }}{{ messages[0].content }}{% if enable_thinking %}!{% endif %}"
    tokens = {"bos_token": "<s>"}
    assert templates.render_chat_template(template, "Hi", special_tokens=tokens) == "<s>Hi"
    assert templates.render_chat_template(template, "Hi", enable_thinking=True) == "Hi!"
    message = {"role": "user", "content": "Hi"}
    templates.render_chat_template(template, [message], bos_token="x")
    assert message == {"role": "user", "content": "Hi"}


def test_grpo_prompts_use_the_checkpoints_chat_template(tmp_path):
    tok = load_tokenizer(str(_directory(tmp_path, "tok", DEEPSEEK)))
    render = pipeline.prompt_renderer("chat", tok, "", "auto")
    row = {"prompt": "What is 2 + 2?", "answer": "4", "domain": "math"}
    assert render(row) == (
        f"<｜begin▁of▁sentence｜><｜User｜>What is 2 + 2?\n{templates.BOXED_INSTRUCTION}"
        "<｜Assistant｜><think>\n"
    )
