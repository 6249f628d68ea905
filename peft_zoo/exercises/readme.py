"""``practice/<track>/README.md`` and ``docs/challenges.md``, generated from the manifest so they
never drift.

``peft-zoo build`` writes them; ``peft-zoo build --check`` (and the test suite) fail when a
committed file differs from :func:`render_readme` / :func:`render_challenge_index`. Edit the
prose here and the challenge entries in ``manifest.py``, never the generated files.
"""

from __future__ import annotations

from ..injection.config_docs import CONFIG_PAGE, render_config_reference
from .manifest import BY_NUMBER, CHALLENGES, TRACK, Challenge

LEVEL_NAMES = {1: "warm-up", 2: "core", 3: "interview-hard"}

INTRO = """\
# Exercises · LoRA and adapters, from scratch

{count} short challenges that rebuild the heart of `peft_zoo` by hand: the LoRA layer,
bottleneck and parallel adapters, prefix tuning, IA³, injecting all of them into an
existing model, merging, adapter-only checkpoints, parameter counting, the sanity checks
you would want before trusting a long fine-tune, and finally serving: many adapters in one
batch and a cache that never returns an embedding computed by an adapter's old weights.
Each one is a stub of a few lines with `TODO` markers; you fill it in and a grader tells
you whether it is right. Three go beyond plain LoRA: NF4 quantisation as QLoRA does it,
one set of weights shared by every block with a LoRA per layer, and DoRA. Three more are
what real models need: Houlsby and Pfeiffer adapters placed in a BERT layer as AdapterHub
places them, prefix tuning through `past_key_values` with grouped-query attention, and
`merge_and_unload` for nn.Linear and GPT-2's Conv1D. Four rebuild the other weight-update
methods PEFT ships: VeRA (one frozen random pair shared by every layer, two trainable
vectors), LoHa (a Hadamard product of two low-rank products), LoKr (a Kronecker product)
and OFT (a block-diagonal rotation through the Cayley transform). The last three look
inside LoRA's relatives: AdaLoRA's SVD-form update with its orthogonality penalty, smoothed
importance scores and cubic rank budget; PiSSA and OLoRA, which start the adapter from the
weight's principal part (and turning a trained PiSSA adapter back into a plain LoRA); and
LoRA on nn.Embedding and nn.Conv2d.

The graders are property-based (hypothesis): they draw many shapes, ranks, dtypes and
seeds, run your code next to the reference answer, and compare. When something is off
the failure reads like a code review, not a stack trace:

```
forward output
  drawn:    in_features=1, out_features=1, bias=False, rank=2, alpha=None, seed=0, ...
  expected: shape (1,), dtype torch.float32, values [-0.198501]
  got:      shape (1,), dtype torch.float32, values [-0.139626]
  likely:   your result equals what this classic bug produces: the scale is missing (base(x) + B A x)
```

`drawn` is the input it picked, `expected` and `got` show the difference, and `likely`
names the mistake when your output matches a known bug. Each challenge also lists the
interview questions it prepares you for: once it passes, try answering them out loud.
"""

WORKFLOW = """\
## How to work through them

Run these from the repository root, after `python -m pip install -c constraints.txt -e ".[dev]"`
(or anywhere, with `--root DIR` or `PEFT_ZOO_ROOT=DIR`):

| command | what it does |
|---|---|
| `peft-zoo` | progress bar, every challenge's status, and exactly what to do next |
| `peft-zoo status` | your practice log: per challenge passed, tries, hints used, time from first try to pass, a "no hints" mark and a time estimate (★ 10, ★★ 20, ★★★ 35 min) |
| `peft-zoo check N` | grade challenge N now, print the grader's feedback, record the result |
| `peft-zoo watch` | re-grade the current challenge every time you save; moves on when it passes |
| `peft-zoo hint N` | reveal one more hint for N (`--all` shows every hint) |
| `peft-zoo solution N` | the reference answer, unlocked once N passes (`--force` to peek) |
| `peft-zoo reset N` | back your file up to `.backups/`, then restore the untouched stub |
| `peft-zoo list` | number, title, difficulty, prerequisites and status of each challenge |

A typical loop: `peft-zoo` to see where you are, open the file it names, replace each
`TODO(exNN)`, then `peft-zoo check N` (or leave `peft-zoo watch` running in a second
terminal). Stuck? `peft-zoo hint N`, as many times as there are hints. Once it passes,
read the reference with `peft-zoo solution N` and compare.

Status marks: `✓` passed, `✗` failing, `·` not started (the file is still the untouched
stub), `!` missing (restore the file with `peft-zoo reset N`). `peft-zoo` only grades files
that changed since their last grading, all in one pytest run, so it stays quick.

Plain pytest works too, without the runner:

```bash
pytest practice/{track}                                   # grade all your files
pytest practice/{track}/test_ex01_lora_linear.py          # one challenge
pytest practice/{track} --impl=solutions                  # grade the reference answers
pytest practice/{track} --impl=path/to/my/folder          # grade any folder of exNN_<name>.py
```

Your progress is kept in `practice/{track}/.progress.json` and your backups in
`practice/{track}/.backups/`; both are git-ignored, and deleting the progress file is
safe (it is recomputed from your files). `reset` never loses work: it saves a timestamped
copy of your file before restoring the stub, and does nothing if the file is untouched.

The stubs and reference answers are generated from one annotated source per challenge
(`peft_zoo/exercises/source/{track}/`) by `peft-zoo build`; `peft-zoo build --check` fails
when a committed file, or this README, differs from what the builder writes.
"""


