"""A checkpoint's own chat template (Jinja, from tokenizer_config.json) rendered by r1 exactly as
transformers' `apply_chat_template` renders it, for a Qwen-style and a DeepSeek-R1-style
template written here; and the ways a tokenizer directory can hold its template."""

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
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|im_start|>", "<|im_end|>"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "求 $\\frac{1}{2} + \\frac{1}{3}$ 的值。"},
    ],
    [
        {"role": "user", "content": "Write f."},
        {"role": "assistant", "content": "<think>\nplan\n</think>\n```python\ndef f(): pass\n```"},
        {"role": "user", "content": "Now g."},
    ],
]


def _directory(tmp_path, name, config_template=None, jinja_file=None):
    directory = tmp_path / name
    directory.mkdir()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # DeepSeek's tokenizer_config.json spells its BOS as an AddedToken object.
        "bos_token": {
            "__type": "AddedToken",
            "content": SPECIALS[0],
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
        "eos_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
    }
    if config_template is not None:
        config["chat_template"] = config_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    if jinja_file is not None:
        (directory / "chat_template.jinja").write_text(jinja_file)
    return directory


@pytest.mark.parametrize("template", [QWEN, DEEPSEEK], ids=["qwen", "deepseek"])
def test_rendering_equals_transformers_apply_chat_template(tmp_path, template):
    directory = _directory(tmp_path, "tok", template)
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    ours = load_tokenizer(str(directory))
    for messages in CONVERSATIONS:
        for generation in (True, False):
            expected = reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
            assert ours.render_chat(messages, add_generation_prompt=generation) == expected
    system = ours.render_chat("Hi", system="Be kind.")
    assert system == reference.apply_chat_template(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )


def test_templates_from_a_jinja_file_or_a_named_list_and_clear_errors(tmp_path):
    jinja = load_tokenizer(str(_directory(tmp_path, "file", jinja_file=QWEN)))
    assert jinja.render_chat("Hi").endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": DEEPSEEK}]
    listed = load_tokenizer(str(_directory(tmp_path, "list", named)))
    assert listed.render_chat("Hi") == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"
    plain = load_tokenizer(str(_directory(tmp_path, "none")))
    with pytest.raises(ValueError, match="no chat template"):
        plain.render_chat("Hi")
    with pytest.raises(ValueError, match="template 'chat' needs"):
        pipeline.prompt_renderer("chat", object())
    bad = "{% if messages %}{{ raise_exception('only one turn') }}{% endif %}"
    with pytest.raises(ValueError, match="chat template: only one turn"):
        templates.render_chat_template(bad, "Hi")
    with pytest.raises(ValueError, match="chat template: line 1"):
        templates.render_chat_template("{% if %}", "Hi")


def test_grpo_prompts_use_the_checkpoints_chat_template(tmp_path):
    tok = load_tokenizer(str(_directory(tmp_path, "tok", DEEPSEEK)))
    render = pipeline.prompt_renderer("chat", tok, "", "auto")
    row = {"prompt": "What is 2 + 2?", "answer": "4", "domain": "math"}
    assert render(row) == (
        f"<｜begin▁of▁sentence｜><｜User｜>What is 2 + 2?\n{templates.BOXED_INSTRUCTION}"
        "<｜Assistant｜><think>\n"
    )
