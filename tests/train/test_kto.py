"""objective=kto: the loss equals TRL's KTOTrainer on the same batch, training moves desirable answers
up relative to undesirable ones (LoRA and full), the batch rules hold, bad rows name file and line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.train.batching import collate
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import IGNORE, KtoExample, tokenize
from tuneloop.train.distributed import Dist
from tuneloop.train.kto import mismatched
from tuneloop.train.model_setup import pick_precision
from tuneloop.train.objectives import sequence_logps
from tuneloop.train.recipe import run
from tuneloop.train.trainer import Trainer

from .conftest import FACTS, base_overrides, write_jsonl

WRONG = ["I do not know.", "It supports 3 devices.", "Port 23.", "Call the old hotline."]


def kto_rows() -> list[dict]:
    """A thumbs-up on the right answer and a thumbs-down on a wrong one, for every fact."""
    rows = []
    for i, (q, a) in enumerate(FACTS):
        prompt = [{"role": "user", "content": q}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "label": True})
        wrong = WRONG[i % len(WRONG)]  # a string works as a completion too
        rows.append({"prompt": prompt, "completion": wrong, "label": False})
    return rows


@pytest.fixture
def kto_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "kto"
    write_jsonl(folder / "train.jsonl", kto_rows())
    write_jsonl(folder / "val.jsonl", kto_rows()[:6])
    return folder


def train(model: Path, data: Path, out: Path, **extra):
    return run(load_config(TrainConfig, None, base_overrides(model, data, out, objective="kto", **extra)))


def losses(result) -> list[float]:
    return [loss for _, loss in result.metrics["train_loss"]]


# ---------------------------------------------------------------- the loss is TRL's


def _trl(model, ref_model, tokenizer, rows, tmp_path, s):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), report_to=[],
                     use_cpu=True, bf16=False, beta=s["beta"], desirable_weight=s["desirable_weight"],
                     undesirable_weight=s["undesirable_weight"], max_length=128)  # fmt: skip
    as_messages = lambda c: [{"role": "assistant", "content": c}] if isinstance(c, str) else c  # noqa: E731
    rows = [{**r, "completion": as_messages(r["completion"])} for r in rows]  # one type per Arrow column
    return KTOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)  # fmt: skip


def _ours(model, settings: dict, n: int, tmp_path: Path, method: str) -> Trainer:
    overrides = [f"kto.{k}={v}" for k, v in settings.items()]
    cfg = load_config(TrainConfig, None, ["data.path=x", "objective=kto", f"method={method}", "precision=fp32",
                                          f"batch.global_batch={n}", f"batch.micro_batch={n}", *overrides])  # fmt: skip
    return Trainer(cfg, model, [], [], pad_id=0, device="cpu", precision=pick_precision("fp32", "cpu"),
                   dist=Dist(), run_dir=tmp_path / "ours", tracker=None)  # fmt: skip


def _same_examples(trl) -> list[KtoExample]:
    """TRL's own tokenization of the batch (every completion token scored, as TRL does)."""
    return [KtoExample(r["prompt_ids"], r["completion_ids"], list(r["completion_ids"]), r["label"], 128)
            for r in trl.train_dataset]  # fmt: skip


def _compare(trl, trainer, policy, examples) -> None:
    batch = next(iter(trl.get_train_dataloader()))  # sequential: TRL's KL pairs are its neighbours
    reference = trl.compute_loss(trl.model, batch)
    reference.backward()
    reference = float(reference.detach())
    ours, _ = trainer.kto.accumulate(trainer, examples)
    # the KL term is exercised, not clamped away
    assert trainer.kto.metrics["train/kl"] > 0.01, trainer.kto.metrics
    assert ours == pytest.approx(reference, rel=1e-5, abs=1e-6)
    theirs = dict(trl.model.named_parameters())
    grads = [(p.grad, theirs[n].grad) for n, p in policy.named_parameters() if p.requires_grad]
    assert grads and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in grads)


SETTINGS = {"beta": 0.3, "desirable_weight": 1.3, "undesirable_weight": 0.8}


