"""The README's code examples run, in order, and say what they claim."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_examples_run(capsys) -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 8, "the README should show every building block"
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"README python block {i} failed: {err!r}\n{block}") from err
    out = capsys.readouterr().out
    assert "did you mean ['blocks.0.attn.branch.q'" in out
    # The summary line printed in the README is the one the code really prints.
    printed = re.search(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: [\d.]+", out)
    assert printed, out
    assert f"# {printed.group(0)}" in README.read_text()


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(commands) == 2
    test_command = commands[1].strip()
    assert "pytest" in test_command and commands[0].strip().endswith("&& peft-zoo")
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), ".ci/run must run the README's test command verbatim"