def _count_word(n: int) -> str:
    words = "Zero One Two Three Four Five Six Seven Eight Nine Ten Eleven Twelve Thirteen Fourteen Fifteen"
    names = [*words.split(), "Sixteen", "Seventeen", "Eighteen", "Nineteen", "Twenty"]
    names += ["Twenty-one", "Twenty-two", "Twenty-three", "Twenty-four", "Twenty-five"]
    names += ["Twenty-six", "Twenty-seven", "Twenty-eight", "Twenty-nine", "Thirty"]
    return names[n] if n < len(names) else str(n)


def _stars(level: int) -> str:
    return "★" * level + "☆" * (3 - level)


def _level(ch: Challenge) -> str:
    return f"{_stars(ch.difficulty)} {LEVEL_NAMES.get(ch.difficulty, str(ch.difficulty))}"


def _ref(number: int) -> str:
    ch = BY_NUMBER.get(number)
    return f"{number:02d} `{ch.name}`" if ch else f"{number:02d}"


def _order() -> str:
    lines = [
        "## The order",
        "",
        "Work in number order: every prerequisite comes before the challenges that use it, and",
        "difficulty climbs gently. The table is the whole track at a glance; `needs` lists the",
        "challenges whose ideas a challenge reuses, handy if you want to jump ahead.",
        "",
        "| # | challenge | level | needs | you write |",
        "|---|---|---|---|---|",
    ]
    for ch in CHALLENGES:
        needs = ", ".join(f"{n:02d}" for n in ch.prerequisites) or "-"
        objects = ", ".join(f"`{o}`" for o in ch.objects)
        lines.append(f"| {ch.number:02d} | {ch.title} | {_stars(ch.difficulty)} | {needs} | {objects} |")
    threads = _threads()
    if threads:
        lines += [
            "",
            "Only after one idea? Each line is a starting challenge and everything that builds on it",
            "(a challenge that needs two ideas appears on both lines):",
            "",
        ]
        lines += [f"- {' → '.join(f'{n:02d}' for n in thread)}" for thread in threads]
    return "\n".join(lines) + "\n"


def _threads() -> list[list[int]]:
    """For each challenge without prerequisites that others build on: it and its dependents."""
    dependents: dict[int, set[int]] = {ch.number: set() for ch in CHALLENGES}
    for ch in CHALLENGES:
        for n in ch.prerequisites:
            dependents.setdefault(n, set()).add(ch.number)
    threads = []
    for ch in CHALLENGES:
        if ch.prerequisites or not dependents[ch.number]:
            continue
        seen: set[int] = set()
        todo = [ch.number]
        while todo:
            for n in dependents.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        threads.append([ch.number, *sorted(seen)])
    return threads


def _challenge(ch: Challenge) -> str:
    prereqs = ", ".join(_ref(n) for n in ch.prerequisites) or "none"
    objects = ", ".join(f"`{o}`" for o in ch.objects)
    lines = [
        f"### {ch.number:02d} · {ch.title}",
        "",
        f"- **Difficulty:** {_level(ch)}",
        f"- **Prerequisites:** {prereqs}",
        f"- **You write:** {objects} in `{ch.stem}.py`; graded by `test_{ch.stem}.py`",
        f"- **Check it:** `peft-zoo check {ch.number}`"
        + (
            f" · {len(ch.hints)} hint{'s' if len(ch.hints) != 1 else ''}: `peft-zoo hint {ch.number}`"
            if ch.hints
            else ""
        ),
    ]
    if ch.interview:
        lines += ["- **Interview questions it prepares you for:**"]
        lines += [f"  - {q}" for q in ch.interview]
    return "\n".join(lines) + "\n"


