"""Replies as hosted models write them, with what `read_answer` must make of each.

Written for this project in the styles of several model families: OpenAI-style markdown, Claude-style prose
("The final answer is"), Gemini-style headings, DeepSeek-style `<think>` reasoning before a boxed answer,
Llama-style `Answer: X`, JSON mode, multiple choice, refusals, abstentions, truncated replies, replies holding
several numbers of which only the marked one is the answer, and replies that change their mind.

Each entry is `(reply, answer_type, finish_reason, status, answer, gold)`: `answer` is what `read_answer` returns
(None unless `status` is ok) and `gold` the correct answer to the question the reply answers. Every `ok` answer is
right (`same_answer(answer, gold)`), except the replies listed in `WRONG`, which answer wrongly on purpose.
`LABEL_CORPUS` and `JSON_CORPUS` do the same for the `label` (an intent set) and `json` (a record schema) answer
types, with `WRONG_TYPED`.
"""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    reply: str
    answer_type: str
    finish_reason: str | None
    status: str
    answer: str | None
    gold: str


STOP = "stop"
LENGTH = "length"

_DEEPSEEK_THINK = (
    "<think>\nOkay, so the problem says Mia has 17 apples and gets 25 more. Let me add them: 17 + 25. 17 + 20 is 37,"
    " plus 5 is 42. Hmm, wait, let me double-check by adding the other way: 25 + 17 = 42. Yes.\n\nActually, could it"
    " be 41? No, 7 + 5 = 12, so the units digit is 2. Final answer: 42 would be right.\n</think>\n\n"
)

