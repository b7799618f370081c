"""grain prompt pipelines (r1.data.pipeline): batches, buckets, shards, checkpoint/restore."""

import collections

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1.data import pipeline, procedural, sources, templates
from r1.data.tokenizers import build_demo_tokenizer

TOK = build_demo_tokenizer()
BUCKETS = (16, 20)


def question_only(row):
    return row["prompt"]


@pytest.fixture(scope="module")
def rows():
    """61 addition rows (2..8 terms): 2-6 terms fit 20 tokens with BOS, 7-8 terms do not."""
    return [procedural.generate(procedural.Addition(), 5, i) for i in range(61)]


def too_long(row):
    return len(TOK.encode(row["prompt"], add_bos=True)) > max(BUCKETS)


def make(rows, **kw):
    kw = {
        "batch_size": 4,
        "buckets": BUCKETS,
        "seed": 0,
        "render": question_only,
        "process_index": 0,
        "process_count": 1,
        **kw,
    }
    return pipeline.prompt_dataset(sources.RowSource(rows), TOK, **kw)


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_contents_and_buckets(rows):
    it = iter(make(rows, num_epochs=1))
    batches = list(it)
    n_long = sum(map(too_long, rows))
    assert 0 < n_long < len(rows)
    assert it.stats() == {
        "rows": 4 * len(batches),
        "skipped_too_long": n_long,
        "batches": len(batches),
    }
    assert len(batches) == (len(rows) - n_long) // 4  # drop_remainder
    lengths_seen = set()
    for b in batches:
        bsz, length = b["tokens"].shape
        assert bsz == 4 and length in BUCKETS and b["tokens"].dtype == np.int32
        lengths_seen.add(length)
        assert b["mask"].dtype == bool and b["mask"].shape == (4, length)
        np.testing.assert_array_equal(b["lengths"], b["mask"].sum(1))
        assert length == min(x for x in BUCKETS if x >= b["lengths"].max())
        for i in range(4):
            n = b["lengths"][i]
            assert not b["mask"][i, : length - n].any() and b["mask"][i, length - n :].all()
            assert (b["tokens"][i, : length - n] == TOK.pad_id).all()
            assert b["tokens"][i, length - n] == TOK.bos_id
            assert TOK.decode(b["tokens"][i][b["mask"][i]]) == b["prompt"][i]
            assert b["prompt_text"][i] == b["prompt"][i]
            assert int(b["answer"][i]) == sum(map(int, b["prompt"][i].split("+")))
            assert b["difficulty"][i] == b["prompt"][i].count("+") + 1
        assert b["difficulty"].dtype == np.int32 and b["answer"].dtype == object
        assert b["valid"].all()
    assert lengths_seen == set(BUCKETS)


def test_partial_final_batch_and_r1_zero_render(rows):
    it = iter(
        make(
            rows[:6],
            num_epochs=1,
            drop_remainder=False,
            render=pipeline.render_r1_zero_row,
            buckets=(64,),
            fields=("answer", "difficulty", "terms"),
        )
    )
    batches = list(it)
    assert [b["valid"].sum() for b in batches] == [4, 2]
    last = batches[-1]
    assert not last["mask"][2:].any() and (last["lengths"][2:] == 0).all()
    assert last["difficulty"][2:].tolist() == [0, 0] and list(last["answer"][2:]) == [None, None]
    assert last["prompt_text"][0] == templates.render_r1_zero(
        next(r["prompt"] for r in rows[:6] if r["answer"] == last["answer"][0])
    )
    assert last["terms"].dtype == object  # lists stay Python objects


def test_shuffle_by_seed_and_epochs(rows):
    def order(seed, epochs=1):
        ds = make(rows, num_epochs=epochs, seed=seed, drop_remainder=False)
        return [i for b in ds for i, v in zip(b["id"], b["valid"]) if v]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    two = order(0, epochs=2)
    half = len(two) // 2
    assert collections.Counter(two) == collections.Counter(order(0) * 2)
    assert two[:half] != two[half:]  # every epoch is reshuffled
    unshuffled = make(rows, num_epochs=1, shuffle=False, drop_remainder=False)
    expect = [r["id"] for r in rows if not too_long(r)]
    assert [i for b in unshuffled for i, v in zip(b["id"], b["valid"]) if v] == expect


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_disjoint_and_cover(rows, count):
    shards = []
    for index in range(count):
        ds = make(
            rows, num_epochs=1, drop_remainder=False, process_index=index, process_count=count
        )
        shards.append([i for b in ds for i, v in zip(b["id"], b["valid"]) if v])
    for a in range(count):
        for b in range(a + 1, count):
            assert set(shards[a]).isdisjoint(shards[b])
    covered = [i for s in shards for i in s]
    assert len(covered) == len(set(covered))
    assert set(covered) == {r["id"] for r in rows if not too_long(r)}
    with pytest.raises(ValueError, match="process_index"):
        make(rows, process_index=2, process_count=2)


