"""Label smoothing in a Hugging Face Trainer: three ways, on a tiny random GPT-2 (CPU, seconds).

    pip install transformers accelerate
    python examples/hf_trainer.py

1. ``compute_loss_func=loss(0.1)``: the same training as ``label_smoothing_factor=0.1``, plus the
   other conventions and options (``style="others"``, ``z_loss``, ``softcap``).
2. ``LinearHeadTrainer(eps=0.1)``: the same loss from the hidden states and ``lm_head.weight``,
   without the (tokens, vocabulary) logits.
3. ``compute_metrics``: accuracy, NLL and ECE of the evaluation tokens.
"""

import functools
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import labelsmooth.integrations.hf as lshf

VOCAB, SEQ = 101, 16


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32)
    return GPT2LMHeadModel(config)


def rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random token rows, right-padded; the padding's labels are -100."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        mask = (torch.arange(SEQ) < SEQ - i % 5).long()
        out.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return out


def main() -> None:
    metrics = functools.partial(lshf.compute_metrics, causal=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_steps=5,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
        )
        common = dict(
            args=args, train_dataset=rows(40, 0), eval_dataset=rows(8, 1), compute_metrics=metrics
        )
        trainer = Trainer(model=tiny_gpt2(), compute_loss_func=lshf.loss(0.1), **common)
        trainer.train()
        print("loss(0.1):         ", trainer.evaluate())
        trainer = lshf.LinearHeadTrainer(model=tiny_gpt2(), eps=0.1, **common)
        trainer.train()
        print("LinearHeadTrainer: ", trainer.evaluate())


if __name__ == "__main__":
    main()