CORPUS: list[Reply] = [
    # --- OpenAI-style markdown -------------------------------------------------------------------------------
    Reply("**Step 1:** 17 + 25 = 42.\n\n**Final Answer:** 42", "number", STOP, "ok", "42", "42"),
    Reply("Let's compute.\n\n- Start: 12\n- Add 30: 42\n\n**Final answer: 42**", "number", STOP, "ok", "42", "42"),
    Reply("We have 3 boxes of 14 pens, so 3 \u00d7 14 = 42 pens.\n\n### Final answer\n42 pens", "number", STOP, "ok",
          "42 pens", "42"),
    Reply("Total cost: 3 tickets at $400 each = $1,200.\n\n**Final answer:** $1,200.", "number", STOP, "ok",
          "1,200", "1200"),
    Reply("Subtracting, 15 - 22 = -7.\n\nFinal answer: `-7`", "number", STOP, "ok", "-7", "-7"),
    Reply("The ratio simplifies as 6/8 = 3/4.\n\n**Final Answer**: $\\frac{3}{4}$", "number", STOP, "ok",
          "\\frac{3}{4}", "0.75"),
    Reply("1. Price after 20% off: 80\n2. Tax adds 5%: 84\n\n**Final answer:** 84", "number", STOP, "ok", "84", "84"),
    Reply("She scored 45 out of 60, i.e. 45/60 = 0.75.\n\nFinal answer: 75%", "number", STOP, "ok", "75%", "75"),
    Reply("The population grew from 1,000 to 1,234,567 over the decade.\n\n**Final answer:** 1,234,567", "number",
          STOP, "ok", "1,234,567", "1234567"),
    Reply("Final answer: 3.5", "number", STOP, "ok", "3.5", "7/2"),
    # --- Claude-style prose ----------------------------------------------------------------------------------
    Reply("To find the total, I'll add the two amounts: 17 + 25 = 42.\n\nThe final answer is 42.", "number", STOP,
          "ok", "42", "42"),
    Reply("Let me work through this carefully. The train covers 120 km in 2 hours, so its speed is 60 km/h.\n\n"
          "The final answer is $\\boxed{60}$.", "number", STOP, "ok", "60", "60"),
    Reply("Each of the 4 friends gets 18 / 4 = 4.5 cookies. The final answer is 4.5 cookies.", "number", STOP, "ok",
          "4.5 cookies", "4.5"),
    Reply("I need to find half of one. That is one divided by two, which is $\\frac{1}{2}$.\n\n"
          "The final answer is $\\frac{1}{2}$", "number", STOP, "ok", "\\frac{1}{2}", "0.5"),
    Reply("Working step by step: the temperature starts at 5 degrees and drops 12 degrees, reaching -7.\n\n"
          "My final answer is: -7 degrees", "number", STOP, "ok", "-7 degrees", "-7"),
    Reply("There are two numbers here, 12 and 30, and the question asks for their sum.\n\nThe answer is 42.",
          "number", STOP, "ok", "42", "42"),
    Reply("The capital of Australia is often mistaken for Sydney, but it is Canberra.\n\nThe final answer is Canberra.",
          "text", STOP, "ok", "Canberra", "Canberra"),
    Reply("Hamlet was written around 1600.\n\nThe final answer is William Shakespeare.", "text", STOP, "ok",
          "William Shakespeare", "William Shakespeare"),
    # --- Gemini-style headings -------------------------------------------------------------------------------
    Reply("## Understanding the problem\nWe need 6 times 7.\n\n## Calculation\n6 \u00d7 7 = 42\n\n## Final answer\n42",
          "number", STOP, "ok", "42", "42"),
    Reply("## Steps\n* 100 - 58 = 42\n\n## Final Answer\n\n**42**", "number", STOP, "ok", "42", "42"),
    Reply("### Analysis\nThe Eiffel Tower stands in Paris.\n\n### Final Answer\nThe Eiffel Tower", "text", STOP, "ok",
          "The Eiffel Tower", "Eiffel Tower"),
    Reply("## Solution\nThe fraction of the pizza eaten is 2/8 + 1/8 = 3/8.\n\n## Final answer\n$\\dfrac{3}{8}$",
          "number", STOP, "ok", "\\dfrac{3}{8}", "0.375"),
    Reply("**Final Answer**\n\nParis", "text", STOP, "ok", "Paris", "Paris"),
    # --- DeepSeek-style reasoning ----------------------------------------------------------------------------
    Reply(_DEEPSEEK_THINK + "Mia has 17 + 25 = 42 apples.\n\n**Final Answer**\n\\[\n\\boxed{42}\n\\]", "number", STOP,
          "ok", "42", "42"),
    Reply("<think>\nHmm, 3/4 of 12 is 9. But wait, the question asks for the remainder, 12 - 9 = 3. Final answer: 9?"
          " No, it's 3.\n</think>\n\nThe remainder is $\\boxed{3}$.", "number", STOP, "ok", "3", "3"),
    Reply("<think>\nThe sum 1/3 + 1/6 = 2/6 + 1/6 = 3/6 = 1/2.\n</think>\n\n$$\\boxed{\\frac{1}{2}}$$", "number",
          STOP, "ok", "\\frac{1}{2}", "1/2"),
    Reply("<think>\nLet me think about which option. Paris is the capital of France, so (C).\n</think>\n\n"
          "The answer is \\boxed{C}", "choice", STOP, "ok", "C", "C"),
    Reply("<think>\nThe student asked for 15% of 80. 0.15 * 80 = 12.\n</think>\n\nSo 15% of 80 is **12**.\n\n"
          "$\\boxed{12}$", "number", STOP, "ok", "12", "12"),
    Reply("<think>\nOkay, let me think. 17 + 25... 17 + 25 = 42. So the answer is 42. But let me verify once more by"
          " counting up from 25: 26, 27,", "number", LENGTH, "truncated", None, "42"),
    Reply("<think>\nThe box holds 6 rows of 7 eggs. So 6 * 7 = 42.\n</think>\n\n", "number", STOP, "unparsed", None,
          "42"),
    # --- Llama-style "Answer: X" -----------------------------------------------------------------------------
    Reply("17 + 25 = 42\nAnswer: 42", "number", STOP, "ok", "42", "42"),
    Reply("Question: How many legs do 3 spiders have?\nEach spider has 8 legs, and 3 * 8 = 24.\nAnswer: 24", "number",
          STOP, "ok", "24", "24"),
    Reply("**Answer:** Mount Everest", "text", STOP, "ok", "Mount Everest", "mount everest"),
    Reply("Answer: Jupiter.", "text", STOP, "ok", "Jupiter", "Jupiter"),
    Reply("Solution: 1000 - 766 = 234\n\nAnswer: 234 marbles", "number", STOP, "ok", "234 marbles", "234"),
    # --- JSON mode -------------------------------------------------------------------------------------------
    Reply('{"reasoning": "17 + 25 = 42", "answer": 42}', "number", STOP, "ok", "42", "42"),
    Reply('```json\n{\n  "reasoning": "Half of 9 is 4.5",\n  "answer": "4.5"\n}\n```', "number", STOP, "ok", "4.5",
          "9/2"),
    Reply('Here is my response:\n```json\n{"answer": "B", "confidence": 0.9}\n```', "choice", STOP, "ok", "B", "B"),
    Reply('{"reasoning": "At first I thought the final answer is 41, but 17 + 25 = 42.", "answer": 42}', "number",
          STOP, "ok", "42", "42"),
    Reply('{"answer": "Tokyo"}', "text", STOP, "ok", "Tokyo", "Tokyo"),
    Reply('{"final_answer": -12.5, "steps": ["-25 / 2 = -12.5"]}', "number", STOP, "ok", "-12.5", "-12.5"),
    Reply('{"reasoning": "The data do not say.", "answer": "insufficient information"}', "number", STOP, "abstained",
          None, "42"),
    # --- multiple choice -------------------------------------------------------------------------------------
    Reply("(C)", "choice", STOP, "ok", "C", "C"),
    Reply("C", "choice", STOP, "ok", "C", "(C)"),
    Reply("C) Paris", "choice", STOP, "ok", "C", "C"),
    Reply("Paris is the capital of France.\n\nOption C", "choice", STOP, "ok", "C", "C"),
    Reply("Mercury is closest to the Sun, so the answer is (B).", "choice", STOP, "ok", "B", "B"),
    Reply("The correct answer is **(D) 1945**.", "choice", STOP, "ok", "D", "D"),
    Reply("Looking at each option:\nA) too small\nB) too large\nC) just right\n\nFinal answer: C", "choice", STOP,
          "ok", "C", "C"),
    Reply("**Answer:** (A) Oxygen", "choice", STOP, "ok", "A", "A"),
    Reply("Options A and B contradict the passage.\n\nFinal Answer: **B**", "choice", STOP, "ok", "B", "C"),
    Reply("A) London\nB) Berlin\nC) Paris\nD) Rome", "choice", STOP, "unparsed", None, "C"),
    Reply("Final answer: Paris", "choice", STOP, "unparsed", None, "C"),
    Reply("I'd go with option D.", "choice", STOP, "ok", "D", "D"),
    # --- refusals and abstentions ----------------------------------------------------------------------------
    Reply("I'm sorry, but I can't help with that.", "text", STOP, "abstained", None, "Paris"),
    Reply("I\u2019m sorry, but I cannot assist with that request.", "number", STOP, "abstained", None, "42"),
    Reply("I can't help with that.", "choice", STOP, "abstained", None, "B"),
    Reply("The problem does not give the price of a pencil.\n\nFinal answer: cannot be determined", "number", STOP,
          "abstained", None, "42"),
    Reply("Final answer: I don't know.", "text", STOP, "abstained", None, "Paris"),
    Reply("**Final Answer:** Unknown", "text", STOP, "abstained", None, "Paris"),
    Reply("Final answer: N/A", "number", STOP, "abstained", None, "42"),
    Reply("Answer: abstain", "choice", STOP, "abstained", None, "A"),
    Reply("There is not enough information in the question.\n\nThe final answer is: insufficient information.",
          "number", STOP, "abstained", None, "42"),
    Reply("Final answer: I cannot answer this question.", "text", STOP, "abstained", None, "Paris"),
    Reply("I don't know.", "number", STOP, "abstained", None, "42"),
    # --- truncated -------------------------------------------------------------------------------------------
    Reply("Final answer: 42", "number", LENGTH, "truncated", None, "42"),
    Reply("Let's compute step by step. First, 17 + 25 = 42. Then we subtract", "number", LENGTH, "truncated", None,
          "30"),
    Reply("", "text", LENGTH, "truncated", None, "Paris"),
    # --- several numbers, only the marked one is the answer --------------------------------------------------
    Reply("Mia had 17 apples, bought 25 more, then gave 10 away and ate 3 of them.\n\nFinal answer: 29\n\n"
          "(17 + 25 - 10 - 3 = 29)", "number", STOP, "ok", "29", "29"),
    Reply("In 2023 there were 350 students; 120 left and 50 joined.\n\n**Final answer:** 280 students", "number", STOP,
          "ok", "280 students", "280"),
    Reply("The 3 trains leave at 9:00 and 10:30; the 12 km trip takes 15 minutes.\nAnswer: 15", "number", STOP, "ok",
          "15", "15"),
    Reply("It costs 3 dollars for 2 pens, so 10 pens cost 15 dollars.", "number", STOP, "unparsed", None, "15"),
    Reply("Hmm, maybe 12, or perhaps 14.", "number", STOP, "unparsed", None, "14"),
    # --- replies that change their mind ----------------------------------------------------------------------
    Reply("Final answer: 41\n\nWait, I dropped a carry. 17 + 25 is 42.\n\nFinal answer: 42", "number", STOP, "ok",
          "42", "42"),
    Reply("Final answer: 41 ... wait ... Final answer: 42", "number", STOP, "ok", "42", "42"),
    Reply("So $\\boxed{40}$. Hmm, re-reading the question, we need to add the 2 extra, giving $\\boxed{42}$.",
          "number", STOP, "ok", "42", "42"),
    Reply("Answer: B\n\nOn reflection, B ignores the second clause.\n\nFinal answer: D", "choice", STOP, "ok", "D",
          "D"),
    Reply("Final answer: Lyon\n\nActually no, the capital is not Lyon.\n\nFinal answer: Paris", "text", STOP, "ok",
          "Paris", "Paris"),
    # --- LaTeX, units, currency, separators, negatives, percentages ------------------------------------------
    Reply("Final answer: $\\frac{7}{2}$", "number", STOP, "ok", "\\frac{7}{2}", "3.5"),
    Reply("Final answer: \\(\\frac{-5}{4}\\)", "number", STOP, "ok", "\\frac{-5}{4}", "-1.25"),
    Reply("The final answer is 12 \\text{ cm}.", "number", STOP, "ok", "12 cm", "12"),
    Reply("Final answer: 42 apples.", "number", STOP, "ok", "42 apples", "42"),
    Reply("Final answer: \\$18.50", "number", STOP, "ok", "18.50", "18.5"),
    Reply("The total is \u20ac20.\n\nAnswer: \u20ac20", "number", STOP, "ok", "\u20ac20", "20"),
    Reply("Final answer: 12,000", "number", STOP, "ok", "12,000", "12000"),
    Reply("Final answer: -3.5", "number", STOP, "ok", "-3.5", "-3.5"),
    Reply("The final answer is \u22128.", "number", STOP, "ok", "\u22128", "-8"),
    Reply("The discount is 25%.\n\nFinal answer: 25%", "number", STOP, "ok", "25%", "25"),
    Reply("Final answer: 0.25", "number", STOP, "ok", "0.25", "1/4"),
    Reply("$\\boxed{2^{10}}$", "number", STOP, "ok", "2^{10}", "1024"),
    Reply("Final answer: $\\sqrt{16}$", "number", STOP, "ok", "\\sqrt{16}", "4"),
    Reply("Final answer: 4.00", "number", STOP, "ok", "4.00", "4"),
    # --- a bare number ---------------------------------------------------------------------------------------
    Reply("42", "number", STOP, "ok", "42", "42"),
    Reply("42.", "number", STOP, "ok", "42", "42"),
    Reply("**-15**", "number", STOP, "ok", "-15", "-15"),
    Reply("It is 42.", "number", STOP, "unparsed", None, "42"),
    Reply("Paris", "text", STOP, "unparsed", None, "Paris"),
    Reply("", "number", STOP, "unparsed", None, "42"),
    # --- wrong answers, read as written ----------------------------------------------------------------------
    Reply("17 + 25 = 41.\n\nFinal answer: 41", "number", STOP, "ok", "41", "42"),
    Reply("The final answer is $\\frac{1}{3}$.", "number", STOP, "ok", "\\frac{1}{3}", "0.5"),
    Reply("**Final answer:** 1,243", "number", STOP, "ok", "1,243", "1234"),
    Reply("Final answer: Rome", "text", STOP, "ok", "Rome", "Paris"),
    Reply("The answer is (A).", "choice", STOP, "ok", "A", "C"),
    Reply("Final answer: 8", "number", STOP, "ok", "8", "-8"),
]

