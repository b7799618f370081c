"""Templates and tokenizers (r1.data.templates, r1.data.tokenizers)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1.data import templates
from r1.data import tokenizers as toks
from r1.testing import DummyTokenizer

# Typed from the R1 report (Table 1) / REFERENCE.md, joined with single spaces.
R1_ZERO_VERBATIM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)


# ------------------------------------------------------------------------------ templates
def test_r1_zero_template_verbatim():
    assert templates.R1_ZERO_TEMPLATE == R1_ZERO_VERBATIM
    assert templates.render_r1_zero("What is 2+3") == R1_ZERO_VERBATIM.replace(
        "{prompt}", "What is 2+3"
    )
    assert templates.R1_ZERO_PREFIX + "x" + templates.R1_ZERO_SUFFIX == templates.render_r1_zero(
        "x"
    )
    # Braces in the question are not format fields.
    assert templates.render_r1_zero("{a} {0}").endswith("User: {a} {0}. Assistant:")


def test_r1_zero_example():
    text = templates.render_r1_zero_example("1+2", "1+2=3", "3")
    assert text == templates.render_r1_zero("1+2") + " <think>1+2=3</think> <answer>3</answer>"
    assert templates.render_r1_zero_completion("", "3") == " <think></think> <answer>3</answer>"


def test_chat_deepseek_r1_strips_history_thinking_and_opens_think():
    msgs = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\none plus one\n</think>\n\n2"},
        {"role": "user", "content": "2+2?"},
    ]
    out = templates.render_chat(msgs, format="deepseek_r1", system="Be brief.")
    assert out == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>1+1?<｜Assistant｜>2<｜end▁of▁sentence｜>"
        "<｜User｜>2+2?<｜Assistant｜><think>\n"
    )
    kept = templates.render_chat(msgs, format="deepseek_r1", keep_thinking=True, open_think=False)
    assert "one plus one" in kept and kept.endswith("<｜Assistant｜>")


def test_chat_qwen_and_llama3():
    q = templates.render_chat("hi", format="qwen", system="sys", open_think=False)
    assert q == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    llama = templates.render_chat(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        format="llama3",
        open_think=False,
    )
    assert llama == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with pytest.raises(ValueError, match="format"):
        templates.render_chat("hi", format="nope")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        templates.render_chat([{"role": "bot", "content": "x"}])


@given(st.text(), st.text())
def test_readable_format_round_trip(reasoning, summary):
    tok = templates.READABLE_SPECIAL_TOKEN
    text = templates.render_readable(reasoning, summary)
    assert text == f"{tok}{reasoning}{tok}{summary}"
    if tok not in reasoning:
        assert templates.split_readable(text) == (reasoning, summary)
    pair = ("<think>\n", "\n</think>\n\n")
    if "\n</think>\n\n" not in reasoning and "<think>\n" not in reasoning:
        assert templates.split_readable(
            templates.render_readable(reasoning, summary, pair), pair
        ) == (
            reasoning,
            summary,
        )


# ------------------------------------------------------------------------------ demo tokenizer
def test_demo_tokenizer_compact_prompt():
    tok = toks.build_demo_tokenizer()
    assert tok.vocab_size <= 512
    prompt = templates.render_r1_zero("12+34+56+78")
    ids = tok.encode(prompt)
    assert len(ids) == 13  # template prefix, 11 characters, template suffix
    assert tok.decode(ids) == prompt
    assert tok.encode(prompt, add_bos=True) == [tok.bos_id, *ids]
    # Digits and operators are single tokens; tags are single tokens.
    assert all(len(tok.encode(c)) == 1 for c in "0123456789+-*/=()., ")
    assert set(tok.tag_ids) == set(templates.TAGS)
    completion = " <think>12+34=46</think> <answer>46</answer>"
    assert len(tok.encode(completion)) == 1 + 1 + 8 + 1 + 1 + 1 + 2 + 1
    assert toks.single_token_ids(tok) == tok.tag_ids
    assert isinstance(tok, toks.Tokenizer)


def test_demo_tokenizer_matches_dummy_byte_layout():
    tok, dummy = toks.build_demo_tokenizer(), DummyTokenizer()
    text = "héllo 12+3"
    assert tok.encode(text) == dummy.encode(text)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (dummy.pad_id, dummy.bos_id, dummy.eos_id)


def test_demo_tokenizer_json_round_trip(tmp_path):
    tok = toks.build_demo_tokenizer(extra_pieces=("Answer:",))
    path = tmp_path / "demo_tokenizer.json"
    tok.save(path)
    loaded = toks.load_tokenizer(path)
    assert loaded == tok and loaded.vocab_size == tok.vocab_size
    assert loaded.encode("Answer: 5") == tok.encode("Answer: 5")
    assert len(tok.encode("Answer: 5")) == 3
    assert toks.load_tokenizer("demo") == toks.build_demo_tokenizer()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        toks.DemoTokenizer.load(tmp_path / "bad.json")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_demo_tokenizer_round_trip(text):
    tok = toks.build_demo_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.pad_id not in ids and tok.eos_id not in ids and tok.bos_id not in ids


@given(st.lists(st.integers(-5, 600)))
def test_demo_tokenizer_decode_never_raises(ids):
    assert isinstance(toks.build_demo_tokenizer().decode(ids), str)


# ------------------------------------------------------------------------------ Hugging Face
def _build_hf_tokenizer(directory, *, bos=None, eos="<|endoftext|>", config=None):
    """A small byte-level BPE in the style of Qwen/Llama, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [s for s in (bos, eos, "<|im_start|>", "<|im_end|>") if s]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [templates.render_r1_zero(f"{i}+{i * 7}") + " the answer is" for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(list(templates.TAGS))
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def qwen_style(tmp_path_factory):
    d = _build_hf_tokenizer(
        tmp_path_factory.mktemp("qwen"),
        config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    )
    return toks.load_tokenizer(d)


def test_hf_tokenizer_specials(qwen_style, tmp_path):
    tok = qwen_style
    assert tok.bos_id is None
    assert tok.eos_id == tok._tok.token_to_id("<|im_end|>")
    assert tok.pad_id == tok._tok.token_to_id("<|endoftext|>")
    assert set(tok.tag_ids) == set(templates.TAGS)
    assert tok.encode("<think>", add_bos=True) == [tok.tag_ids["<think>"]]  # no BOS to add
    llama = toks.HFTokenizer.from_file(
        _build_hf_tokenizer(tmp_path / "llama", bos="<|begin_of_text|>", eos="<|end_of_text|>")
        / "tokenizer.json"
    )
    assert llama.bos_id == llama._tok.token_to_id("<|begin_of_text|>")
    assert llama.eos_id == llama.pad_id == llama._tok.token_to_id("<|end_of_text|>")
    ids = llama.encode("1+2", add_bos=True)
    assert ids[0] == llama.bos_id and llama.decode(ids) == "1+2"
    with pytest.raises(ValueError, match="eos token"):
        toks.HFTokenizer.from_file(tmp_path / "llama", eos_token="<nope>")
    with pytest.raises(FileNotFoundError):
        toks.load_tokenizer(tmp_path / "missing.json")


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_hf_tokenizer_round_trip(qwen_style, text):
    assert qwen_style.decode(qwen_style.encode(text)) == text


def test_hf_tokenizer_template_is_compact(qwen_style):
    prompt = templates.render_r1_zero("12+34")
    ids = qwen_style.encode(prompt)
    assert qwen_style.decode(ids) == prompt
    assert len(ids) < len(prompt) / 2  # BPE trained on the template compresses it