def test_default_process_is_jax():
    import jax

    assert pipeline.default_process() == (jax.process_index(), jax.process_count())


def test_restore_from_checkpoint_yields_the_same_next_batches(rows, tmp_path):
    ds = make(rows, num_epochs=3)
    unbroken = list(ds)
    it = iter(ds)
    first = [next(it) for _ in range(9)]  # crosses the first epoch boundary (12 per epoch)
    assert_batches_equal(first, unbroken[:9])

    # 1) through orbax's CheckpointManager, as the trainer will (grain's handler)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    # 2) through the helpers
    pipeline.save_iterator(tmp_path / "plain", it)
    state = it.get_state()
    rest = list(it)
    assert_batches_equal(rest, unbroken[9:])

    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        fresh = iter(ds)
        restored = mngr.restore(
            9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )["data"]
    assert restored.stats() == {"rows": 36, "skipped_too_long": state["num_skipped"], "batches": 9}
    assert_batches_equal(list(restored), unbroken[9:])

    fresh = pipeline.restore_iterator(tmp_path / "plain", iter(ds))
    assert_batches_equal([next(fresh) for _ in range(3)], unbroken[9:12])
    again = iter(ds)
    again.set_state(state)
    assert_batches_equal(list(again), unbroken[9:])


def test_procedural_source_pipeline_is_deterministic_and_unlimited():
    src = procedural.ProceduralSource(procedural.Addition(max_terms=4), seed=1)
    ds = pipeline.prompt_dataset(
        src, TOK, batch_size=8, buckets=(32,), shuffle=False, process_index=1, process_count=2
    )
    it = iter(ds)
    a = [next(it) for _ in range(3)]
    it2 = iter(ds)
    b = [next(it2) for _ in range(3)]
    assert_batches_equal(a, b)
    assert list(a[0]["id"]) == [f"add-train-1-{i}" for i in range(1, 16, 2)]
    assert a[0]["tokens"].shape == (8, 32)
    # BOS + template prefix + one token per character of the question + template suffix
    assert a[0]["lengths"].tolist() == [3 + len(p) for p in a[0]["prompt"]]


def test_tokenize_rows_for_fixed_sets():
    rows = procedural.fixed_set(procedural.Addition(), 0, 2)
    batch = pipeline.tokenize_rows(rows, TOK, buckets=(32, 64))
    assert batch["tokens"].shape == (14, 32)
    np.testing.assert_array_equal(batch["difficulty"], [d for d in range(2, 9) for _ in range(2)])
    with pytest.raises(ValueError, match="largest bucket"):
        pipeline.tokenize_rows(rows, TOK, buckets=(8,))


class _ChatTokenizer:
    """Stands in for a tokenizer with a chat template (records what it was asked to render)."""

    def render_chat(self, messages, *, system=None):
        head = f"[system]{system}" if system else ""
        return head + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def test_prompt_renderer_templates_and_the_answer_format_instruction():
    math = {"prompt": "What is 2+2?", "answer": "4", "domain": "math"}
    code = {"prompt": "Write f.", "tests": ["assert f()"], "domain": "code"}
    general = {"prompt": "Say hi.", "answer": "", "domain": "general"}
    r1_zero = pipeline.prompt_renderer("r1_zero")
    assert r1_zero(math) == templates.render_r1_zero("What is 2+2?")
    plain = pipeline.prompt_renderer("plain")
    assert plain(math) == f"What is 2+2?\n{templates.BOXED_INSTRUCTION}"
    assert plain(code) == "Write f." and plain(general) == "Say hi."
    chat = pipeline.prompt_renderer("chat", _ChatTokenizer(), "Be brief.", "Answer in words.")
    assert chat(code) == "[system]Be brief.[user]Write f.\nAnswer in words.[assistant]"
    assert pipeline.prompt_renderer("chat", _ChatTokenizer(), "", "")(math) == (
        "[user]What is 2+2?[assistant]"
    )
    with pytest.raises(ValueError, match="template 'chat' needs a tokenizer with a chat"):
        pipeline.prompt_renderer("chat", object())
    with pytest.raises(ValueError, match="template: expected one of"):
        pipeline.prompt_renderer("jinja")
