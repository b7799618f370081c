"""The `data` extra: TFDS sources, seqio tasks/mixtures and vocabulary adapters.

Skipped as a whole when the extra is not installed (`pip install 'r1[data]'`).
"""

import json

import numpy as np
import pytest

_REASON = "needs the `data` extra (seqio, tensorflow-datasets): pip install 'r1[data]'"
tfds = pytest.importorskip("tensorflow_datasets", reason=_REASON)
seqio = pytest.importorskip("seqio", reason=_REASON)

from r1.data import procedural, seqio_tasks, sources, templates  # noqa: E402
from r1.data import tokenizers as toks  # noqa: E402

ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
    {"question": "Broken", "answer": "no marker"},
    {"question": "Sum of 10 and 20?", "answer": "10+20=30\n#### 30"},
]


class R1TinyGsm8k(tfds.core.GeneratorBasedBuilder):
    """A three-row GSM8K-layout dataset built into a temporary TFDS data dir."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"question": tfds.features.Text(), "answer": tfds.features.Text()}
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from enumerate(ROWS)


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_load_tfds_from_a_prepared_data_dir(tmp_path, file_format):
    R1TinyGsm8k(data_dir=tmp_path, file_format=file_format).download_and_prepare()
    rows, report = sources.load_tfds("r1_tiny_gsm8k", "train", data_dir=tmp_path)
    assert sorted(r["answer"] for r in rows) == ["30", "7"]
    assert report.num_skipped == 1 and report.layout == "gsm8k"
    assert all(r["task"] == "r1_tiny_gsm8k" for r in rows)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        sources.load_tfds("r1_tiny_gsm8k", "train", data_dir=tmp_path / "empty")


def test_seqio_vocabulary_adapters():
    demo = toks.build_demo_tokenizer()
    vocab = toks.as_seqio_vocabulary(demo)
    text = templates.render_r1_zero("12+34")
    assert vocab.encode(text) == demo.encode(text)
    assert vocab.decode(demo.encode(text)) == text
    assert vocab.encode_tf(text).numpy().tolist() == demo.encode(text)
    assert vocab.vocab_size == demo.vocab_size and vocab.eos_id == demo.eos_id
    back = toks.SeqioTokenizer(seqio.ByteVocabulary())
    assert back.decode(back.encode("héllo <think>")) == "héllo <think>"
    assert back.bos_id is None and back.pad_id == 0 and back.tag_ids == {}
    wrapped = toks.SeqioTokenizer(vocab)
    assert wrapped.tag_ids == demo.tag_ids


def test_seqio_task_and_mixture(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    demo = toks.build_demo_tokenizer()
    task = seqio_tasks.register_task("r1_test_gsm8k", {"train": str(path)}, layout="gsm8k")
    seqio_tasks.register_task(
        "r1_test_add",
        {"test": lambda: procedural.fixed_set(procedural.Addition(max_terms=3), 0, 2)},
    )
    ds = task.get_dataset({"inputs": 256, "targets": 8}, split="train", shuffle=False)
    examples = list(ds.as_numpy_iterator())
    assert [e["answer"].decode() for e in examples] == ["7", "30"]
    first = examples[0]
    assert demo.decode(first["inputs"].tolist()) == templates.render_r1_zero(ROWS[0]["question"])
    assert first["targets"].tolist() == [*demo.encode("7"), demo.eos_id]
    assert first["difficulty"] == 1 and first["inputs"].dtype == np.int32

    add = seqio.get_mixture_or_task("r1_test_add").get_dataset(
        {"inputs": 64, "targets": 8}, split="test", shuffle=False
    )
    assert [int(e["difficulty"]) for e in add.as_numpy_iterator()] == [2, 2, 3, 3]

    seqio_tasks.register_task(
        "r1_test_add_train",
        {
            "train": lambda: procedural.fixed_set(
                procedural.Addition(max_terms=3), 0, 2, split="train"
            )
        },
    )
    mix = seqio_tasks.register_mixture("r1_test_mix", ["r1_test_gsm8k", ("r1_test_add_train", 2.0)])
    got = list(
        mix.get_dataset(
            {"inputs": 256, "targets": 8}, split="train", seed=0, shuffle=False, num_epochs=None
        )
        .take(6)
        .as_numpy_iterator()
    )
    assert len(got) == 6 and set(got[0]) == {"inputs", "targets"}  # mixtures keep output features