WRONG: frozenset[str] = frozenset({
    "Options A and B contradict the passage.\n\nFinal Answer: **B**",
    "17 + 25 = 41.\n\nFinal answer: 41",
    "The final answer is $\\frac{1}{3}$.",
    "**Final answer:** 1,243",
    "Final answer: Rome",
    "The answer is (A).",
    "Final answer: 8",
})


# --- label and json replies -----------------------------------------------------------------------------------------
# Read with `AnswerSpec("label", INTENTS)` and `AnswerSpec("json", schema=RECORD_SCHEMA)`; `WRONG_TYPED` lists the
# `ok` replies that answer wrongly on purpose.

INTENTS = ("card_arrival", "card_linking", "lost_or_stolen_card", "exchange_rate", "Refund_not_showing_up", "unknown")

LABEL_CORPUS: list[Reply] = [
    Reply("The customer ordered a card last week and it has not come yet.\n\n**Final answer:** card_arrival",
          "label", STOP, "ok", "card_arrival", "card_arrival"),
    Reply("They are waiting for a card in the post. The final answer is Card Arrival.", "label", STOP, "ok",
          "card_arrival", "card_arrival"),
    Reply("## Analysis\nThey want to see their new card in the app.\n\n## Final Answer\n`card-linking`", "label",
          STOP, "ok", "card_linking", "card_linking"),
    Reply("<think>\nLost? Stolen? Final answer: card_arrival? No: it was taken from their bag.\n</think>\n\n"
          "Final answer: Lost or stolen card", "label", STOP, "ok", "lost_or_stolen_card", "lost_or_stolen_card"),
    Reply('{"reasoning": "They ask which rate applies to euros.", "answer": "exchange_rate"}', "label", STOP, "ok",
          "exchange_rate", "exchange_rate"),
    Reply("Answer: refund not showing up", "label", STOP, "ok", "Refund_not_showing_up", "Refund_not_showing_up"),
    Reply("card_arrival", "label", STOP, "ok", "card_arrival", "card_arrival"),
    Reply("**exchange_rate**", "label", STOP, "ok", "exchange_rate", "exchange_rate"),
    Reply("None of the intents fits this message.\n\nFinal answer: unknown", "label", STOP, "ok", "unknown",
          "unknown"),
    Reply("Final answer: card_arrival (the card has not arrived yet)", "label", STOP, "ok", "card_arrival",
          "card_arrival"),
    Reply("Final answer: card_linking\n\nWait, they do not have the card yet.\n\nFinal answer: card_arrival", "label",
          STOP, "ok", "card_arrival", "card_arrival"),
    Reply("The card has not come.\n\nFinal answer: card_delivery_estimate", "label", STOP, "ok",
          "card_delivery_estimate", "card_arrival"),
    Reply("Final answer: card_linking", "label", STOP, "ok", "card_linking", "card_arrival"),
    Reply("I think this is about the card arriving late.", "label", STOP, "unparsed", None, "card_arrival"),
    Reply("The candidates are:\ncard_arrival\ncard_linking", "label", STOP, "unparsed", None, "card_arrival"),
    Reply("Final answer: I don't know.", "label", STOP, "abstained", None, "card_arrival"),
    Reply("I'm sorry, but I can't help with that.", "label", STOP, "abstained", None, "card_arrival"),
    Reply("Final answer: card_arrival", "label", LENGTH, "truncated", None, "card_arrival"),
]

