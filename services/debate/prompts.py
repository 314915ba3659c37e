"""Every prompt of the debate and of peer review, versioned, in one place.

The wording follows D&R (round 0, the debate round, critique, self-reflection with the gold answer) and FAIR
(peer review with a score in square brackets, the fault-aware explanation of a student's mistake). Variable parts
sit between XML-like tags, so any LLM reads them as quoted material and the reference teacher can parse them.
`PROMPT_VERSION` is stored with every MAG: change it whenever a template changes, so training data built from
different wordings stays distinguishable.

The gold answer is stated with its provenance: "The correct final answer is X" only for a label (a client's or a
dataset's); a teachers' consensus on unlabelled traffic is "The teachers' consensus final answer is X".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from services.tasks.answers import AnswerSpec, AnswerType, spec_of

PROMPT_VERSION = "dr-fair-v2"

LABEL_SOURCES = frozenset({"feedback", "dataset"})  # gold that a person or a dataset vouches for

FORMAT_LINE: dict[str, str] = {
    "number": "The final answer must be a single number.",
    "choice": "The final answer must be the letter of one option.",
    "label": "The final answer must be exactly one of these labels, written as listed: {labels}.",
    "label_listed": "The final answer must be exactly one of the labels the request lists, written as listed.",
    "text": "The final answer must be a short phrase.",
    "json": "The final answer must be one JSON object on a single line, in the format the request asks for.",
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

{gold_line}
Point out the mistakes in the other agent's reasoning and explain how to correct them. Be concise. \
Begin your reply with "Feedback:"."""

REFLECTION = """You answered the question below incorrectly.

""" + _QUESTION_AND_OWN + """

{gold_line} Reflect on your mistake: find where your reasoning went wrong and how to avoid it next time. \
Be concise. Begin your reply with "Self-reflection:"."""

_STUDENT_MISTAKE = """<question>
{question}
</question>

<student_answer>
{answer}
</student_answer>

<hint>{gold_line}</hint>"""

EXPLANATION = """Act as a teacher. A student answered the question below incorrectly.

""" + _STUDENT_MISTAKE + """

Point out the mistakes in the student's answer step by step and explain how to reach the correct answer, so the \
student can learn from them. Be concise."""

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

REVIEW_EXPLANATION = """You are reviewing another teacher's explanation of a student's mistake.

""" + _STUDENT_MISTAKE + """

<explanation>
{explanation}
</explanation>

Judge whether the explanation finds the student's actual mistake and leads to the correct answer. Explain \
briefly, then give a score from 1 (wrong or unhelpful) to 5 (correct and clear) in square brackets on the last \
line, like [4]."""

JUDGE = """You are judging an answer to the request below against this rubric: {rubric}

<question>
{question}
</question>
{hint}
<answer>
{answer}
</answer>

Explain briefly, then give a score from 1 to 5 in square brackets on the last line, like [4]."""

HINT = "\n<hint>{gold_line}</hint>\n"


def gold_line(gold: str, source: str) -> str:
    """The gold answer with its provenance: a label is "the correct" answer, a consensus only the teachers'."""
    if source in LABEL_SOURCES:
        return f"The correct final answer is {gold}."
    return f"The teachers' consensus final answer is {gold}."


def format_line(spec: AnswerType | AnswerSpec, question: str = "") -> str:
    """The answer-format sentence of answer and debate prompts. A label task's names its label set, unless the
    request lists every label already (an app's system prompt usually does): a second copy would only take
    the context a small student needs."""
    spec = spec_of(spec)
    if spec.type == "label" and spec.labels and all(label in question for label in spec.labels):
        return FORMAT_LINE["label_listed"]
    return FORMAT_LINE[spec.type].format(labels=", ".join(spec.labels))


def answer_prompt(question: str, spec: AnswerType | AnswerSpec) -> str:
    return ANSWER.format(question=question, format_line=format_line(spec, question))


def judge_prompt(question: str, answer: str, rubric: str, reference: str | None) -> str:
    """A `text` task's answer judged against the task's rubric (and a client's reference answer, when given)."""
    hint = HINT.format(gold_line=f"A reference answer: {reference}") if reference is not None else ""
    return JUDGE.format(question=question, answer=answer.strip(), rubric=rubric, hint=hint)


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


