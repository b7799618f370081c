"""Tokenizers behind one small protocol.

* `Tokenizer`: the protocol every r1 component uses (`encode`, `decode`, `pad_id`, `eos_id`,
  `bos_id`, `vocab_size`, `tag_ids`).
* `HFTokenizer`: a Hugging Face `tokenizers` tokenizer from a local `tokenizer.json` (or a model
  directory holding one, with its `tokenizer_config.json`): Qwen, Llama, DeepSeek.
* `SeqioTokenizer` / `as_seqio_vocabulary`: adapters between seqio `Vocabulary` and this
  protocol, both ways (seqio and TensorFlow are imported only when these are called).
* `DemoTokenizer` / `build_demo_tokenizer`: the small tokenizer r1 ships for its CPU demo:
  byte fallback (any text round-trips) plus whole-string tokens for the R1-Zero template text,
  the `<think>`/`<answer>` tags and the countdown phrasing, so a demo prompt such as
  `render_r1_zero("12+34+56+78")` is 13 tokens (prefix, 11 characters, suffix).
* `load_tokenizer(spec)`: "demo", a demo-tokenizer JSON file, a `tokenizer.json`, or a directory.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from r1.data import templates

# ------------------------------------------------------------------------------ protocol


@runtime_checkable
class Tokenizer(Protocol):
    """What r1 needs from a tokenizer.

    Attributes:
      pad_id: id used for padding (batches also carry explicit masks: never infer them from it).
      eos_id: end-of-sequence id (sampling stops on it).
      bos_id: beginning-of-sequence id, or None when the family has none (Qwen).
      vocab_size: number of ids the tokenizer can produce (the model's embedding may be larger).
      tag_ids: `{"<think>": id, ...}` for each of `templates.TAGS` that is a single token.
    """

    pad_id: int
    eos_id: int
    bos_id: int | None
    vocab_size: int

    @property
    def tag_ids(self) -> Mapping[str, int]: ...

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; with `add_bos`, BOS first (when the tokenizer has one)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; pad/bos/eos ids are dropped, unknown ids ignored."""
        ...


def single_token_ids(tokenizer: Any, strings: Sequence[str] = templates.TAGS) -> dict[str, int]:
    """`{s: id}` for each string of `strings` that `tokenizer` encodes as exactly one token.

    Works for any object with `encode` (e.g. `r1.testing.DummyTokenizer`, which has no tag ids:
    the result is then empty).
    """
    out = {}
    for s in strings:
        ids = tokenizer.encode(s)
        if len(ids) == 1:
            out[s] = int(ids[0])
    return out


# ------------------------------------------------------------------------------ demo tokenizer
DEMO_FORMAT = "r1-demo-tokenizer"
DEMO_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Whole-string tokens of the shipped demo tokenizer, in id order after the byte tokens.
# Append only: ids of existing pieces must not move (saved models depend on them).
DEMO_PIECES = (
    *templates.TAGS,
    templates.R1_ZERO_PREFIX,
    templates.R1_ZERO_SUFFIX,
    # Countdown phrasing (see r1.data.procedural.countdown_prompt).
    "Using the numbers ",
    ", create an equation that equals ",
    ". You can use basic arithmetic operations (+, -, *, /) and each number can only be used once",
)


class DemoTokenizer:
    """Greedy longest-match over whole-string pieces, UTF-8 byte fallback for everything else.

    Ids: `0..S-1` the special tokens (default `<pad>`, `<bos>`, `<eos>`, never produced by
    `encode` from text), then 256 byte tokens (byte `b` is id `S + b`; with the default three
    specials this is exactly `r1.testing.DummyTokenizer`'s layout), then one id per piece.
    Every string round-trips: `decode(encode(s)) == s`. Digits, operators and spaces are single
    (byte) tokens, so arithmetic tokenises one character per token.
    """

    def __init__(
        self,
        pieces: Sequence[str] = DEMO_PIECES,
        special_tokens: Sequence[str] = DEMO_SPECIAL_TOKENS,
    ):
        pieces = tuple(pieces)
        special_tokens = tuple(special_tokens)
        if len(special_tokens) < 3:
            raise ValueError(
                f"special_tokens: expected at least pad, bos, eos, got {special_tokens}"
            )
        if len(set(pieces)) != len(pieces) or any(len(p) < 2 for p in pieces):
            raise ValueError("pieces: expected distinct strings of two or more characters")
        self.pieces = pieces
        self.special_tokens = special_tokens
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._byte_offset = len(special_tokens)
        self._piece_offset = self._byte_offset + 256
        self.vocab_size = self._piece_offset + len(pieces)
        self._piece_id = {p: self._piece_offset + i for i, p in enumerate(pieces)}
        self._id_bytes: list[bytes] = (
            [b""] * len(special_tokens)
            + [bytes([b]) for b in range(256)]
            + [p.encode("utf-8") for p in pieces]
        )
        by_length = sorted(pieces, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(p) for p in by_length)) if pieces else None

    @property
    def tag_ids(self) -> dict[str, int]:
        return {t: self._piece_id[t] for t in templates.TAGS if t in self._piece_id}

    def token_id(self, piece: str) -> int | None:
        """Id of a whole-string piece, or None."""
        return self._piece_id.get(piece)

    def _bytes(self, text: str) -> list[int]:
        return [self._byte_offset + b for b in text.encode("utf-8")]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        pos = 0
        if self._pattern is not None:
            for m in self._pattern.finditer(text):
                ids += self._bytes(text[pos : m.start()])
                ids.append(self._piece_id[m.group()])
                pos = m.end()
        ids += self._bytes(text[pos:])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        n = self.vocab_size
        data = b"".join(self._id_bytes[i] for i in map(int, ids) if 0 <= i < n)
        return data.decode("utf-8", errors="replace")

    def id_to_string(self, i: int) -> str:
        """Readable form of one id (specials by name, bytes as text or `<0xNN>`)."""
        if i < self._byte_offset:
            return self.special_tokens[i]
        if i < self._piece_offset:
            b = i - self._byte_offset
            return chr(b) if 32 <= b < 127 else f"<0x{b:02X}>"
        return self.pieces[i - self._piece_offset]

    # -- serialisation
    def to_json(self) -> str:
        return json.dumps(
            {
                "format": DEMO_FORMAT,
                "version": 1,
                "special_tokens": list(self.special_tokens),
                "num_byte_tokens": 256,
                "pieces": list(self.pieces),
            },
            ensure_ascii=False,
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, *, name: str = "<string>") -> DemoTokenizer:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not a demo tokenizer JSON ({e})") from e
        if not isinstance(obj, dict) or obj.get("format") != DEMO_FORMAT:
            raise ValueError(f"{name}: expected a JSON object with format={DEMO_FORMAT!r}")
        if obj.get("num_byte_tokens") != 256 or obj.get("version") != 1:
            raise ValueError(f"{name}: unsupported version/num_byte_tokens")
        return cls(pieces=obj["pieces"], special_tokens=obj["special_tokens"])

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DemoTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), name=str(path))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DemoTokenizer)
            and self.pieces == other.pieces
            and self.special_tokens == other.special_tokens
        )

    def __hash__(self) -> int:
        return hash((self.pieces, self.special_tokens))

    def __repr__(self) -> str:
        return f"DemoTokenizer(vocab_size={self.vocab_size}, pieces={len(self.pieces)})"


