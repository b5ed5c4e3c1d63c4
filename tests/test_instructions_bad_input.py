"""Bad instruction data and chat settings: one-line BabelmergeError naming the file, line or source."""

import copy
import json

import pytest
from pydantic import ValidationError

from babelmerge.data import DataConfig, SourceConfig, prepare_data
from babelmerge.errors import BabelmergeError
from babelmerge.tiny import train_tokenizer

GOOD = {
    "messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}]
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(
        ["the cat sat on the mat", "a dog ran far away"] * 10, tmp_path_factory.mktemp("tok"), 280
    )


def _raises(tmp_path, tok, lines, *fragments, name="bad.jsonl", **kw):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    cfg = DataConfig(
        sources=[SourceConfig(path=str(path))],
        format="chat",
        block_size=64,
        cache_dir=str(tmp_path / "c"),
        **kw,
    )
    with pytest.raises(BabelmergeError) as err:
        prepare_data(cfg, tok)
    msg = str(err.value)
    assert "\n" not in msg
    for frag in [f.replace("{path}", str(path)) for f in fragments]:
        assert frag in msg, msg
    return msg


def test_malformed_jsonl_names_file_and_line(tmp_path, tok):
    _raises(tmp_path, tok, [GOOD, "", '{"messages": [', GOOD], "{path}:3", "not valid JSON")
    _raises(tmp_path, tok, [GOOD, "[1, 2]"], "{path}:2", "expected a JSON object")


def test_unknown_role(tmp_path, tok):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    _raises(tmp_path, tok, [GOOD, GOOD, bad], "{path}:3", "unknown role 'bot'", "system, user, assistant")


def test_empty_response(tmp_path, tok):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
    _raises(tmp_path, tok, [bad], "{path}:1", "empty response")
    _raises(tmp_path, tok, [GOOD, {"prompt": "hi", "response": ""}], "{path}:2", "empty response")


def test_no_assistant_turn(tmp_path, tok):
    bad = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]}
    _raises(tmp_path, tok, [GOOD, bad], "{path}:2", "no assistant turn")
    first = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}]}
    _raises(tmp_path, tok, [first], "{path}:1", "starts with an assistant turn")


def test_malformed_records(tmp_path, tok):
    _raises(tmp_path, tok, [{"text": "the cat"}], "{path}:1", "no field 'messages'", "'prompt'", "keys: text")
    _raises(
        tmp_path, tok, [{"messages": [{"role": "user"}]}], "{path}:1", "messages[0]", "'role' and 'content'"
    )
    bad_content = {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}
    _raises(tmp_path, tok, [bad_content], "{path}:1", "messages[0] content is a int")
    _raises(tmp_path, tok, ["the cat"], "{path} is not a chat file", name="plain.txt")


def test_template_that_cannot_render_names_source_and_error(tmp_path, tok):
    strict = copy.deepcopy(tok)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('system messages are not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with_system = {"messages": [{"role": "system", "content": "x"}] + GOOD["messages"]}
    _raises(
        tmp_path, strict, [GOOD, with_system], "source 'bad'", "{path}:2", "system messages are not supported"
    )

    broken = copy.deepcopy(tok)  # a syntax error: found by a probe before any file is read
    broken.chat_template = "{% for m in messages %}{{ m['content'] }"
    _raises(tmp_path, broken, [GOOD], "chat template of tokenizer", "cannot render", "TemplateSyntaxError")

    rewriting = copy.deepcopy(tok)  # marks the last message: earlier renderings are not prefixes
    rewriting.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}[last]{% endif %}{{ eos_token }}{% endfor %}"
    _raises(
        tmp_path, rewriting, [GOOD], "chat template of tokenizer", "not a prefix", "rewrites earlier turns"
    )


def test_all_examples_lose_their_response(tmp_path, tok):
    long_prompt = {"prompt": " ".join(["cat"] * 100), "response": "mat"}
    _raises(tmp_path, tok, [long_prompt], "'bad'", "lose their response", "max_length 64")


def test_budget_beyond_the_data(tmp_path, tok):
    _raises(tmp_path, tok, [GOOD] * 3, "token_budget 100000 exceeds", "'bad' has", token_budget=100_000)


def test_chat_config_validation():
    src = [SourceConfig(path="x.jsonl")]
    with pytest.raises(ValidationError, match="format 'chat' only"):
        DataConfig(sources=src, max_length=32, block_size=64)
    with pytest.raises(ValidationError, match="format 'chat' only"):
        DataConfig(sources=src, packing=True)
    with pytest.raises(ValidationError, match="exceeds block_size"):
        DataConfig(sources=src, format="chat", packing=True, block_size=64, max_length=65)
    with pytest.raises(ValidationError, match="without packing"):
        DataConfig(sources=src, format="chat", block_size=64, max_length=32)
    with pytest.raises(ValidationError):
        DataConfig(sources=src, format="sft")
    cfg = DataConfig(sources=src, format="chat", block_size=64)
    assert cfg.example_max_length == 64 and not cfg.packing
    assert DataConfig(sources=src).format == "text"  # existing CPT configs are unchanged
