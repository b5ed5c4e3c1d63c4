"""Instruction-tuning data (``format: chat``): assistant-only labels, truncation, padding, packing, mixture, cache."""

import copy
import json
import re

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import babelmerge.data.prepare as prepare_mod
from babelmerge.chat import DEFAULT_CHAT_TEMPLATE, render
from babelmerge.data import BlockDataset, DataConfig, SourceConfig, make_slices, prepare_data
from babelmerge.errors import BabelmergeError
from babelmerge.tiny import make_tiny_llama, train_tokenizer

EN = "the cat dog sat on mat and ran far away house tree river old new green small big".split()
BG = "котка куче седи на под и тича далеч къща дърво река стар нов зелен малък голям".split()
BLOCK = 64
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _sentence(rng, words, lo, hi):
    return " ".join(rng.choice(words, size=int(rng.integers(lo, hi))))


def _convs(words, n, seed, *, turns=1, system=False, lo=2, hi=7):
    """``n`` conversations of ``turns`` user/assistant exchanges (an optional system message first)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": _sentence(rng, words, 2, 4)}] if system else []
        for _ in range(turns):
            msgs.append({"role": "user", "content": _sentence(rng, words, lo, hi)})
            msgs.append({"role": "assistant", "content": _sentence(rng, words, lo, hi)})
        out.append(msgs)
    return out


def _write_jsonl(path, convs, *, pairs=False):
    lines = []
    for msgs in convs:
        rec = {"prompt": msgs[0]["content"], "response": msgs[1]["content"]} if pairs else {"messages": msgs}
        lines.append(json.dumps(rec, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [_sentence(rng, EN, 3, 12) for _ in range(100)] + [_sentence(rng, BG, 3, 12) for _ in range(100)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


def _cfg(tmp_path, sources, **kw):
    kw.setdefault("block_size", BLOCK)
    return DataConfig(sources=sources, format="chat", cache_dir=str(tmp_path / "cache"), **kw)


def _ids(tok, msgs):
    """The reference token ids of a conversation: its rendering tokenized as a whole."""
    return tok(render(tok, msgs), add_special_tokens=False)["input_ids"]


def _expected_labels(tok, msgs):
    """Token-by-token reference mask for ASCII conversations, independent of the implementation: a token
    is trained iff its characters (found by decoding the growing prefix) lie in an assistant's content
    or in the EOS right after it."""
    text = render(tok, msgs)
    ids = _ids(tok, msgs)
    trained, at = [], 0
    for m in msgs:
        if m["role"] == "assistant":
            at = text.index(m["content"] + tok.eos_token, at)
            trained.append((at, at + len(m["content"]) + len(tok.eos_token)))
            at += len(m["content"])
    labels, end = [], 0
    for i, t in enumerate(ids):
        start, end = end, len(tok.decode(ids[: i + 1]))
        inside = any(a <= start and end <= b for a, b in trained)
        labels.append(t if inside else -100)
    assert tok.decode(ids) == text
    return ids, labels


def _rows_by_example(data):
    """``{tuple(real ids of an example): labels}`` for every example in the (unpacked or packed) rows."""
    out = {}
    for r in range(len(data)):
        n = int(data.row_tokens[r])
        ids, labels = data.input_ids[r, :n].tolist(), data.labels[r, :n].tolist()
        pos = data.position_ids[r, :n].tolist() if data.position_ids is not None else list(range(n))
        starts = [i for i, p in enumerate(pos) if p == 0] + [n]
        for a, b in zip(starts, starts[1:]):
            out.setdefault(tuple(ids[a:b]), []).append(labels[a:b])
    return out


# ---- masking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [None, CHATML])
def test_labels_mask_everything_but_assistant_tokens_multi_turn(tmp_path, tok, template):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    convs = _convs(EN, 30, 1, turns=2, system=True)
    src = _write_jsonl(tmp_path / "en.jsonl", convs)
    data = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], block_size=256), tok)
    assert render(tok, convs[0]).startswith("<s><|system|>" if template is None else "<|im_start|>system")
    assert data.stats["en"]["n_truncated"] == 0 and data.position_ids is None
    by_example = _rows_by_example(data)
    assert len(by_example) == len(convs)
    for msgs in convs:
        ids, expected = _expected_labels(tok, msgs)
        assert by_example[tuple(ids)] == [expected]
        # the trained runs decode to exactly the assistant contents, each with its EOS
        runs, run = [], []
        for t, lab in zip(ids + [None], expected + [-100]):
            if lab != -100:
                run.append(t)
            elif run:
                runs, run = runs + [tok.decode(run)], []
        assert runs == [m["content"] + "</s>" for m in msgs if m["role"] == "assistant"]


def test_prompt_response_format_and_non_ascii(tmp_path, tok):
    convs = _convs(BG, 40, 2)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", convs, pairs=True)
    msgs = _write_jsonl(tmp_path / "msgs.jsonl", convs)
    a = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(pairs))], block_size=256), tok)
    b = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(msgs))], block_size=256), tok)
    assert a.stats["pairs"]["n_truncated"] == 0 and len(a) == 40
    # prompt/response is one user turn and one assistant turn
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    for r in range(len(a)):
        text = tok.decode(a.input_ids[r, : a.row_tokens[r]])
        trained = tok.decode([t for t in a.labels[r] if t != -100])
        user, answer = re.fullmatch(r"<s><\|user\|>\n(.*)\n<\|assistant\|>\n(.*)</s>\n", text).groups()
        assert trained == answer + "</s>"
        assert [user, answer] in [[m[0]["content"], m[1]["content"]] for m in convs]


def test_default_template_is_used_without_one(tok):
    assert tok.chat_template is None
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat"}]
    assert render(tok, msgs) == "<s><|user|>\nthe cat\n<|assistant|>\nsat</s>\n"
    assert "bos_token" in DEFAULT_CHAT_TEMPLATE


def test_template_without_eos_in_the_turn_trains_the_whole_turn(tmp_path, tok):
    tok = copy.deepcopy(tok)
    tok.chat_template = CHATML.replace(
        "{{ eos_token }}{% else %}<|im_end|>{% endif %}", "{% endif %}<|im_end|>"
    )
    convs = _convs(EN, 5, 3)
    data = prepare_data(
        _cfg(tmp_path, [SourceConfig(path=str(_write_jsonl(tmp_path / "x.jsonl", convs)))], block_size=256),
        tok,
    )
    assert data.stats["x"]["n_truncated"] == 0
    trained = sorted(tok.decode([t for t in row if t != -100]) for row in data.labels)
    assert trained == sorted(m[1]["content"] + "<|im_end|>\n" for m in convs)


# ---- truncation, padding, packing --------------------------------------------------------------------


def test_truncation_is_counted_and_padding_rows(tmp_path, tok):
    row_len = 128
    convs = _convs(EN, 40, 4, lo=2, hi=30)
    convs[7][0]["content"] = " ".join(["river"] * 150)  # a prompt longer than a row
    src = _write_jsonl(tmp_path / "en.jsonl", convs)
    data = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], block_size=row_len), tok)
    lengths = [len(_ids(tok, m)) for m in convs]
    prompts = [
        len(tok(render(tok, m[:1], add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for m in convs
    ]
    kept = [n for n, p in zip(lengths, prompts) if p < row_len]  # a prompt filling max_length trains nothing
    n_long, n_dropped = sum(n > row_len for n in lengths), len(lengths) - len(kept)
    assert n_long > n_dropped >= 1 and len(kept) - (n_long - n_dropped) >= 10  # every case occurs
    assert data.stats["en"]["n_truncated"] == n_long
    assert data.stats["en"]["n_dropped"] == n_dropped
    assert data.stats["en"]["n_examples"] == 40 and len(data) == len(kept)
    assert sorted(data.row_tokens.tolist()) == sorted(min(n, row_len) for n in kept)
    assert data.n_tokens == sum(min(n, row_len) for n in kept)  # real tokens, not padding
    pad = tok.pad_token_id
    for r in range(len(data)):
        n = data.row_tokens[r]
        assert np.all(data.input_ids[r, n:] == pad) and np.all(data.labels[r, n:] == -100)
        assert pad not in data.input_ids[r, :n]
        assert np.any(data.labels[r] != -100)
    examples = _rows_by_example(data)
    for m, n in zip(convs, lengths):
        ids, labels = _expected_labels(tok, m)
        if n <= row_len:
            assert examples[tuple(ids)] == [labels]
        elif tuple(ids[:row_len]) in examples:  # truncated: the first max_length tokens, labels alike
            assert examples[tuple(ids[:row_len])] == [labels[:row_len]]
    item = BlockDataset(data)[0]
    assert set(item) == {"input_ids", "labels"} and item["input_ids"].dtype == torch.int64


def test_packing_keeps_examples_whole_and_separate(tmp_path, tok):
    convs = _convs(EN, 60, 5, hi=5)
    src = _write_jsonl(tmp_path / "en.jsonl", convs)
    padded = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], block_size=256), tok)
    packed = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], block_size=256, packing=True), tok)
    assert packed.stats["en"]["n_truncated"] == 0 and packed.position_ids is not None
    assert len(packed) < len(padded) / 2  # several examples per row
    assert _rows_by_example(packed) == _rows_by_example(padded)  # the same examples, whole, same labels
    assert packed.n_tokens == padded.n_tokens

    # Losses per token: the examples packed into a row equal the same examples run alone.
    model = make_tiny_llama(seed=0, vocab_size=len(tok), hidden_size=32, intermediate_size=64)
    model.config.use_cache = False  # required: with a KV cache transformers ignores packed position_ids
    row = int(
        np.argmax(
            [
                len(set(np.flatnonzero(p == 0)) - {int(n)})
                for p, n in zip(packed.position_ids, packed.row_tokens)
            ]
        )
    )
    item = BlockDataset(packed)[row]
    n = int(packed.row_tokens[row])
    starts = [i for i in np.flatnonzero(packed.position_ids[row, :n] == 0)] + [n]
    assert len(starts) >= 4
    with torch.no_grad():
        logits = model(**{k: v[None] for k, v in item.items() if k != "labels"}).logits[0]
        together = torch.nn.functional.cross_entropy(logits[:-1], item["input_ids"][1:], reduction="none")
        for a, b in zip(starts, starts[1:]):
            alone_logits = model(input_ids=item["input_ids"][None, a:b]).logits[0]
            alone = torch.nn.functional.cross_entropy(
                alone_logits[:-1], item["input_ids"][a + 1 : b], reduction="none"
            )
            torch.testing.assert_close(together[a : b - 1], alone, atol=1e-5, rtol=1e-4)
        # the same row without position_ids lets later examples see earlier ones: the check can fail
        leaky = model(input_ids=item["input_ids"][None]).logits[0]
        assert not torch.allclose(leaky[starts[1] : n], logits[starts[1] : n], atol=1e-3)


# ---- mixture, slices, cache, sources --------------------------------------------------------------------


def test_mixture_with_english_replay_holds_token_ratios(tmp_path, tok):
    bg = _write_jsonl(tmp_path / "bg.jsonl", _convs(BG, 300, 6))
    en = _write_jsonl(tmp_path / "en.jsonl", _convs(EN, 300, 7))
    srcs = [SourceConfig(path=str(bg), ratio=3), SourceConfig(path=str(en), ratio=1)]
    budget = 6000
    data = prepare_data(_cfg(tmp_path, srcs, token_budget=budget, packing=True, max_length=48), tok)
    tokens = np.bincount(data.source, weights=data.row_tokens, minlength=2)
    biggest_row = int(data.row_tokens.max())
    for got, target in zip(tokens, [4500, 1500]):
        assert target - biggest_row < got <= target
    shares = data.source_token_shares()
    assert abs(shares["bg"] - 0.75) < 0.02 and data.n_tokens == tokens.sum()
    for row, s, n in zip(data.input_ids, data.source, data.row_tokens):  # rows never mix sources
        text = tok.decode(row[:n])
        assert not re.search(
            "[а-я]" if s == 1 else "[a-z]{2}", text.replace("assistant", "").replace("user", "")
        )
    assert 0 < data.source[: len(data) // 2].mean() < 1  # shuffled

    # without a budget: as much as the data allows, the limiting source is used completely
    whole = prepare_data(_cfg(tmp_path, srcs, packing=True, max_length=48), tok)
    have = np.array([whole.stats["bg"]["n_tokens"], whole.stats["en"]["n_tokens"]])
    most = min(have / [0.75, 0.25])
    t = np.bincount(whole.source, weights=whole.row_tokens, minlength=2)
    for got, target, available in zip(t, np.floor(most * np.array([0.75, 0.25])), have):
        assert target - biggest_row < got <= target
        if target == available:
            assert got == available


def test_slices_keep_labels_and_position_ids(tmp_path, tok):
    src = _write_jsonl(tmp_path / "en.jsonl", _convs(EN, 200, 8))
    data = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], packing=True, max_length=32), tok)
    lookup = {
        row.tobytes(): (lab, pos, n)
        for row, lab, pos, n in zip(data.input_ids, data.labels, data.position_ids, data.row_tokens)
    }
    slices = make_slices(data, 3, seed=1)
    assert sum(len(s) for s in slices) == len(data) - len(data) % 3
    for sl in slices:
        assert sl.position_ids is not None and sl.row_tokens is not None
        for row, lab, pos, n in zip(sl.input_ids, sl.labels, sl.position_ids, sl.row_tokens):
            want = lookup[row.tobytes()]
            np.testing.assert_array_equal(lab, want[0])
            np.testing.assert_array_equal(pos, want[1])
            assert n == want[2]
        item = BlockDataset(sl)[0]
        np.testing.assert_array_equal(item["position_ids"].numpy(), sl.position_ids[0])


def test_cache_is_keyed_by_chat_settings(tmp_path, tok, monkeypatch):
    src = _write_jsonl(tmp_path / "en.jsonl", _convs(EN, 50, 9))
    cfg = _cfg(tmp_path, [SourceConfig(path=str(src))], block_size=128, packing=True)
    first = prepare_data(cfg, tok)
    assert first.cache_hit == {"en": False}

    def boom(*a, **k):
        raise AssertionError("encoded although cached")

    monkeypatch.setattr(prepare_mod, "encode_conversations", boom)
    second = prepare_data(cfg, tok)
    assert second.cache_hit == {"en": True} and second.stats == first.stats
    for attr in ("input_ids", "labels", "position_ids", "row_tokens", "source"):
        np.testing.assert_array_equal(getattr(first, attr), getattr(second, attr))
    templated = copy.deepcopy(tok)
    templated.chat_template = CHATML
    for other_cfg, other_tok in [
        (cfg.model_copy(update={"max_length": 64}), tok),
        (cfg.model_copy(update={"packing": False}), tok),
        (cfg.model_copy(update={"block_size": 96}), tok),
        (cfg, templated),
    ]:
        with pytest.raises(AssertionError, match="encoded although cached"):
            prepare_data(other_cfg, other_tok)


def test_hf_dataset_by_name_matches_local_file(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    convs = _convs(EN, 30, 10, turns=2)
    jsonl = _write_jsonl(tmp_path / "c.jsonl", convs)
    folder = tmp_path / "chatset"
    folder.mkdir()
    pq.write_table(pa.table({"messages": convs, "id": list(range(30))}), folder / "train.parquet")
    ref = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(jsonl))]), tok)
    for src in [
        SourceConfig(path=str(folder)),
        SourceConfig(hf_dataset=str(folder)),
        SourceConfig(hf_dataset=str(folder), streaming=True),
    ]:
        got = prepare_data(_cfg(tmp_path, [src]), tok)
        assert _rows_by_example(got) == _rows_by_example(ref)


def test_num_proc_2_matches_serial(tmp_path, tok):
    src = _write_jsonl(tmp_path / "en.jsonl", _convs(EN, 120, 11, turns=2))
    one = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(src))], block_size=256, batch_size=20), tok)
    cfg2 = _cfg(tmp_path, [SourceConfig(path=str(src))], block_size=256, batch_size=20, num_proc=2)
    two = prepare_data(cfg2.model_copy(update={"cache_dir": str(tmp_path / "cache2")}), tok)
    assert two.cache_hit == {"en": False}
    for attr in ("input_ids", "labels", "row_tokens"):
        np.testing.assert_array_equal(getattr(one, attr), getattr(two, attr))


# ---- pure layout and mixture arithmetic ---------------------------------------------------------------


def test_bin_pack_best_fit_decreasing():
    from babelmerge.data.packing import bin_pack

    assert bin_pack([5, 3, 7, 2, 4, 6], 10) == [[2, 1], [5, 4], [0, 3]]  # 7+3, 6+4, 5+2 (best fit)
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 33, size=int(rng.integers(1, 60))).tolist()
        bins = bin_pack(lengths, 32)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each item exactly once
        fills = [sum(lengths[i] for i in b) for b in bins]
        assert max(fills) <= 32
        assert sum(f <= 16 for f in fills) <= 1  # best fit leaves at most one bin half empty
    with pytest.raises(ValueError, match="exceeds"):
        bin_pack([33], 32)


def test_pack_examples_positions_and_padding():
    from babelmerge.data.packing import pack_examples, pad_examples, truncate_examples

    ex = [
        (np.arange(1, 4, dtype=np.int32), np.array([-100, 2, 3], dtype=np.int32)),
        (np.arange(10, 15, dtype=np.int32), np.array([-100, -100, 12, 13, 14], dtype=np.int32)),
    ]
    rows = pack_examples(ex, 10, pad_id=0)
    np.testing.assert_array_equal(rows.input_ids, [[10, 11, 12, 13, 14, 1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(rows.labels, [[-100, -100, 12, 13, 14, -100, 2, 3, -100, -100]])
    np.testing.assert_array_equal(rows.position_ids, [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]])
    assert rows.row_tokens.tolist() == [8]
    padded = pad_examples(ex, 6, pad_id=0)
    np.testing.assert_array_equal(padded.input_ids, [[1, 2, 3, 0, 0, 0], [10, 11, 12, 13, 14, 0]])
    assert padded.position_ids is None and padded.row_tokens.tolist() == [3, 5]
    kept, n_truncated, n_dropped = truncate_examples(ex, 2)
    assert (n_truncated, n_dropped) == (2, 1) and [k[0].tolist() for k in kept] == [[1, 2]]


def test_token_targets_closed_form():
    from babelmerge.data.mixture import token_targets

    assert token_targets([1000, 1000], [3, 1], ["bg", "en"], 800) == [600, 200]
    assert token_targets([900, 1000], [3, 1], ["bg", "en"], None) == [900, 300]  # bg limits
    assert token_targets([1000, 100], [3, 1], ["bg", "en"], None) == [300, 100]  # en limits
    with pytest.raises(BabelmergeError, match=r"maximum budget is 400 tokens \(limited by 'en'\)"):
        token_targets([1000, 100], [3, 1], ["bg", "en"], 500)
