"""labelsmooth.integrations.hf against transformers' own Trainer label smoothing, on tiny models."""

import doctest
import functools
import importlib.util

import pytest

transformers = pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LabelSmoother  # noqa: E402

import labelsmooth as ls  # noqa: E402
import labelsmooth.integrations.hf as lshf  # noqa: E402

VOCAB, SEQ = 101, 12

# The Trainer needs accelerate (transformers[torch]); the loss functions do not.
needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="Trainer needs accelerate"
)


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def dataset(n=8, seed=1):
    """Rows of different lengths, right-padded: labels -100 on the padding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        length = SEQ - (3 * i) % 7
        mask = (torch.arange(SEQ) < length).long()
        labels = ids.masked_fill(mask == 0, -100)
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def batch(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def train(tmp_path, model, *, trainer_cls=Trainer, batch_size=4, accumulation=1, **kwargs):
    trainer_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k not in _ARG_NAMES}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **kwargs,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset(), **trainer_kwargs)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


_ARG_NAMES = {"label_smoothing_factor"}


def assert_weights_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_docstring_examples():
    result = doctest.testmod(lshf, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------
# loss(): the formula, against HF's LabelSmoother
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [None, 37, torch.tensor(37)])
def test_loss_equals_label_smoother_causal(num_items):
    model = gpt2()
    b = batch(dataset(4))
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    ours = lshf.loss(0.1)(out, b["labels"], num_items_in_batch=num_items)  # causal inferred
    theirs = LabelSmoother(0.1)(out, b["labels"], shift_labels=True, num_items_in_batch=num_items)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-6, rtol=1e-6)


def test_loss_token_classification_not_shifted():
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, 3:] = -100
    out = transformers.modeling_outputs.TokenClassifierOutput(logits=logits)
    ours = lshf.loss(0.2)(out, labels)
    theirs = LabelSmoother(0.2)(out, labels)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.2)
    torch.testing.assert_close(ours, ref)


def test_loss_causal_rule_and_options():
    logits = torch.randn(2, 6, 9, requires_grad=True)
    labels = torch.randint(0, 9, (2, 6))
    with pytest.raises(ValueError, match="causal"):
        lshf.loss(0.1)({"logits": logits}, labels)  # a plain dict: cannot tell
    # 2-D logits (sequence classification) never shift
    flat = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, -100])
    torch.testing.assert_close(
        lshf.loss(0.1)((flat,), y), F.cross_entropy(flat, y, label_smoothing=0.1)
    )
    # others style, z_loss: sum / num_items of ls.cross_entropy on the shifted labels
    fn = lshf.loss(0.1, style="others", causal=True, z_loss=1e-3, ignore_index=-1)
    lab = labels.clone()
    lab[1, 4:] = -1
    value = fn(logits, lab, num_items_in_batch=7)
    ref = ls.cross_entropy(
        logits[:, :-1].reshape(-1, 9),
        lab[:, 1:].reshape(-1),
        0.1,
        style="others",
        z_loss=1e-3,
        ignore_index=-1,
        reduction="sum",
    )
    torch.testing.assert_close(value, ref / 7)
    # all-padding micro-batch without num_items: 0, not nan
    pad = torch.full((2, 6), -100)
    zero = lshf.loss(0.1, causal=True)(logits, pad)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="eps"):
        lshf.loss(1.5)
    with pytest.raises(ValueError, match="style"):
        lshf.loss(0.1, style="fairseq")
    with pytest.raises(ValueError, match="labels"):
        lshf.loss(0.1, causal=False)(logits, labels[:, :3])


# --------------------------------------------------------------------------------------------
# Trainer: compute_loss_func=loss(0.1) == label_smoothing_factor=0.1
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    runs = {}
    for acc, bs in ((1, 4), (2, 2)):
        runs["hf", acc] = train(
            tmp, gpt2(), batch_size=bs, accumulation=acc, label_smoothing_factor=0.1
        )
        runs["ls", acc] = train(
            tmp, gpt2(), batch_size=bs, accumulation=acc, compute_loss_func=lshf.loss(0.1)
        )
    return runs


@needs_accelerate
@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_compute_loss_func_equals_label_smoothing_factor(trainer_runs, accumulation):
    hf_losses, hf_weights = trainer_runs["hf", accumulation]
    ls_losses, ls_weights = trainer_runs["ls", accumulation]
    assert len(ls_losses) == len(hf_losses) == 3
    np.testing.assert_allclose(ls_losses, hf_losses, atol=1e-5, rtol=0)
    assert_weights_close(ls_weights, hf_weights, atol=1e-5)
    assert not torch.equal(ls_weights["lm_head.weight"], gpt2().state_dict()["lm_head.weight"])


@needs_accelerate
def test_trainer_accumulation_equals_full_batch(trainer_runs):
    """Micro-batches of 2 with accumulation 2 == batches of 4, though the rows differ in length."""
    losses1, weights1 = trainer_runs["ls", 1]
    losses2, weights2 = trainer_runs["ls", 2]
    np.testing.assert_allclose(losses2, losses1, atol=1e-5, rtol=0)
    assert_weights_close(weights2, weights1, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Linear head without logits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("num_items", [None, 50])
def test_linear_path_equals_logits_path(make, num_items):
    b = batch(dataset(4))
    m1, m2 = make(), make()
    out = m1(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    ref = lshf.loss(0.1, causal=True)(out, b["labels"], num_items_in_batch=num_items)
    ref.backward()
    value = lshf.causal_lm_loss_without_logits(m2, b, 0.1, num_items_in_batch=num_items)
    value.backward()
    torch.testing.assert_close(value, ref, atol=1e-6, rtol=1e-5)
    g1 = {k: p.grad for k, p in m1.named_parameters()}
    for k, p in m2.named_parameters():
        torch.testing.assert_close(p.grad, g1[k], atol=1e-6, rtol=1e-4, msg=k)


def test_linear_path_rejects_rescaled_logits():
    model = llama()
    model.config.logits_scaling = 2.0
    with pytest.raises(ValueError, match="logits_scaling"):
        lshf.causal_lm_loss_without_logits(model, batch(dataset(2)))


@needs_accelerate
def test_linear_head_trainer_equals_logits_trainer(tmp_path, trainer_runs):
    losses, weights = train(
        tmp_path, gpt2(), batch_size=2, accumulation=2, trainer_cls=lshf.LinearHeadTrainer, eps=0.1
    )
    ref_losses, ref_weights = trainer_runs["hf", 2]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    assert_weights_close(weights, ref_weights, atol=1e-5)


# --------------------------------------------------------------------------------------------
# compute_metrics
# --------------------------------------------------------------------------------------------


def test_compute_metrics_padded_causal():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g)
    labels = torch.randint(0, 5, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, :] = -100
    labels[2, 2] = 3
    logits[1, 3:] = -100.0  # what the Trainer pads logits with; never scored
    pred = transformers.EvalPrediction(predictions=(logits.numpy(), None), label_ids=labels.numpy())
    got = lshf.compute_metrics(pred, causal=True)
    z, y = logits[:, :-1].reshape(-1, 5).double(), labels[:, 1:].reshape(-1)
    keep = y != -100
    z, y = z[keep], y[keep]
    assert got["count"] == keep.sum().item() == 5 + 3 + 1
    assert got["accuracy"] == pytest.approx((z.argmax(-1) == y).double().mean().item())
    assert got["nll"] == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-9)
    assert got["ece"] == pytest.approx(ls.metrics.expected_calibration_error(z.softmax(-1), y))
    # not shifted: token classification
    aligned = lshf.compute_metrics((logits.numpy(), labels.numpy()), causal=False)
    assert aligned["count"] == (labels != -100).sum().item()
    with pytest.raises(ValueError, match="causal"):
        lshf.compute_metrics((logits.numpy(), labels.numpy()))
    # 2-D classification needs no causal
    flat = lshf.compute_metrics((logits[0].numpy(), labels[0].clamp(min=0).numpy()))
    assert flat["count"] == 6
    empty = lshf.compute_metrics((logits.numpy(), np.full((3, 6), -100)), causal=True)
    assert empty["count"] == 0 and np.isnan(empty["nll"])


@needs_accelerate
def test_compute_metrics_in_trainer_evaluate(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    model = gpt2()
    trainer = lshf.LinearHeadTrainer(
        model=model,
        args=args,
        eval_dataset=dataset(5),
        compute_metrics=functools.partial(lshf.compute_metrics, causal=True),
        eps=0.1,
    )
    result = trainer.evaluate()
    rows = batch(dataset(5))
    with torch.no_grad():
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    expected = lshf.compute_metrics((logits.numpy(), rows["labels"].numpy()), causal=True)
    for key in ("accuracy", "nll", "ece", "count"):
        assert result[f"eval_{key}"] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)
    # eval_loss: mean over all evaluation tokens? The Trainer averages the batch losses.
    assert np.isfinite(result["eval_loss"])


@needs_accelerate
def test_trainer_llama_shifted_count(tmp_path):
    """Llama: the Trainer counts the shifted labels; step 1's logged loss is their plain mean."""
    hf_losses, hf_weights = train(
        tmp_path, llama(), batch_size=2, accumulation=2, label_smoothing_factor=0.1
    )
    ls_losses, ls_weights = train(
        tmp_path, llama(), batch_size=2, accumulation=2, compute_loss_func=lshf.loss(0.1)
    )
    np.testing.assert_allclose(ls_losses, hf_losses, atol=1e-5, rtol=0)
    assert_weights_close(ls_weights, hf_weights, atol=1e-5)
    # the first optimizer step saw the first 4 rows of the seeded permutation
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    b = batch([dataset()[i] for i in perm[:4]])
    with torch.no_grad():
        out = llama()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    mean = lshf.loss(0.1, causal=True)(out, b["labels"])  # num_items None: mean of shifted tokens
    assert ls_losses[0] == pytest.approx(mean.item(), abs=1e-5)