def build_demo_tokenizer(extra_pieces: Sequence[str] = ()) -> DemoTokenizer:
    """The tokenizer of r1's CPU demo: `DEMO_PIECES` plus `extra_pieces` (vocab 268 + extras)."""
    return DemoTokenizer(pieces=(*DEMO_PIECES, *extra_pieces))


# ------------------------------------------------------------------------------ Hugging Face
_BOS_CANDIDATES = ("<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<s>", "<bos>")
_EOS_CANDIDATES = (
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<|endoftext|>",
    "</s>",
    "<eos>",
    "<|im_end|>",
    "<|eot_id|>",
)
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "<｜▁pad▁｜>", "<|finetune_right_pad_id|>", "<|endoftext|>")


# The special tokens transformers passes to chat templates (its `special_tokens_map`).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _chat_template(value: Any, where: str) -> str | None:
    """tokenizer_config's `chat_template`: a string, or a list of {"name", "template"} of which
    the one named "default" is used (None when there is none: transformers too loads such a
    tokenizer and fails only when asked to render)."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        default = named.get("default")
        return default if isinstance(default, str) and default else None
    raise ValueError(f"{where}: chat_template must be a string or a list of named templates")


def _token_content(value: Any) -> str | None:
    """A special token's text: a string, or an AddedToken dict's `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in `path`, or {} when there is no such file."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def read_tokenizer_config(directory: str | os.PathLike) -> tuple[dict[str, str], str | None]:
    """`(special_tokens, chat_template)` of a model directory, as transformers reads them.

    special_tokens: `{name: text}` for each of `SPECIAL_TOKEN_NAMES` set in
      tokenizer_config.json; special_tokens_map.json overrides those only when the config has
      no `added_tokens_decoder` (older checkpoints), as in transformers.
    chat_template: chat_template.jinja when present (newer transformers save it there, and it
      wins over the config), else tokenizer_config.json's `chat_template`, else None.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json_object(config_path)
    sources = [config]
    if "added_tokens_decoder" not in config:
        sources.append(_read_json_object(os.path.join(directory, "special_tokens_map.json")))
    special: dict[str, str] = {}
    for source in sources:
        for name in SPECIAL_TOKEN_NAMES:
            if (text := _token_content(source.get(name))) is not None:
                special[name] = text
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            return special, f.read() or None
    return special, _chat_template(config.get("chat_template"), config_path)


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` behind the r1 protocol.

    `encode` never lets the tokenizer's post-processor add special tokens: BOS is added only by
    `add_bos=True`, so prompts are tokenised identically for every family.

    Attributes (besides the protocol's):
      chat_template: the checkpoint's Jinja chat template, or None (`render_chat` renders it).
      special_tokens: `{"bos_token": text, "eos_token": text, ...}` as the tokenizer's config
        spells them (`SPECIAL_TOKEN_NAMES`; the variables chat templates see).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        name: str = "tokenizer",
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ):
        self._tok = tokenizer
        self.name = name
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

        def find(token: str | None, candidates: Sequence[str], what: str) -> int | None:
            if token is not None:
                i = tokenizer.token_to_id(token)
                if i is None:
                    raise ValueError(f"{name}: {what} token {token!r} is not in the vocabulary")
                return int(i)
            for c in candidates:
                i = tokenizer.token_to_id(c)
                if i is not None:
                    return int(i)
            return None

        self.bos_id = find(bos_token, _BOS_CANDIDATES, "bos")
        eos = find(eos_token, _EOS_CANDIDATES, "eos")
        if eos is None:
            raise ValueError(f"{name}: no eos token found; pass eos_token")
        self.eos_id = eos
        pad = find(pad_token, _PAD_CANDIDATES, "pad")
        self.pad_id = eos if pad is None else pad
        self._tag_ids = {
            t: int(i) for t in templates.TAGS if (i := tokenizer.token_to_id(t)) is not None
        }

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> HFTokenizer:
        """Load `tokenizer.json`, or a model directory holding it.

        Special tokens come from `overrides` (`bos_token`, `eos_token`, `pad_token`), else the
        directory's `tokenizer_config.json` / `special_tokens_map.json`, else well-known names
        (`<|begin_of_text|>`, `<｜begin▁of▁sentence｜>`, `<|endoftext|>`, ...). The chat template
        and the special-token texts templates see come from `read_tokenizer_config`.
        """
        import tokenizers  # noqa: PLC0415 - light, but only needed here

        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: no tokenizer.json")
        try:
            tok = tokenizers.Tokenizer.from_file(file)
        except Exception as e:
            raise ValueError(f"{file}: not a Hugging Face tokenizer.json ({e})") from e
        special, chat_template = read_tokenizer_config(directory)
        special.update(
            {k: v for k, v in overrides.items() if k in SPECIAL_TOKEN_NAMES and isinstance(v, str)}
        )
        kwargs = {k: special.get(k) for k in ("bos_token", "eos_token", "pad_token")}
        kwargs.update(overrides)
        return cls(tok, name=file, chat_template=chat_template, special_tokens=special, **kwargs)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, str]] | str,
        *,
        add_generation_prompt: bool = True,
        system: str | None = None,
    ) -> str:
        """`messages` (or one user message as a string) rendered with this tokenizer's own chat
        template, as transformers' `apply_chat_template(..., tokenize=False)` renders it
        (`templates.render_chat_template`, with this tokenizer's `special_tokens`).

        system: a system turn put first, unless `messages` already starts with one (that one
        wins); None or "" adds none (the template's own default system prompt, if any, applies).
        Raises ValueError naming this tokenizer when it has no chat template.
        """
        if not self.chat_template:
            raise ValueError(
                f"{self.name}: no chat template (tokenizer_config.json has no `chat_template`, "
                "nor a list of templates with one named 'default', and there is no "
                "chat_template.jinja); use data.template='r1_zero' or 'plain'"
            )
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}, *messages]
        return templates.render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
        )

    @property
    def tag_ids(self) -> dict[str, int]:
        return dict(self._tag_ids)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            return [self.bos_id, *ids]
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        drop = {self.pad_id, self.eos_id, self.bos_id}
        n = self.vocab_size
        return self._tok.decode(
            [int(i) for i in ids if int(i) not in drop and 0 <= int(i) < n],
            skip_special_tokens=False,
        )

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------ seqio
class SeqioTokenizer:
    """A seqio `Vocabulary` (SentencePiece, byte, ...) behind the r1 protocol.

    seqio vocabularies have no BOS; pad is seqio's 0.
    """

    bos_id = None

    def __init__(self, vocabulary: Any):
        self.vocabulary = vocabulary
        self.pad_id = int(vocabulary.pad_id)
        self.eos_id = int(vocabulary.eos_id)
        self.vocab_size = int(vocabulary.vocab_size)
        self._tag_ids = single_token_ids(self)

    @property
    def tag_ids(self) -> dict[str, int]:
        return dict(self._tag_ids)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        del add_bos  # no BOS in seqio vocabularies
        return [int(i) for i in self.vocabulary.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        drop = {self.pad_id, self.eos_id}
        return self.vocabulary.decode([int(i) for i in ids if int(i) not in drop])


def as_seqio_vocabulary(tokenizer: Tokenizer) -> Any:
    """A `seqio.Vocabulary` wrapping an r1 tokenizer (for seqio tasks; imports seqio and TF).

    `encode_tf` runs the Python tokenizer through `tf.py_function` on scalar strings. Two
    wrappers are equal when their tokenizers are equal (seqio mixtures require equal
    vocabularies across tasks).
    """
    return _r1_vocabulary_class()(tokenizer)


@functools.cache
def _r1_vocabulary_class() -> type:
    import seqio  # noqa: PLC0415 - optional `data` extra
    import tensorflow as tf  # noqa: PLC0415

    class R1Vocabulary(seqio.Vocabulary):
        def __init__(self, tokenizer: Tokenizer):
            super().__init__(extra_ids=0)
            self.tokenizer = tokenizer

        @property
        def eos_id(self) -> int:
            return int(self.tokenizer.eos_id)

        @property
        def pad_id(self) -> int:
            return int(self.tokenizer.pad_id)

        @property
        def unk_id(self) -> int | None:
            return None

        @property
        def _base_vocab_size(self) -> int:
            return int(self.tokenizer.vocab_size)

        def _encode(self, s: str) -> list[int]:
            return self.tokenizer.encode(s)

        def _decode(self, ids: Sequence[int]) -> str:
            return self.tokenizer.decode([int(i) for i in ids])

        def _encode_tf(self, s: Any) -> Any:
            def fn(x):
                return tf.constant(self.tokenizer.encode(x.numpy().decode("utf-8")), tf.int32)

            out = tf.py_function(fn, [s], Tout=tf.int32)
            out.set_shape([None])
            return out

        def _decode_tf(self, ids: Any) -> Any:
            def fn(x):
                return tf.constant(self.tokenizer.decode(x.numpy().tolist()))

            out = tf.py_function(fn, [ids], Tout=tf.string)
            out.set_shape([])
            return out

        def __eq__(self, other: object) -> bool:
            return isinstance(other, R1Vocabulary) and (
                other.tokenizer is self.tokenizer or other.tokenizer == self.tokenizer
            )

        def __hash__(self) -> int:
            try:
                return hash(self.tokenizer)
            except TypeError:
                return id(self.tokenizer)

    return R1Vocabulary


# ------------------------------------------------------------------------------ loading
def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a spec: "demo" (the shipped demo tokenizer), a demo-tokenizer JSON file,
    a Hugging Face `tokenizer.json`, or a directory holding `tokenizer.json`."""
    spec = os.fspath(spec)
    if spec == "demo":
        return build_demo_tokenizer()
    if os.path.isdir(spec):
        return HFTokenizer.from_file(spec)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{spec}: no such tokenizer file (or use 'demo')")
    with open(spec, encoding="utf-8") as f:
        head = f.read(4096)
    if DEMO_FORMAT in head:
        return DemoTokenizer.load(spec)
    return HFTokenizer.from_file(spec)