RECORD_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
    "required": ["name", "born"],
}
_ADA = '{"born":1815,"name":"Ada Lovelace"}'

JSON_CORPUS: list[Reply] = [
    Reply('{"name": "Ada Lovelace", "born": 1815}', "json", STOP, "ok", _ADA, _ADA),
    Reply('Here is the extracted record:\n```json\n{\n  "name": "Ada Lovelace",\n  "born": 1815\n}\n```', "json",
          STOP, "ok", _ADA, _ADA),
    Reply('<think>\nA first draft: {"name": "Ada", "born": 1800}\n</think>\n\n{"born": 1815, "name": "Ada Lovelace"}',
          "json", STOP, "ok", _ADA, _ADA),
    Reply('I extracted the fields. Result: {"name": "ada lovelace", "born": 1815.0}', "json", STOP, "ok",
          '{"born":1815.0,"name":"ada lovelace"}', _ADA),
    Reply('First draft {"name": "Ada", "born": 1800}, corrected: {"name": "Ada Lovelace", "born": 1815}.', "json",
          STOP, "ok", _ADA, _ADA),
    Reply('```\n{"name": "Ada  Lovelace.", "born": 1815}\n```', "json", STOP, "ok",
          '{"born":1815,"name":"Ada  Lovelace."}', _ADA),
    Reply('{"name": "Ada Lovelace", "born": 1816}', "json", STOP, "ok", '{"born":1816,"name":"Ada Lovelace"}', _ADA),
    Reply('{"name": "Ada Lovelace"}', "json", STOP, "ok", '{"name":"Ada Lovelace"}', _ADA),
    Reply('{"name": "Ada Lovelace", "born": "1815"}', "json", STOP, "ok", '{"born":"1815","name":"Ada Lovelace"}',
          _ADA),
    Reply("The record is: name Ada Lovelace, born 1815.", "json", STOP, "unparsed", None, _ADA),
    Reply('```json\n{"name": "Ada Lovelace", "born": 1815,}\n```', "json", STOP, "unparsed", None, _ADA),
    Reply("I'm sorry, but I can't help with that.", "json", STOP, "abstained", None, _ADA),
    Reply('{"name": "Ada Lovelace", "bo', "json", LENGTH, "truncated", None, _ADA),
]

WRONG_TYPED: frozenset[str] = frozenset({
    "The card has not come.\n\nFinal answer: card_delivery_estimate",
    "Final answer: card_linking",
    '{"name": "Ada Lovelace", "born": 1816}',
    '{"name": "Ada Lovelace"}',
    '{"name": "Ada Lovelace", "born": "1815"}',
})
