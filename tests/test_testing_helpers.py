"""The shared assert helpers must themselves be able to fail, or every test built on them is vacuous."""

import pytest
import torch
from torch import nn

from peft_zoo.models import TinyMLP
from peft_zoo.testing import assert_close, assert_model_unchanged, changed_tensors, fingerprint, snapshot


def test_fingerprint_detects_each_kind_of_change() -> None:
    torch.manual_seed(0)
    model = TinyMLP()
    before = fingerprint(model)
    assert_model_unchanged(model, before, what="untouched")  # no false alarm

    with torch.no_grad():
        model.head.weight[0, 0] += 1e-6
    with pytest.raises(AssertionError, match=r"tensors changed: \['head.weight'\]"):
        assert_model_unchanged(model, before, what="value")

    model = TinyMLP()
    before = fingerprint(model)
    model.head.weight.requires_grad_(False)
    with pytest.raises(AssertionError, match="requires_grad flags changed"):
        assert_model_unchanged(model, before, what="flag")

    model = TinyMLP()
    before = fingerprint(model)
    replacement = nn.Linear(16, 4)
    replacement.load_state_dict(model.head.state_dict())
    model.head = replacement  # same values, same type, different object
    with pytest.raises(AssertionError, match="a module was replaced"):
        assert_model_unchanged(model, before, what="identity")


def test_changed_tensors_sees_added_and_removed_entries() -> None:
    model = TinyMLP()
    before = snapshot(model)
    model.register_buffer("extra", torch.zeros(1))
    assert changed_tensors(model, before) == ["extra"]


def test_assert_close_message_teaches() -> None:
    with pytest.raises(AssertionError) as exc:
        assert_close(
            torch.tensor([1.0, 2.0]),
            torch.tensor([1.0, 2.5]),
            what="LoRA output",
            drawn={"rank": 4},
            hint="scale missing",
        )
    msg = str(exc.value)
    for fragment in (
        "LoRA output",
        "max |diff| 0.5 at index (1,)",
        "drawn:    rank=4",
        "expected:",
        "got:",
        "likely:   scale missing",
    ):
        assert fragment in msg, msg
    with pytest.raises(AssertionError, match="wrong shape"):
        assert_close(torch.zeros(2, 3), torch.zeros(3, 2), what="shape")
    assert_close(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7]), what="within tolerance")
