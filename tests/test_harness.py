"""lm-evaluation-harness adapter, offline, on a local multiple-choice task checked against a hand computation."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("lm_eval")

from babelmerge.errors import BabelmergeError  # noqa: E402
from babelmerge.evaluation.harness import run_harness  # noqa: E402

DOCS = [
    {"question": "the cat sat on the", "choices": ["mat", "log", "dog"], "label": 0},
    {"question": "the dog sat on the", "choices": ["mat", "log"], "label": 1},
    {"question": "котката седна на", "choices": ["постелката", "дървото"], "label": 0},
    {"question": "the cat", "choices": ["sat", "on", "the mat"], "label": 2},
    {"question": "кучето", "choices": ["седна", "на"], "label": 1},
]


@pytest.fixture()
def local_task(tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n")
    (tmp_path / "toy.yaml").write_text(
        f"""task: babelmerge_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
    )
    return tmp_path


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(float(logp[j - 1, whole[j]]) for j in range(len(ctx), len(whole)))


def test_local_task_accuracy_matches_hand_computation(tiny_models, local_task, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(tiny_models["ft_b"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["ft_b"])
    result = run_harness(
        model, tok, ["babelmerge_toy"], include_path=str(local_task), batch_size=2, include_defaults=False
    )
    correct = 0
    for d in DOCS:
        scores = [loglikelihood(model, tok, d["question"], " " + c) for c in d["choices"]]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    assert result["babelmerge_toy"]["acc,none"] == pytest.approx(correct / len(DOCS))


def test_unknown_task_is_a_user_error(tiny_models, local_task):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"])
    tok = AutoTokenizer.from_pretrained(tiny_models["base"])
    with pytest.raises(BabelmergeError, match="unknown lm-eval task 'babelmerge_tyo'.*babelmerge_toy"):
        run_harness(model, tok, ["babelmerge_tyo"], include_path=str(local_task), include_defaults=False)
