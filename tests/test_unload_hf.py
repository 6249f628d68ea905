"""merge_and_unload / unload on transformers models (BERT, GPT-2, LLaMA with grouped-query
attention), against Hugging Face PEFT's ``PeftModel.merge_and_unload()`` / ``unload()``.

Each case trains-looking weights into a PEFT model, saves it with ``save_pretrained``, loads it
into a fresh base with ``pz.load_peft`` (identical weights in both), and compares. Observed
(CPU, float32, peft 0.21.2, transformers 5.23.0), max |logits difference| after merging,
peft_zoo vs PEFT: 0 for LoRA, DoRA and IA³ on all three architectures (both write the same
``W0 + s B A``, ``m ⊙ V / ||V||``, ``diag(l) W0`` formed by the same operations). Merged vs
unmerged: at most 1.7e-6 (float rounding of the folded weight). A merged model saved with
``save_pretrained`` loads in a fresh process in which peft_zoo cannot even be imported and
gives the adapted model's logits again.

One deliberate difference: PEFT's ``unload()`` keeps the *trained* copy of a
``modules_to_save`` module; ``pz.unload`` puts the original back, so the result is the
untouched base (the LoRA / IA³ layers come out identically in both).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import IDS, base, logits, max_diff, perturb  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

TARGETS = {
    "bert": ["query", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # GPT-2's Conv1D: fan_in_fan_out
    "llama": ["q_proj", "k_proj", "v_proj", "down_proj"],  # k/v 16 -> 8 with grouped-query attention
}
CASES = [(arch, method) for arch in sorted(TARGETS) for method in ("lora", "dora", "ia3")]
MERGED_TOL = 1e-5  # merged vs unmerged, float32; observed at most 1.7e-6


def peft_model(arch: str, method: str, seed: int = 0):
    targets = TARGETS[arch]
    head = ["classifier"] if arch == "bert" else None
    if method == "ia3":
        config = peft.IA3Config(
            target_modules=targets, feedforward_modules=targets[-1:], modules_to_save=head
        )
    else:
        config = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, use_dora=method == "dora", modules_to_save=head
        )
    return perturb(peft.get_peft_model(base(arch), config), seed=seed)


def both(arch: str, method: str, tmp_path: Path):
    """PEFT's model and peft_zoo's, holding the same adapter (through PEFT's file format)."""
    theirs = peft_model(arch, method)
    theirs.save_pretrained(tmp_path / "adapter")
    ours, _ = pz.load_peft(base(arch), tmp_path / "adapter")
    return ours.eval(), theirs.eval()


def plain(model: torch.nn.Module) -> list[str]:
    """Modules of a peft_zoo or peft class left in ``model``."""
    return [
        f"{n}: {type(m).__name__}" for n, m in model.named_modules() if type(m).__module__.startswith("peft")
    ]


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_merge_and_unload_equals_peft(arch: str, method: str, tmp_path: Path) -> None:
    ours, theirs = both(arch, method, tmp_path)
    unmerged = logits(ours)
    ours = pz.merge_and_unload(ours)
    theirs = theirs.merge_and_unload()
    assert not plain(ours), plain(ours)
    assert type(ours) is type(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # same plain module tree
    diff = max_diff(logits(ours), logits(theirs))
    assert diff <= 1e-6, f"{arch} {method}: merged peft_zoo vs merged PEFT differ by {diff:.3g}"
    assert max_diff(logits(ours), unmerged) <= MERGED_TOL


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_unload_gives_back_the_untouched_base(arch: str, method: str, tmp_path: Path) -> None:
    ours, theirs = both(arch, method, tmp_path)
    untouched = base(arch)
    ours = pz.unload(ours)
    assert not plain(ours), plain(ours)
    expected = dict(untouched.named_parameters())
    assert sorted(dict(ours.named_parameters())) == sorted(expected)
    for name, p in ours.named_parameters():
        assert torch.equal(p, expected[name]), name
    assert torch.equal(logits(ours), logits(untouched))
    theirs = theirs.unload()
    if arch == "bert":  # PEFT's unload keeps the trained classifier (modules_to_save); ours the original
        assert torch.equal(
            theirs.classifier.weight,
            pz.merge_and_unload(both(arch, method, tmp_path / "b")[0]).classifier.weight,
        )
    else:
        assert torch.equal(logits(ours), logits(theirs))


RELOAD = textwrap.dedent(
    """
    import importlib.abc, sys, torch, transformers

    class NoPeftZoo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "peft_zoo":
                raise ModuleNotFoundError(f"{name} must not be needed to load an exported model")

    sys.meta_path.insert(0, NoPeftZoo())
    ids, out = torch.load(sys.argv[1], weights_only=True), {}
    for arch, cls in (("bert", "AutoModelForSequenceClassification"), ("gpt2", "AutoModelForCausalLM"),
                      ("llama", "AutoModelForCausalLM")):
        model = getattr(transformers, cls).from_pretrained(sys.argv[2] + "/" + arch).eval()
        with torch.no_grad():
            out[arch] = model(input_ids=ids).logits
    assert not any(m.split(".")[0] == "peft_zoo" for m in sys.modules)
    torch.save(out, sys.argv[3])
    """
)


def test_a_merged_model_reloads_without_peft_zoo(tmp_path: Path) -> None:
    """``save_pretrained`` -> ``from_pretrained`` in a fresh process that cannot import peft_zoo
    reproduces the adapted model's logits; BERT keeps its trained classifier."""
    expected = {}
    for arch, method in (("bert", "lora"), ("gpt2", "dora"), ("llama", "ia3")):
        ours, _ = both(arch, method, tmp_path / arch)
        expected[arch] = logits(ours)
        pz.merge_and_unload(ours).save_pretrained(tmp_path / "export" / arch)
    torch.save(IDS, tmp_path / "ids.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            str(tmp_path / "ids.pt"),
            str(tmp_path / "export"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # not the repository root, so no local peft_zoo is on the path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = torch.load(tmp_path / "out.pt", weights_only=True)
    for arch, out in expected.items():
        assert max_diff(reloaded[arch], out) <= MERGED_TOL, arch


def test_a_merge_into_gpt2s_tied_lm_head_is_refused() -> None:
    """GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``: merging a LoRA on the head would
    rewrite the input embeddings too, so it is refused and nothing changes; unloading is fine."""
    model, _ = pz.adapt_model(base("gpt2"), pz.LoraConfig(rank=2, target_modules=["lm_head", "c_attn"]))
    perturb(model, seed=1)
    before = fingerprint(model)
    with pytest.raises(
        pz.UnloadError,
        match=r"'lm_head' \(LoRALinear\): its base weight is tied to \['transformer\.wte\.weight'\]",
    ):
        pz.merge_and_unload(model)
    assert_model_unchanged(model, before, what="a refused merge into a tied lm_head")
    assert torch.equal(logits(pz.unload(model)), logits(base("gpt2")))
