"""Train a LoRA adapter with peft_zoo, hand it to Hugging Face PEFT, and take it back.

    python examples/peft_roundtrip.py            # needs the hf extra: transformers, peft

1. adapt a small BERT classifier with a ``LoraConfig`` (queries, values; the new classifier
   head trained in full through ``modules_to_save``);
2. train a few steps on a toy task: the loss is printed, and falls;
3. ``save_peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` in PEFT's format;
4. ``peft.PeftModel.from_pretrained(base, dir)``: PEFT computes the same outputs;
5. ``load_peft(base, dir)``: peft_zoo layers again, the same outputs once more.

Each step is a cell's worth of code, so the file pastes into a notebook as it is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

import peft_zoo as pz
from peft_zoo.interop import load_peft, save_peft

VOCAB, SEQ = 64, 12
CONFIG = transformers.BertConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=SEQ,
    num_labels=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def make_base() -> transformers.BertForSequenceClassification:
    """The "pretrained" base model: the same weights every call (a real run would use
    ``from_pretrained("bert-base-uncased", num_labels=2)``)."""
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(CONFIG).eval()


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy task: label 1 when the first token id is below VOCAB / 2."""
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=generator)  # (n, T)
    labels = (ids[:, 0] < VOCAB // 2).long()  # (n,)
    return ids, labels


def main(steps: int = 40, out: str | Path | None = None) -> dict[str, object]:
    transformers.utils.logging.set_verbosity_error()
    import peft  # imported here so that the module imports without peft installed

    # 1. Adapt: LoRA on queries and values, the classifier head trained in full.
    config = pz.LoraConfig(
        rank=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    model, params = pz.adapt_model(make_base(), config)
    pz.print_trainable_parameters(model)

    # 2. Train a few steps (LoRA's B starts at zero, so step 0 is the base model).
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        ids, labels = make_batch(32, g)
        loss = F.cross_entropy(model(input_ids=ids).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.eval()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5  # averages: single batches are noisy
    print(f"loss {'fell' if last < first else 'did not fall'}: {first:.4f} -> {last:.4f} (mean of 5 steps)")

    ids, _ = make_batch(8, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(input_ids=ids).logits  # (8, 2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out) if out is not None else Path(tmp) / "bert-lora"

        # 3. Save in PEFT's format.
        save_peft(model, path, task_type="SEQ_CLS")
        print("saved:", sorted(p.name for p in path.iterdir()))

        # 4. PEFT loads it into a fresh copy of the base model.
        theirs = peft.PeftModel.from_pretrained(make_base(), path).eval()
        with torch.no_grad():
            peft_diff = (theirs(input_ids=ids).logits - ours).abs().max().item()
        print(f"max |diff| peft_zoo vs PEFT: {peft_diff:.2e}")

        # 5. And back: peft_zoo layers on another fresh base model.
        again, _ = load_peft(make_base(), path)
        with torch.no_grad():
            load_diff = (again.eval()(input_ids=ids).logits - ours).abs().max().item()
        print(f"max |diff| after load_peft: {load_diff:.2e}")
        print(again.bert.encoder.layer[0].attention.self.query)

    return {
        "losses": losses,
        "loss_first": first,
        "loss_last": last,
        "peft_diff": peft_diff,
        "load_peft_diff": load_diff,
    }


if __name__ == "__main__":
    main()