def render_readme() -> str:
    """The full text of ``practice/<track>/README.md``."""
    notice = (
        "<!-- Generated by `peft-zoo build` from peft_zoo/exercises/manifest.py and "
        "peft_zoo/exercises/readme.py: edit those, not this file. -->\n"
    )
    parts = [
        notice + "\n" + INTRO.format(count=_count_word(len(CHALLENGES))),
        WORKFLOW.format(track=TRACK),
        _order(),
        "## The challenges\n",
        *(_challenge(ch) for ch in CHALLENGES),
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- docs/challenges.md

# Where each challenge's ideas are explained: (guide page in docs/, notebook in notebooks/).
GUIDES: dict[int, tuple[str, str]] = {
    1: ("lora.md", "01_lora_from_scratch"),
    2: ("adapters.md", "02_adapter_zoo"),
    3: ("adapters.md", "02_adapter_zoo"),
    4: ("lora.md", "01_lora_from_scratch"),
    5: ("adapters.md", "02_adapter_zoo"),
    6: ("adapters.md", "02_adapter_zoo"),
    7: ("prefix_tuning.md", "02_adapter_zoo"),
    8: ("ia3.md", "02_adapter_zoo"),
    9: ("ia3.md", "02_adapter_zoo"),
    10: ("lora.md", "03_real_models_and_peft"),
    11: ("adapters.md", "02_adapter_zoo"),
    12: ("lora.md", "01_lora_from_scratch"),
    13: ("lora.md", "03_real_models_and_peft"),
    14: ("lora.md", "01_lora_from_scratch"),
    15: ("lora.md", "01_lora_from_scratch"),
    16: ("batched.md", "04_batched_multi_adapter"),
    17: ("batched.md", "04_batched_multi_adapter"),
    18: ("qlora.md", "05_qlora_nf4"),
    19: ("weight_sharing.md", "06_shared_weights_lora"),
    20: ("dora_loraplus.md", "03_real_models_and_peft"),
    21: ("bottleneck_adapters.md", "03_real_models_and_peft"),
    22: ("prefix_tuning.md", "03_real_models_and_peft"),
    23: ("lora.md", "03_real_models_and_peft"),
    24: ("vera.md", "08_leaderboard"),
    25: ("loha_lokr.md", "08_leaderboard"),
    26: ("loha_lokr.md", "08_leaderboard"),
    27: ("oft.md", "08_leaderboard"),
    28: ("adalora.md", "08_leaderboard"),
    29: ("pissa_olora.md", "08_leaderboard"),
    30: ("lora_embedding_conv.md", "01_lora_from_scratch"),
}

INDEX_INTRO = """\
# Challenges

{count} interview-style challenges rebuild peft_zoo by hand. Each is a stub with `TODO`
markers in `practice/{track}/`; a property-based grader compares your code with the reference
answer and names the classic bug when your output matches one. Start with
`python -m pip install -c constraints.txt -e ".[dev]" && peft-zoo`, which shows your progress
and the next challenge; `peft-zoo check N` grades one, `peft-zoo hint N` reveals a hint.

Levels: ★☆☆ warm-up, ★★☆ core, ★★★ interview-hard. *Needs* lists the challenges whose ideas
a challenge reuses; doing them in number order always satisfies it. `peft-zoo status` keeps
your practice log, and `peft-zoo interview` runs a timed mock interview: concept questions
from the guides, numeric questions graded by the cost model, and one challenge against the
clock.

**Reference answers are published here on purpose.** The site is built from the repository,
and anyone who clones it has `solutions/`; hiding the answers on the site would not stop
anyone who wants to look. The runner is where the discipline lives: `peft-zoo solution N`
opens only after N passes, and the interview's coding question is written from the stub in
a separate folder and graded by the same grader. The links below are marked *spoiler*: open
one after your own attempt passes, to compare.
"""


def render_challenge_index() -> str:
    """The full text of ``docs/challenges.md``: one row per challenge with its level,
    prerequisites and links to the stub, grader, solution, guide and notebook."""
    notice = (
        "<!-- Generated by `peft-zoo build` from peft_zoo/exercises/manifest.py and "
        "peft_zoo/exercises/readme.py: edit those, not this file. -->\n"
    )
    practice, solutions = f"../practice/{TRACK}", f"../solutions/{TRACK}"
    lines = [
        "| # | challenge | level | needs | files | learn it in |",
        "|---|---|---|---|---|---|",
    ]
    for ch in CHALLENGES:
        needs = ", ".join(f"{n:02d}" for n in ch.prerequisites) or "-"
        files = (
            f"[stub]({practice}/{ch.stem}.py) · [grader]({practice}/test_{ch.stem}.py) · "
            f"[solution (spoiler)]({solutions}/{ch.stem}.py)"
        )
        guide, notebook = GUIDES[ch.number]
        learn = f"[guide]({guide}) · [notebook](../notebooks/{notebook}.ipynb)"
        lines.append(
            f"| {ch.number:02d} | {ch.title} | {_stars(ch.difficulty)} | {needs} | {files} | {learn} |"
        )
    questions = ["## Interview questions, by challenge", ""]
    for ch in CHALLENGES:
        if ch.interview:
            questions.append(f"**{ch.number:02d} `{ch.name}`**")
            questions.append("")
            questions += [f"- {q}" for q in ch.interview]
            questions.append("")
    parts = [
        notice + "\n" + INDEX_INTRO.format(count=_count_word(len(CHALLENGES)), track=TRACK),
        "\n".join(lines) + "\n",
        "\n".join(questions).rstrip() + "\n",
    ]
    return "\n".join(parts)


def generated_pages() -> dict[str, str]:
    """``path relative to the repository root -> text`` of every generated page: the two written
    from the manifest, and the config field reference written from the config fields' help."""
    return {
        f"practice/{TRACK}/README.md": render_readme(),
        "docs/challenges.md": render_challenge_index(),
        CONFIG_PAGE: render_config_reference(),
    }