def test_full_kto_loss_and_gradients_equal_trl_on_the_same_batch(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = kto_rows()[:5]  # an odd batch: the rotation wraps around
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    start = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    with torch.no_grad():  # the reference: the starting model, moved away from the random init
        for p in start.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    policy = copy.deepcopy(start)
    trainer = _ours(policy, SETTINGS, len(rows), tmp_path, "full")  # its reference: a frozen copy of `start`
    with torch.no_grad():  # "training" has moved the policy: to the random init (KL > 0 on these pairs)
        for p, b in zip(policy.parameters(), base.parameters(), strict=True):
            p.copy_(b)
    trl = _trl(copy.deepcopy(base), copy.deepcopy(start), tokenizer, rows, tmp_path, SETTINGS)
    _compare(trl, trainer, policy, _same_examples(trl))


def test_lora_kto_loss_equals_trl_with_the_adapter_off_as_reference(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = kto_rows()[2:8]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")  # B = 0: the adapter starts as a no-op
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), lora)
    # TRL's reference for a PEFT model: a frozen copy of the adapter as it started (= the base here)
    trl = _trl(copy.deepcopy(policy), None, tokenizer, rows, tmp_path, SETTINGS)
    trainer = _ours(policy, SETTINGS, len(rows), tmp_path, "lora")  # ours: the adapter switched off
    examples = _same_examples(trl)
    # "training" has moved the adapter: one SGD step up the likelihood of the mismatched pairs (KL > 0)
    nll = -sequence_logps(policy, collate(mismatched(examples), 0)).sum()
    nll.backward()
    theirs = dict(trl.model.named_parameters())
    moved = [(name, p) for name, p in policy.named_parameters() if p.grad is not None]
    norm = torch.sqrt(sum((p.grad**2).sum() for _, p in moved))
    with torch.no_grad():
        for name, p in moved:
            p.sub_(0.1 * p.grad / norm)  # a short step: a long one overshoots
            theirs[name].copy_(p)
            p.grad = None
    _compare(trl, trainer, policy, examples)


