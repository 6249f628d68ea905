"""The tour does what the README promises; the CLI wires it up and reports errors clearly."""

import subprocess
import sys

import pytest

from peft_zoo.cli import main
from peft_zoo.cli.tour import run_tour
from peft_zoo.models import TinyTransformerConfig

SMALL = TinyTransformerConfig(vocab_size=32, max_len=17, d_model=64, n_heads=4, d_ff=128, n_layers=2)


@pytest.fixture(scope="module")
def tour_result():
    return run_tour(steps=80, seed=0, config=SMALL, quiet=True)


def test_tour_loss_falls_and_accuracy_rises(tour_result) -> None:
    assert tour_result.loss_end < 0.5 * tour_result.loss_start
    assert tour_result.accuracy_after > tour_result.accuracy_before + 0.1


def test_tour_merge_and_reload_are_exact(tour_result) -> None:
    assert tour_result.merge_max_abs_diff < 1e-4  # float32 round-off only
    assert tour_result.reload_max_abs_diff == 0.0


def test_tour_trains_a_small_fraction_and_saves_a_small_file(tour_result) -> None:
    assert 0 < tour_result.trainable < 0.1 * tour_result.total
    # 4-byte floats plus a small header: the file is the trainable tensors, nothing else.
    assert 4 * tour_result.trainable <= tour_result.adapter_bytes < 4 * tour_result.trainable + 16_384


def test_cli_tour_prints_each_stage(capsys, monkeypatch) -> None:
    monkeypatch.setattr("peft_zoo.cli.tour.TOUR_CONFIG", SMALL)  # the stages, not the model size
    assert main(["tour", "--steps", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for marker in ("1. Base model", "trainable params:", "|| all params:", "4. Merged", "5. Saved adapter"):
        assert marker in out


def test_cli_rejects_bad_steps(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tour", "--steps", "0"])
    assert exc.value.code == 2
    assert "--steps must be > 0" in capsys.readouterr().err


def test_bare_command_points_to_the_tour(capsys) -> None:
    assert main([]) == 0
    assert "peft-zoo tour" in capsys.readouterr().out


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "peft_zoo", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("peft_zoo ")
