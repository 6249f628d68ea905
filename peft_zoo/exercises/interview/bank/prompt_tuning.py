"""The interview questions of docs/prefix_tuning.md (prompt tuning and P-tuning); the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "prefix_tuning.md"
TOPIC = "adapters"

QUESTIONS = (
    ConceptQuestion(
        id="prompt_tuning.exactly-trained-prompt-tuning-many",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What exactly is trained in prompt tuning, and how many parameters is it?",
        answer=(
            "One matrix $P \\in \\mathbb{R}^{n \\times d}$: $n d$ numbers, 15,360 for 20 tokens on a\n"
            "768-wide model, independent of depth. Everything else is frozen. For classification, PEFT also\n"
            "trains the new head, which has to be learned anyway."
        ),
        challenges=(7,),
        points=(
            "One matrix $P \\in \\mathbb{R}^{n \\times d}$: $nd$ numbers, independent of depth",
            "15,360 for 20 tokens on a 768-wide model",
            "Everything else is frozen; for classification PEFT also trains the new head",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.attention-mask-need-n-extra",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does the attention mask need $n$ extra ones, and why in front?",
        answer=(
            "The model now sees $n + L$ positions, and the mask must say which of them to attend to. The\n"
            "virtual tokens are always real, so they get 1. They sit in front of the text, so the ones go in\n"
            "front; appending them would mark the last $n$ text tokens visible and leave the prompt under\n"
            "the text's padding pattern."
        ),
        challenges=(22,),
        points=(
            "The model sees $n + L$ positions, so the mask needs $n$ more entries",
            "Virtual tokens are always real, so they get 1",
            "They sit in front of the text, so the ones go in front",
            "Appending would mark the last $n$ text tokens visible and mis-mask the prompt",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.100-labels-none-sequence-classification",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why $-100$ labels, and why none for sequence classification?",
        answer=(
            "A causal LM's labels align with its positions, so they must grow by $n$ too. $-100$ is the\n"
            "ignore index of cross-entropy: no loss is asked of the virtual positions, which have no target\n"
            "word. A classifier has one label per sequence, so there is nothing to align."
        ),
        points=(
            "A causal LM's labels align with positions, so they grow by $n$ too",
            "$-100$ is cross-entropy's ignore index: virtual positions have no target",
            "A classifier has one label per sequence: nothing to align",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.peft-drop-position-ids",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does PEFT drop `position_ids`?",
        answer=(
            "They were computed for $L$ tokens. The model receives $n + L$ rows, and the natural numbering\n"
            "starts at the first virtual token. Ignoring them lets the model number all positions itself.\n"
            "The price is that left padding also takes positions, as it does in the base model without\n"
            "explicit ids."
        ),
        challenges=(22,),
        points=(
            "Given `position_ids` were computed for $L$ tokens, but the model receives $n + L$",
            "Dropping them lets the model number all positions from the first virtual token",
            "Price: left padding also takes positions, as in the base model without ids",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.p-tuning-add-survives-training",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does P-tuning add, and what survives training?",
        answer=(
            "A reparameterisation $P = f(E)$ with an MLP or a BiLSTM. It couples the virtual tokens and\n"
            "smooths the optimisation, which helps on small models where plain prompt tuning trains poorly.\n"
            "After training, $P$ is all that matters: PEFT saves $P$ and discards $E$ and $f$, so a loaded\n"
            "P-tuning adapter is a prompt-tuning prompt. With $n = 20$, $d = h = 768$ the MLP trains\n"
            "1.79 M parameters but saves 15,360."
        ),
        challenges=(22,),
        points=(
            "P-tuning reparameterises $P = f(E)$ with an MLP or BiLSTM",
            "It couples the virtual tokens and smooths optimisation, helping small models",
            "PEFT saves only $P$ and discards $E$ and $f$: a loaded adapter is a prompt-tuning prompt",
            "$n = 20$, $d = h = 768$: the MLP trains 1.79 M parameters but saves 15,360",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.bert-s-pooler-reads-position",
        topic=TOPIC,
        guide=GUIDE,
        prompt="BERT's pooler reads position 0. What does it read after prompt tuning?",
        answer=(
            "The first virtual token's final hidden state, not `[CLS]`. Because the head is trained as well,\n"
            "this works; it is also why the head must be saved with the prompt."
        ),
        points=(
            "It reads the first virtual token's final hidden state, not `[CLS]`",
            "It works because the head is trained too",
            "So the head must be saved with the prompt",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.prompt-tuning-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Prompt tuning or LoRA?",
        answer=(
            "Prompt tuning saves a tiny file, never touches the weights, and lets one batch mix tasks, since\n"
            "each row can carry its own prompt. It costs $n$ positions of context and compute on every call,\n"
            "cannot be merged away, and only matches full fine-tuning on very large models (about 10 B\n"
            "parameters in Lester et al.). LoRA is stronger at small and medium sizes and can be merged\n"
            "into the weights, after which it costs nothing at inference."
        ),
        points=(
            "Prompt tuning: tiny file, untouched weights, one batch can mix tasks",
            "It costs $n$ positions of context and compute on every call and cannot be merged",
            "It matches full fine-tuning only on very large models (about 10 B)",
            "LoRA is stronger at small and medium sizes and costs nothing once merged",
        ),
    ),
    ConceptQuestion(
        id="prompt_tuning.would-check-prompt-tuning-implementation",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How would you check a prompt-tuning implementation against a reference?",
        answer=(
            "Copy the same $P$ into both, feed the same left-padded batch with labels, and compare logits,\n"
            "loss and $\\partial L / \\partial P$; then greedy-generate a few tokens. Do it on an encoder, a\n"
            "decoder, and a decoder with grouped-query attention, and round-trip the files both ways.\n"
            "That is exactly the test table above."
        ),
        points=(
            "Copy the same $P$ into both and feed the same left-padded batch with labels",
            "Compare logits, loss and $\\partial L/\\partial P$, then greedy-generate a few tokens",
            "Cover an encoder, a decoder and a decoder with grouped-query attention",
            "Round-trip the files both ways",
        ),
    ),
)
