"""Every prompt of the debate and of peer review, versioned, in one place.

The wording follows D&R (round 0, the debate round, critique, self-reflection with the gold answer) and FAIR
(peer review with a score in square brackets). Variable parts sit between XML-like tags, so any LLM reads them
as quoted material and the reference teacher can parse them. `PROMPT_VERSION` is stored with every MAG:
change it whenever a template changes, so training data built from different wordings stays distinguishable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.tasks.answers import Kind

PROMPT_VERSION = "dr-fair-v1"

FORMAT_LINE: dict[Kind, str] = {
    "numeric": "The final answer must be a single number.",
    "choice": "The final answer must be the letter of one option.",
    "text": "The final answer must be a short phrase.",
}

ANSWER = """Can you answer the following question as accurately as possible? {format_line} \
Explain your reasoning step by step and limit it to 500 words.

<question>
{question}
</question>

Respond in exactly this format:
### Answer
<your step-by-step reasoning>
Final answer: <your answer>"""

DEBATE = """Several agents answered the question below. These are their answers from the last round, \
in random order, each with the agent's self-reflection and the feedback it received.

<question>
{question}
</question>

{blocks}

Use the other agents' reasoning as additional information, weigh the feedback and the self-reflections, \
and answer the question again. {format_line} Explain your reasoning step by step and limit it to 500 words.

Respond in exactly this format:
### Answer
<your step-by-step reasoning>
Final answer: <your answer>"""

BLOCK = """<agent_answer index="{index}">
{reasoning}
Final answer: {answer}
{reflection}{feedback}</agent_answer>"""

_QUESTION_AND_OWN = """<question>
{question}
</question>

<your_answer>
{own}
</your_answer>"""

CRITIQUE = """You answered the question below correctly. Another agent answered it incorrectly.

""" + _QUESTION_AND_OWN + """

<other_answer>
{other}
</other_answer>

The correct final answer is {gold}.
Point out the mistakes in the other agent's reasoning and explain how to correct them. Be concise. \
Begin your reply with "Feedback:"."""

REFLECTION = """You answered the question below incorrectly.

""" + _QUESTION_AND_OWN + """

Given the correct final answer {gold}, reflect on your mistake: find where your reasoning went wrong and \
how to avoid it next time. Be concise. Begin your reply with "Self-reflection:"."""

REVIEW = """You are reviewing another teacher's solution to the question below.

<question>
{question}
</question>
{hint}
<solution>
{solution}
</solution>

Judge whether the reasoning and the final answer are correct. Explain briefly, then give a score from 1 \
(wrong) to 5 (fully correct and clearly explained) in square brackets on the last line, like [4]."""

HINT = "\n<hint>The correct final answer is {gold}.</hint>\n"


def answer_prompt(question: str, kind: Kind) -> str:
    return ANSWER.format(question=question, format_line=FORMAT_LINE[kind])


@dataclass
class Block:
    """One agent's part of a debate prompt: its last answer, reflection and received feedback."""

    reasoning: str
    answer: str
    reflection: str | None = None
    feedback: tuple[str, ...] = ()


def render_block(index: int, b: Block) -> str:
    reflection = f"Self-reflection: {b.reflection.strip()}\n" if b.reflection else ""
    feedback = ""
    if b.feedback:
        feedback = "Feedback:\n" + "".join(f"{i}. {f.strip()}\n" for i, f in enumerate(b.feedback, 1))
    return BLOCK.format(index=index, reasoning=b.reasoning.strip(), answer=b.answer, reflection=reflection,
                        feedback=feedback)


def debate_prompt(question: str, kind: Kind, blocks: list[str]) -> str:
    return DEBATE.format(question=question, blocks="\n\n".join(blocks), format_line=FORMAT_LINE[kind])


def critique_prompt(question: str, own: str, other: str, gold: str) -> str:
    return CRITIQUE.format(question=question, own=own.strip(), other=other.strip(), gold=gold)


def reflection_prompt(question: str, own: str, gold: str) -> str:
    return REFLECTION.format(question=question, own=own.strip(), gold=gold)


def review_prompt(question: str, solution: str, gold: str | None) -> str:
    return REVIEW.format(question=question, solution=solution.strip(),
                         hint=HINT.format(gold=gold) if gold is not None else "")


# ---- reading replies ---------------------------------------------------------------------------------------
_SCORE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")


def parse_score(text: str | None) -> int | None:
    """FAIR's strict format: the last `[n]` in the reply; anything else, or n outside 1-5, is dropped."""
    if not text:
        return None
    found = _SCORE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return int(value) if value.is_integer() and 1 <= value <= 5 else None


def strip_prefix(text: str, prefix: str) -> str:
    """`Feedback: ...` -> `...` (the prefix the prompt asked for, if the agent wrote it)."""
    t = text.strip()
    return t[len(prefix):].strip() if t.lower().startswith(prefix.lower()) else t


def reasoning_of(text: str) -> str:
    """An answer's reasoning: the reply without the `### Answer` header and the `Final answer` line."""
    t = re.sub(r"^\s*#+\s*Answer\s*\n", "", text.strip(), flags=re.I)
    idx = [m.start() for m in re.finditer(r"final\s+answer\s*(?:is)?\s*[:\uff1a]", t, flags=re.I)]
    return t[: idx[-1]].strip() if idx else t


def tag(text: str, name: str) -> str | None:
    """The content of `<name ...>...</name>` in a prompt (used by the reference teacher)."""
    m = re.search(rf"<{name}(?:\s[^>]*)?>\n?(.*?)\n?</{name}>", text, flags=re.S)
    return m.group(1).strip() if m else None
