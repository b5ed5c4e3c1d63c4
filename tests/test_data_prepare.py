"""End-to-end ``prepare_data`` on small files with a tiny trained tokenizer: loaders, EOS, mixture, cache, errors."""

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import babelmerge.data.prepare as prepare_mod
from babelmerge.data import DataConfig, PackedData, SourceConfig, prepare_data
from babelmerge.data.cache import load_packed, save_packed
from babelmerge.errors import BabelmergeError
from babelmerge.tiny import train_tokenizer

EN_WORDS = "the cat dog sat on mat and ran far away house tree river old new green small big".split()
BG_WORDS = "котка куче седи на под и тича далеч къща дърво река стар нов зелен малък голям".split()
BLOCK = 32


def _docs(words, n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(3, 15))) for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
    return {"en": _docs(EN_WORDS, 300, 0), "bg": _docs(BG_WORDS, 300, 1)}


@pytest.fixture(scope="module")
def tok(texts, tmp_path_factory):
    return train_tokenizer(
        texts["en"][:100] + texts["bg"][:100], tmp_path_factory.mktemp("tok"), vocab_size=300
    )


@pytest.fixture
def files(texts, tmp_path):
    out = {}
    for lang, docs in texts.items():
        out[lang] = tmp_path / f"{lang}.txt"
        out[lang].write_text("\n".join(docs) + "\n", encoding="utf-8")
    return out


def _cfg(tmp_path, sources, **kw):
    return DataConfig(sources=sources, block_size=BLOCK, cache_dir=str(tmp_path / "cache"), **kw)


def _rows(a: np.ndarray) -> list[tuple]:
    return sorted(map(tuple, a.tolist()))


def _expected_blocks(docs, tok):
    """The packing, computed independently: each document's ids then EOS, cut into full blocks."""
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    n = len(stream) // BLOCK
    return np.asarray(stream[: n * BLOCK]).reshape(n, BLOCK)


def test_single_source_is_documents_with_eos_packed(tmp_path, files, texts, tok):
    data = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(files["en"]))]), tok)
    expected = _expected_blocks(texts["en"], tok)
    assert isinstance(data, PackedData) and data.source_names == ["en"]
    assert data.input_ids.dtype == np.int32 and data.source.dtype == np.int16 and data.labels is None
    assert _rows(data.input_ids) == _rows(expected)  # all full blocks, shuffled
    assert data.n_tokens == expected.size
    assert tok.bos_token_id not in data.input_ids  # no BOS is added


def test_eos_separates_documents_inside_blocks(tmp_path, tok):
    docs = _docs(EN_WORDS[:6], 200, 7)
    docs = [" ".join(d.split()[:2]) for d in docs]  # short documents: several per block
    path = tmp_path / "short_docs.txt"
    path.write_text("\n".join(docs) + "\n")
    data = prepare_data(_cfg(tmp_path, [SourceConfig(path=str(path))]), tok)
    eos = tok.eos_token_id
    n_inner = 0
    for row in data.input_ids.tolist():
        cuts = [i for i, t in enumerate(row) if t == eos]
        assert len(cuts) >= 2
        for a, b in zip(cuts, cuts[1:]):  # every piece between two EOS is exactly one document
            assert tok.decode(row[a + 1 : b]) in docs
            n_inner += 1
    assert n_inner >= len(data) * 2


def test_mixture_75_25_with_budget_and_blocks_never_mix(tmp_path, files, tok):
    budget = 40 * BLOCK + 7
    cfg = _cfg(
        tmp_path,
        [SourceConfig(path=str(files["en"]), ratio=3), SourceConfig(path=str(files["bg"]), ratio=1)],
        token_budget=budget,
    )
    data = prepare_data(cfg, tok)
    assert len(data) == budget // BLOCK
    assert data.source_token_shares() == {"en": 0.75, "bg": 0.25}
    for row, src in zip(data.input_ids, data.source):
        text = tok.decode(row, skip_special_tokens=True)
        if src == 0:
            assert not re.search("[а-я]", text)
        else:
            assert not re.search("[a-z]", text)
    assert 0 < data.source[: len(data) // 2].mean() < 1  # shuffled, not source-sorted


def test_mixture_without_budget_uses_all_of_the_limiting_source(tmp_path, files, tok, texts):
    cfg = _cfg(
        tmp_path, [SourceConfig(path=str(files["en"]), ratio=1), SourceConfig(path=str(files["bg"]), ratio=3)]
    )
    data = prepare_data(cfg, tok)
    n_en = len(_expected_blocks(texts["en"], tok))
    n_bg = len(_expected_blocks(texts["bg"], tok))
    counts = np.bincount(data.source, minlength=2)
    assert counts[1] <= n_bg and counts[0] <= n_en
    assert counts[1] >= n_bg - 1 or counts[0] >= n_en - 1  # one source is (almost) exhausted
    assert abs(counts[1] - 3 * counts[0]) <= 3


def test_seed_determinism(tmp_path, files, tok):
    srcs = [SourceConfig(path=str(files["en"])), SourceConfig(path=str(files["bg"]))]
    a = prepare_data(_cfg(tmp_path, srcs, token_budget=20 * BLOCK, seed=1), tok)
    b = prepare_data(_cfg(tmp_path, srcs, token_budget=20 * BLOCK, seed=1), tok)
    c = prepare_data(_cfg(tmp_path, srcs, token_budget=20 * BLOCK, seed=2), tok)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.source, b.source)
    assert not np.array_equal(a.input_ids, c.input_ids)
    assert np.bincount(c.source).tolist() == np.bincount(a.source).tolist() == [10, 10]