def debate_prompt(question: str, spec: AnswerType | AnswerSpec, blocks: list[str]) -> str:
    return DEBATE.format(question=question, blocks="\n\n".join(blocks), format_line=format_line(spec, question))


_BLOCK_RE = re.compile(r'<agent_answer index="\d+">.*?</agent_answer>', re.S)


def split_debate_prompt(prompt: str, fits: Callable[[str], bool]) -> tuple[list[str], bool]:
    """D&R's long-context rule: a debate prompt whose structured information is too long becomes several prompts,
    each carrying the instruction, the question and as many agent blocks as fit (in order, renumbered).

    Returns (prompts, complete): `complete` is False when a single block did not fit on its own, so it was left out
    (each block was already cut to `debate.block_tokens` when the debate ran). A prompt that fits is returned as is.
    """
    if fits(prompt):
        return [prompt], True
    blocks = _BLOCK_RE.findall(prompt)
    if not blocks:
        return [], False
    head = prompt[: prompt.index(blocks[0])]
    tail = prompt[prompt.index(blocks[-1]) + len(blocks[-1]):]

    def render(group: list[str]) -> str:
        renumbered = [re.sub(r'^<agent_answer index="\d+">', f'<agent_answer index="{i}">', b)
                      for i, b in enumerate(group, 1)]
        return head + "\n\n".join(renumbered) + tail

    out: list[str] = []
    group: list[str] = []
    complete = True
    for b in blocks:
        if fits(render([*group, b])):
            group.append(b)
            continue
        if group:
            out.append(render(group))
        group = [b] if fits(render([b])) else []
        complete = complete and bool(group)
    if group:
        out.append(render(group))
    return out, complete


def critique_prompt(question: str, own: str, other: str, gold: str, gold_source: str) -> str:
    return CRITIQUE.format(question=question, own=own.strip(), other=other.strip(),
                           gold_line=gold_line(gold, gold_source))


def reflection_prompt(question: str, own: str, gold: str, gold_source: str) -> str:
    return REFLECTION.format(question=question, own=own.strip(), gold_line=gold_line(gold, gold_source))


def explanation_prompt(question: str, student_answer: str, gold: str, gold_source: str) -> str:
    """FAIR's fault-aware prompt: a teacher explains the student's mistake, the gold given as a hint."""
    return EXPLANATION.format(question=question, answer=student_answer.strip(), gold_line=gold_line(gold, gold_source))


def review_prompt(question: str, solution: str, gold: str | None, gold_source: str = "none") -> str:
    hint = HINT.format(gold_line=gold_line(gold, gold_source)) if gold is not None else ""
    return REVIEW.format(question=question, solution=solution.strip(), hint=hint)


def explanation_review_prompt(question: str, student_answer: str, explanation: str, gold: str,
                              gold_source: str) -> str:
    return REVIEW_EXPLANATION.format(question=question, answer=student_answer.strip(), explanation=explanation.strip(),
                                     gold_line=gold_line(gold, gold_source))


# ---- reading replies ---------------------------------------------------------------------------------------
def strip_prefix(text: str, prefix: str) -> str:
    """`Feedback: ...` -> `...` (the prefix the prompt asked for, if the agent wrote it)."""
    t = text.strip()
    return t[len(prefix):].strip() if t.lower().startswith(prefix.lower()) else t


def reasoning_of(text: str) -> str:
    """An answer's reasoning: the reply without the `### Answer` header and the last line naming the final answer
    (`Final answer: X`, `**Final Answer:** X`, `## Final answer`, `The final answer is X.`)."""
    t = re.sub(r"^\s*#+\s*Answer\s*\n", "", text.strip(), flags=re.I)
    idx = [m.start() for m in re.finditer(r"(?m)^[^\n]*final\s+answer\b", t, flags=re.I)]
    return t[: idx[-1]].strip() if idx else t


def final_message(question: str) -> str:
    """The last user message of a debated question (without the conversation context `question_of` put first)."""
    return question.rsplit("</conversation>", 1)[-1].rsplit("</system_prompt>", 1)[-1].strip()


def tag(text: str, name: str) -> str | None:
    """The content of `<name ...>...</name>` in a prompt (used by the reference teacher)."""
    m = re.search(rf"<{name}(?:\s[^>]*)?>\n?(.*?)\n?</{name}>", text, flags=re.S)
    return m.group(1).strip() if m else None
