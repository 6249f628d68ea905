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
            "That is exactly the test table above.\n"
            "\n"
            "## Prefix tuning on transformers models\n"
            "\n"
            "[`prefix_kv.py`](../peft_zoo/prefix_kv.py) · [`injection/prefix_model.py`](../peft_zoo/injection/prefix_model.py) ·\n"
            "[`interop/peft_prefix.py`](../peft_zoo/interop/peft_prefix.py) · tests:\n"
            "[`tests/test_prefix_tuning.py`](../tests/test_prefix_tuning.py),\n"
            "[`tests/test_prefix_tuning_seqcls.py`](../tests/test_prefix_tuning_seqcls.py)\n"
            "\n"
            "Prompt tuning changes only the input; prefix tuning (Li & Liang, 2021, arXiv:2101.00190) gives\n"
            "*every layer* its own $n$ trained keys and values. On a `transformers` decoder the natural place\n"
            "for them is the key/value cache: the prefix is handed to the model as `past_key_values`, exactly\n"
            "as if $n$ tokens had already been processed, so no attention code changes.\n"
            "\n"
            "Shapes, for $L$ layers, $H_{kv}$ key/value heads of width $d_h$ ($D = H_{kv} d_h$; with\n"
            "grouped-query attention $H_{kv} < H$, and the prefix is sized by $H_{kv}$, as PEFT sizes it):\n"
            "\n"
            "$$\n"
            "P \\in \\mathbb{R}^{n \\times 2 L D} \\;\\to\\; \\text{view } (n, 2L, H_{kv}, d_h) \\;\\to\\;\n"
            "K_\\ell, V_\\ell \\in \\mathbb{R}^{B \\times H_{kv} \\times n \\times d_h}\n"
            "$$\n"
            "\n"
            "(index $2\\ell$ holds layer $\\ell$'s keys, $2\\ell + 1$ its values). The attention mask gets $n$\n"
            "ones in front, so every real token attends to the prefix; the real tokens' positions start\n"
            "after the cache, at $n$ (a model counts them from `past_key_values.get_seq_length()`; given\n"
            "`position_ids` are shifted by $n$, as PEFT shifts them). With `prefix_projection=True` the trained tensors are\n"
            "$E \\in \\mathbb{R}^{n \\times D}$ and a two-layer MLP $D \\to h \\to 2LD$ (tanh), and $P = \\mathrm{MLP}(E)$:\n"
            "more parameters while training, the same $n \\cdot 2LD$ numbers saved.\n"
            "\n"
            "```python\n"
            "model = transformers.GPT2LMHeadModel(config)\n"
            "prefixed, params = pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=10))\n"
            "out = prefixed(input_ids=ids, attention_mask=mask, labels=ids)  # called like the model\n"
            "prefixed.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)\n"
            'pz.save_peft(prefixed, "out/")  # PEFT\'s PREFIX_TUNING files: PeftModel.from_pretrained reads them\n'
            "```\n"
            "\n"
            "Parameters: $n \\cdot 2 L D$; for GPT-2 small ($L = 12$, $D = 768$) and $n = 10$, 184,320.\n"
            "\n"
            "### Sequence classification (BERT, GPT-2, LLaMA) and `modules_to_save`\n"
            "\n"
            "`task_type` comes from the class name as for prompt tuning (`...ForSequenceClassification` ->\n"
            '`"SEQ_CLS"`), and the classifier (`classifier` in BERT, `score` in GPT-2 / LLaMA) is added to\n'
            "`modules_to_save` and trained in full, as PEFT's `PeftModelForSequenceClassification` does.\n"
            "PEFT then takes one of two routes, and peft_zoo takes the same one:\n"
            "\n"
            "- the model's `forward` names `past_key_values` (GPT-2, LLaMA): the model is called with the\n"
            "  cache and `labels`, exactly as for a causal LM;\n"
            "- it does not (`BertForSequenceClassification.forward` has only `**kwargs`): PEFT calls the\n"
            "  *backbone* (the first child that is a `PreTrainedModel`, `bert`) with the cache, takes its\n"
            "  `pooler_output` $(B, d)$, applies the model's `dropout`, the head (the first child whose name\n"
            "  contains a `modules_to_save` entry) and computes the loss itself, choosing `problem_type`\n"
            "  (regression, single- or multi-label) as `transformers` does.\n"
            "\n"
            "In BERT the cache changes three things: every layer's keys and values get the $n$ prefix rows\n"
            "($B, H, n + L, d_h$), the bidirectional mask is built from the extended $(B, n + L)$\n"
            "`attention_mask`, and the absolute position embeddings are read at $n, \\dots, n + L - 1$ (so\n"
            "$n + L$ must not exceed `max_position_embeddings`). `token_type_ids` stay $(B, L)$: they belong to\n"
            "the real tokens only (prompt tuning, which prepends embeddings, pads them with zeros instead).\n"
            "\n"
            "```python\n"
            "model = transformers.BertForSequenceClassification(config)\n"
            "prefixed, params = pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=10))"
        ),
    ),
)
