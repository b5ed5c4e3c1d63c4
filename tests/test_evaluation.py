"""Evaluation: bits per byte against a hand computation, sliding windows, batching, instruction accuracy,
weight change, interpolation and the CLI's stored results."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from babelmerge.cli import main
from babelmerge.evaluation.bits_per_byte import score_texts, windows_for
from babelmerge.evaluation.instruction_accuracy import (
    InstructionExample,
    generate_answers,
    instruction_accuracy,
    is_match,
)
from babelmerge.evaluation.interpolation import interpolate_state
from babelmerge.evaluation.weight_change import weight_change

DOCS = ["the cat sat on the mat", "котката седна на постелката", "the dog sat on the log and the cat sat"]


@pytest.fixture(scope="module")
def model_and_tok(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["ft_a"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["ft_a"])
    return model, tok


def nll_by_hand(model, ids: list[int], first_scored: int = 1, context_from: int = 0) -> float:
    """-Σ log p(ids[j] | ids[context_from:j]) for j >= first_scored, one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[context_from:]])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return -sum(float(logp[j - 1 - context_from, ids[j]]) for j in range(first_scored, len(ids)))


def test_bits_per_byte_equals_hand_computation(model_and_tok):
    model, tok = model_and_tok
    score = score_texts(model, tok, DOCS, max_length=256)
    total_nll = 0.0
    for doc in DOCS:
        ids = [tok.bos_token_id] + tok(doc, add_special_tokens=False).input_ids
        total_nll += nll_by_hand(model, ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    assert score.bytes == n_bytes == 22 + 51 + 38
    assert score.tokens == sum(len(tok(d, add_special_tokens=False).input_ids) for d in DOCS)
    assert score.bits_per_byte == pytest.approx(total_nll / math.log(2) / n_bytes, rel=1e-5)
    assert score.loss == pytest.approx(total_nll / score.tokens, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(total_nll / score.tokens), rel=1e-5)
    # a random tiny model is far from perfect: sanity of magnitude (vocab 300 -> about log2(300)/bytes-per-token)
    assert 0.5 < score.bits_per_byte < 10


def test_windows_score_every_token_once_with_context():
    ids = list(range(23))
    windows = windows_for(ids, max_length=8, stride=3)
    scored = []
    for w in windows:
        assert len(w.ids) <= 8
        scored.extend(w.ids[len(w.ids) - w.n_scored :])
        if w is not windows[0]:
            assert len(w.ids) - w.n_scored >= 8 - 3  # context
    assert scored == ids[1:]
    assert windows_for([5, 6, 7], max_length=8, stride=3)[0].ids == (5, 6, 7)


def test_short_texts_single_and_sliding_window_agree(model_and_tok):
    model, tok = model_and_tok
    longest = max(len(tok(d, add_special_tokens=False).input_ids) for d in DOCS) + 1
    wide = score_texts(model, tok, DOCS, max_length=256)
    snug = score_texts(model, tok, DOCS, max_length=longest, stride=3)
    assert snug.nll == pytest.approx(wide.nll, rel=1e-6)


def test_sliding_window_on_a_long_document_matches_window_by_window_computation(model_and_tok):
    model, tok = model_and_tok
    doc = " ".join(DOCS * 3)
    ids = [tok.bos_token_id] + tok(doc, add_special_tokens=False).input_ids
    assert len(ids) > 40
    score = score_texts(model, tok, [doc], max_length=16, stride=5)
    expected = nll_by_hand(model, ids[:16])  # first window: tokens 1..15
    pos = 16
    while pos < len(ids):
        end = min(pos + 5, len(ids))
        expected += nll_by_hand(model, ids[:end], first_scored=pos, context_from=end - 16)
        pos = end
    assert score.nll == pytest.approx(expected, rel=1e-5)
    full = score_texts(model, tok, [doc], max_length=256)
    assert score.tokens == full.tokens and score.bytes == full.bytes
    assert score.nll != pytest.approx(full.nll, rel=1e-6)  # less context, different score


def test_batching_does_not_change_scores(model_and_tok):
    model, tok = model_and_tok
    docs = DOCS * 2 + ["a", "the mat"]
    one = score_texts(model, tok, docs, max_length=12, stride=4, batch_size=1)
    many = score_texts(model, tok, docs, max_length=12, stride=4, batch_size=5)
    assert many.nll == pytest.approx(one.nll, rel=1e-5)


def test_match_rules():
    assert is_match("  Paris ", ("Paris",))
    assert not is_match("paris", ("Paris",))
    assert is_match("paris", ("Paris",), ignore_case=True)
    assert is_match("It is Paris.", ("Paris",), match="contains")
    assert not is_match("It is Paris.", ("Paris",), match="exact")
    assert is_match("b", ("a", "b"))


def test_batched_generation_equals_one_by_one_and_accuracy_counts(model_and_tok):
    model, tok = model_and_tok
    prompts = ["say: cat", "say: the dog sat on the log", "кажи: котка"]
    one = [generate_answers(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    batched = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert batched == one
    right = [InstructionExample(p, (g,)) for p, g in zip(prompts, one)]
    wrong = [InstructionExample(p, (g + "x",)) for p, g in zip(prompts, one)]
    assert instruction_accuracy(model, tok, right, max_new_tokens=6)["accuracy"] == 1.0
    mixed = instruction_accuracy(model, tok, right[:2] + wrong[2:], max_new_tokens=6)
    assert (mixed["correct"], mixed["total"]) == (2, 3)


def test_weight_change_by_hand(tiny_models):
    a, base = (
        load_file(tiny_models["ft_a"] / "model.safetensors"),
        load_file(tiny_models["base"] / "model.safetensors"),
    )
    change = weight_change(str(tiny_models["ft_a"]), str(tiny_models["base"]))
    sq = sum(float(((a[n].double() - base[n].double()) ** 2).sum()) for n in base)
    assert change["l2"] == pytest.approx(math.sqrt(sq), rel=1e-9)
    layer0 = sum(float(((a[n].double() - base[n].double()) ** 2).sum()) for n in base if ".layers.0." in n)
    assert change["per_layer"]["layer.0"] == pytest.approx(math.sqrt(layer0), rel=1e-9)
    assert set(change["per_layer"]) == {"layer.0", "layer.1", "other"}
    assert weight_change(str(tiny_models["base"]), str(tiny_models["base"]))["l2"] == 0.0


def test_interpolate_state_endpoints_and_midpoint():
    base = {"w": torch.tensor([1.0, 2.0]), "i": torch.tensor([3])}
    adapted = {"w": torch.tensor([3.0, 0.0]), "i": torch.tensor([3])}
    assert torch.equal(interpolate_state(base, adapted, 0.0)["w"], base["w"])
    assert torch.equal(interpolate_state(base, adapted, 1.0)["w"], adapted["w"])
    assert torch.equal(interpolate_state(base, adapted, 0.25)["w"], torch.tensor([1.5, 1.5]))


def test_eval_cli_writes_results_and_interpolation_endpoints_match(tiny_models, tmp_path, capsys):
    (tmp_path / "bg.txt").write_text("котката седна на постелката\nкучето седна\n")
    (tmp_path / "en.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n")
    out = tmp_path / "results"
    code = main(
        [
            "eval",
            str(tiny_models["ft_a"]),
            str(tiny_models["base"]),
            "--label",
            "ft_a",
            "--label",
            "base",
            "--target",
            str(tmp_path / "bg.txt"),
            "--source",
            str(tmp_path / "en.txt"),
            "--base",
            str(tiny_models["base"]),
            "--interpolate",
            "0,0.5,1",
            "--out",
            str(out),
            "--max-length",
            "64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == sorted(
        [
            "ft_a.json",
            "base.json",
            "ft_a@0.json",
            "ft_a@0.5.json",
            "ft_a@1.json",
            "base@0.json",
            "base@0.5.json",
            "base@1.json",
        ]
    )
    r = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert r["ft_a"]["texts"]["bg.txt"]["role"] == "target"
    assert r["ft_a@1"]["target_bpb"] == pytest.approx(r["ft_a"]["target_bpb"], rel=1e-6)
    assert r["ft_a@0"]["source_bpb"] == pytest.approx(r["base"]["source_bpb"], rel=1e-6)
    assert r["ft_a@0"]["weight_change"]["l2"] == 0.0
    assert r["ft_a@0.5"]["weight_change"]["l2"] == pytest.approx(
        r["ft_a"]["weight_change"]["l2"] / 2, rel=1e-5
    )
    assert r["base"]["weight_change"]["l2"] == 0.0
    assert r["ft_a"]["target_bpb"] != r["base"]["target_bpb"]


def test_eval_bad_input(tiny_models, tmp_path, capsys):
    code = main(["eval", str(tiny_models["base"]), "--target", str(tmp_path / "missing.txt")])
    assert code == 2 and "missing.txt: no such text file" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("hello\n")
    code = main(
        ["eval", str(tiny_models["base"]), "--target", str(tmp_path / "t.txt"), "--interpolate", "0,1"]
    )
    assert code == 2 and "interpolate needs a base model" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"\n')
    code = main(["eval", str(tiny_models["base"]), "--instruct", str(tmp_path / "p.jsonl")])
    assert code == 2 and "p.jsonl:2: not valid JSON" in capsys.readouterr().err