def test_tokenization_splits_prompt_and_completion_as_trl_does(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = kto_rows()[:4]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    trl = _trl(model, copy.deepcopy(model), tokenizer, rows, tmp_path, SETTINGS)
    ours = tokenize(rows, tokenizer, "kto", 128, "truncate")
    assert ours.counts["desirable"] == 2 and ours.counts["undesirable"] == 2
    for theirs, mine in zip(trl.train_dataset, ours.examples, strict=True):
        assert mine.prompt_ids == theirs["prompt_ids"] and mine.completion_ids == theirs["completion_ids"]
        # scored as for SFT: the answer through its end-of-turn token, not the template's newline after it
        end = mine.completion_ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        assert mine.completion_labels == mine.completion_ids[: end + 1] + [IGNORE] * (
            len(mine.completion_ids) - end - 1
        )


# ---------------------------------------------------------------- training


def _margin(model, tokenizer, rows) -> float:
    """Mean log-probability of the desirable answers minus that of the undesirable ones."""
    examples = tokenize(rows, tokenizer, "kto", 128, "truncate").examples
    with torch.no_grad():
        logps = sequence_logps(
            model.eval(), collate([e.sequence() for e in examples], tokenizer.pad_token_id or 0)
        )
    good = [float(x) for x, e in zip(logps, examples, strict=True) if e.label]
    bad = [float(x) for x, e in zip(logps, examples, strict=True) if not e.label]
    return sum(good) / len(good) - sum(bad) / len(bad)


def test_lora_kto_lowers_the_loss_and_prefers_desirable_answers(tiny_llama, kto_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(
        tiny_llama, kto_dataset, tmp_path / "run", max_steps=12, **{"optim.lr": 5e-3, "eval.every": 6}
    )
    curve = losses(result)
    # policy == reference at the start: every example's loss is 1 - sigmoid(0)
    assert curve[0] == pytest.approx(0.5, abs=1e-4)
    assert curve[-1] < curve[0] - 0.05
    assert result.metrics["data.desirable"] == 8 and result.metrics["data.undesirable"] == 8
    assert [s for s, _ in result.metrics["val_loss"]] == [6, 12]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    before = _margin(AutoModelForCausalLM.from_pretrained(tiny_llama), tokenizer, kto_rows())
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.model_dir)
    after = _margin(tuned, tokenizer, kto_rows())
    assert after > before + 1.0, (before, after)
    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["objective"] == "kto"


def test_full_kto_trains_against_a_frozen_copy_of_the_start(tiny_llama, kto_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(
        tiny_llama, kto_dataset, tmp_path / "run", method="full", max_steps=8, **{"optim.lr": 1e-3}
    )
    curve = losses(result)
    assert curve[0] == pytest.approx(0.5, abs=1e-4) and curve[-1] < curve[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    before = _margin(AutoModelForCausalLM.from_pretrained(tiny_llama), tokenizer, kto_rows())
    after = _margin(AutoModelForCausalLM.from_pretrained(result.model_dir), tokenizer, kto_rows())
    assert after > before + 1.0, (before, after)


def test_micro_batch_size_does_not_change_kto(tiny_llama, kto_dataset, tmp_path):
    a = train(tiny_llama, kto_dataset, tmp_path / "a", max_steps=3, **{"batch.micro_batch": 8})
    b = train(tiny_llama, kto_dataset, tmp_path / "b", max_steps=3, **{"batch.micro_batch": 2})
    assert losses(a) == pytest.approx(losses(b), rel=1e-5)


# ---------------------------------------------------------------- bad input


def _bad(tmp_path: Path, row: dict, line: int = 2) -> Path:
    rows = kto_rows()[:3]
    rows.insert(line - 1, row)
    return write_jsonl(tmp_path / "bad" / "train.jsonl", rows)


PROMPT = [{"role": "user", "content": "How long is the warranty?"}]


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"prompt": PROMPT, "completion": "24 months."}, "unpaired row without 'label'"),
        ({"prompt": PROMPT, "completion": "24 months.", "label": "yes"}, "'label' must be true or false, not str"),
        ({"prompt": PROMPT, "completion": "24 months.", "label": 1}, "'label' must be true or false, not int"),
        ({"prompt": PROMPT, "completion": "", "label": True}, "'completion' is empty"),
        ({"prompt": PROMPT, "completion": [], "label": True}, "'completion' must be a non-empty list"),
        ({"prompt": PROMPT, "label": False}, "unpaired row without 'completion'"),
        ({"completion": "24 months.", "label": False}, "unpaired row without 'prompt'"),
        ({"prompt": PROMPT, "completion": [{"role": "user", "content": "hi"}], "label": True},
         "no assistant turn in 'completion'"),
    ],
)  # fmt: skip
def test_bad_kto_rows_name_file_line_and_the_fix(tiny_llama, tmp_path, row, words):
    path = _bad(tmp_path, row)
    with pytest.raises(TuneloopError) as e:
        train(tiny_llama, path, tmp_path / "run")
    assert f"{path}:2: " in e.value.message and words in e.value.message
    assert '"label": true|false' in (e.value.hint or "") or "messages" in (e.value.hint or "")
    assert not (tmp_path / "run").exists()  # refused before a model was loaded or a folder made


def test_kto_on_sft_rows_and_sft_on_kto_rows_say_which_rows_are_needed(
    tiny_llama, sft_dataset, kto_dataset, tmp_path
):
    with pytest.raises(
        TuneloopError, match=r"objective 'kto' needs unpaired preference \(prompt/completion/label\)"
    ):
        train(tiny_llama, sft_dataset, tmp_path / "a")
    with pytest.raises(TuneloopError, match=r"train.jsonl:1: objective 'sft' needs SFT \(messages\) rows"):
        run(load_config(TrainConfig, None, base_overrides(tiny_llama, kto_dataset, tmp_path / "b")))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["data.packing=true"], "data.packing does not apply to kto"),
        (["batch.global_batch=1", "batch.micro_batch=1"], "batch.global_batch must be at least 2"),
        (["strategy=fsdp"], "strategy=fsdp supports"),
        (["kto.beta=0"], "kto.beta"),
    ],
)
def test_kto_settings_that_cannot_work_are_refused(overrides, words):
    with pytest.raises(TuneloopError, match=words.replace(".", r"\.")):
        load_config(TrainConfig, None, ["data.path=x", "objective=kto", *overrides])


def test_cli_bad_kto_row_exits_2_without_a_traceback(tiny_llama, tmp_path):
    path = _bad(tmp_path, {"prompt": PROMPT, "completion": "24 months.", "label": "no"})
    result = CliRunner().invoke(app, ["train", f"model={tiny_llama}", f"data.path={path}", "objective=kto"])
    assert result.exit_code == 2 and f"{path}:2" in result.output and "Traceback" not in result.output