def test_cache_hit_skips_tokenization(tmp_path, files, tok, monkeypatch):
    cfg = _cfg(tmp_path, [SourceConfig(path=str(files["en"])), SourceConfig(path=str(files["bg"]))])
    first = prepare_data(cfg, tok)
    assert first.cache_hit == {"en": False, "bg": False}

    def boom(*a, **k):
        raise AssertionError("tokenized although cached")

    monkeypatch.setattr(prepare_mod, "tokenize_documents", boom)
    second = prepare_data(cfg, tok)
    assert second.cache_hit == {"en": True, "bg": True}
    np.testing.assert_array_equal(first.input_ids, second.input_ids)
    np.testing.assert_array_equal(first.source, second.source)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp leftovers

    # a changed file, another block size or another tokenizer is a miss
    with pytest.raises(AssertionError, match="tokenized although cached"):
        files["bg"].write_text("котка и куче\n" * 200, encoding="utf-8")
        prepare_data(cfg, tok)
    with pytest.raises(AssertionError, match="tokenized although cached"):
        prepare_data(cfg.model_copy(update={"block_size": 16}), tok)
    other_tok = train_tokenizer(["a b c d e f"] * 5, tmp_path / "tok2", vocab_size=270)
    with pytest.raises(AssertionError, match="tokenized although cached"):
        prepare_data(cfg, other_tok)


def test_cache_roundtrip_keeps_labels(tmp_path):
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    labels = np.where(ids % 4 == 0, -100, ids).astype(np.int32)
    save_packed(tmp_path, "k", ids, labels, {"name": "sft"})
    got_ids, got_labels, meta = load_packed(tmp_path, "k")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_labels, labels)
    assert meta["has_labels"] is True and meta["name"] == "sft"
    save_packed(tmp_path, "k", ids + 1, None, {})  # a concurrent writer's entry is kept, not replaced
    np.testing.assert_array_equal(load_packed(tmp_path, "k")[0], ids)
    assert load_packed(tmp_path, "missing") is None


def test_loader_formats_give_identical_blocks(tmp_path, texts, tok, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean
    docs = texts["en"]
    txt = tmp_path / "d.txt"
    txt.write_text("\n\n".join(docs) + "\n  \n", encoding="utf-8")  # blank lines are not documents
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n")
    parquet = tmp_path / "pq" / "d.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.table({"body": docs[:100]}), parquet)
    pq.write_table(pa.table({"body": docs[100:]}), parquet.parent / "e.parquet")
    split_dir = tmp_path / "parts"
    split_dir.mkdir()
    (split_dir / "a.txt").write_text("\n".join(docs[:150]) + "\n")
    (split_dir / "b.txt").write_text("\n".join(docs[150:]) + "\n")
    (split_dir / "notes.md").write_text("not data")  # unsupported suffix: ignored in a folder

    variants = {
        "txt": SourceConfig(path=str(txt)),
        "jsonl": SourceConfig(path=str(jsonl), text_field="body"),
        "parquet_folder": SourceConfig(path=str(parquet.parent), text_field="body"),
        "glob": SourceConfig(path=str(split_dir / "*.txt")),
        "hf_local": SourceConfig(hf_dataset=str(parquet.parent), text_field="body"),
        "hf_streaming": SourceConfig(hf_dataset=str(parquet.parent), text_field="body", streaming=True),
    }
    expected = _rows(_expected_blocks(docs, tok))
    for label, src in variants.items():
        cfg = DataConfig(sources=[src], block_size=BLOCK, cache_dir=str(tmp_path / f"cache_{label}"))
        data = prepare_data(cfg, tok)
        assert data.cache_hit == {src.label: False}
        assert _rows(data.input_ids) == expected, label
    assert variants["glob"].label == "parts" and variants["txt"].label == "d"
    assert variants["parquet_folder"].label == "pq" and variants["hf_local"].label == str(parquet.parent)


def test_num_proc_2_matches_num_proc_1(tmp_path, files, tok):
    src = [SourceConfig(path=str(files["en"]))]
    one = prepare_data(_cfg(tmp_path, src, batch_size=50), tok)
    two = prepare_data(
        DataConfig(sources=src, block_size=BLOCK, cache_dir=str(tmp_path / "c2"), num_proc=2, batch_size=50),
        tok,
    )
    assert two.cache_hit == {"en": False}
    np.testing.assert_array_equal(one.input_ids, two.input_ids)


# ---- errors: one line, naming the culprit ------------------------------------------------------


def _raises(cfg, tok, *fragments):
    with pytest.raises(BabelmergeError) as err:
        prepare_data(cfg, tok)
    msg = str(err.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_error_missing_path(tmp_path, files, tok, monkeypatch):
    monkeypatch.setattr(prepare_mod, "tokenize_documents", lambda *a, **k: pytest.fail("tokenized"))
    missing = tmp_path / "nope.txt"
    # checked before the first (valid) source is tokenized
    cfg = _cfg(tmp_path, [SourceConfig(path=str(files["en"])), SourceConfig(path=str(missing))])
    _raises(cfg, tok, str(missing), "does not exist", "'nope'")
    _raises(_cfg(tmp_path, [SourceConfig(path=str(tmp_path / "*.csv"))]), tok, "no file matches")


def test_error_empty_source(tmp_path, tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    _raises(_cfg(tmp_path, [SourceConfig(path=str(empty))]), tok, "'empty'", "no text", str(empty))


def test_error_too_short_source(tmp_path, tok):
    short = tmp_path / "short.txt"
    short.write_text("the cat\n")
    _raises(_cfg(tmp_path, [SourceConfig(path=str(short))]), tok, "'short'", "less than one block")


def test_error_invalid_json_line(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat"}\n\n{"text": "the dog"\n')
    _raises(_cfg(tmp_path, [SourceConfig(path=str(bad))]), tok, f"{bad}:3", "not valid JSON")


def test_error_missing_text_field(tmp_path, tok):
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"text": "the cat"}\n{"content": "the dog"}\n')
    _raises(_cfg(tmp_path, [SourceConfig(path=str(jl))]), tok, f"{jl}:2", "no field 'text'", "content")
    pqf = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["the cat"]}), pqf)
    _raises(_cfg(tmp_path, [SourceConfig(path=str(pqf))]), tok, str(pqf), "no column 'text'", "content")


def test_error_budget_too_large(tmp_path, files, tok):
    srcs = [SourceConfig(path=str(files["en"]), ratio=3), SourceConfig(path=str(files["bg"]), ratio=1)]
    biggest = prepare_data(_cfg(tmp_path, srcs), tok)
    msg = _raises(
        _cfg(tmp_path, srcs, token_budget=10**7), tok, "token_budget 10000000", "'en' has", "'bg' has"
    )
    assert f"maximum budget is {biggest.n_tokens} tokens" in msg


def test_error_tokenizer_without_eos(tmp_path, files, texts, tok):
    no_eos = train_tokenizer(texts["en"][:20], tmp_path / "tok_noeos", vocab_size=280)
    no_eos.eos_token = None
    assert no_eos.eos_token_id is None
    _raises(_cfg(tmp_path, [SourceConfig(path=str(files["en"]))]), no_eos, "no EOS")


def test_config_validation():
    with pytest.raises(ValidationError, match="exactly one of"):
        SourceConfig(path="a.txt", hf_dataset="x")
    with pytest.raises(ValidationError, match="exactly one of"):
        SourceConfig()
    with pytest.raises(ValidationError):
        SourceConfig(path="a.txt", ratio=0)
    with pytest.raises(ValidationError):
        SourceConfig(path="a.txt", txt_field="x")  # extra key
    with pytest.raises(ValidationError):
        DataConfig(sources=[])
    with pytest.raises(ValidationError, match="distinct"):
        DataConfig(sources=[SourceConfig(path="a/en.txt"), SourceConfig(path="b/en.txt")])
    cfg = DataConfig(
        sources=[SourceConfig(path="a/en.txt", ratio=3), SourceConfig(hf_dataset="wiki", ratio=1)]
    )
    assert cfg.ratios == [0.75, 0.25] and [s.label for s in cfg.sources] == ["en", "wiki"]


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BABELMERGE_CACHE", str(tmp_path))
    cfg = DataConfig(sources=[SourceConfig(path="x.txt")])
    assert cfg.resolved_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("BABELMERGE_CACHE")
    assert cfg.resolved_cache_dir() == Path.home() / ".cache" / "babelmerge" / "data"
    assert cfg.model_copy(update={"cache_dir": str(tmp_path / "c")}).resolved_cache_dir() == tmp_path / "c"
