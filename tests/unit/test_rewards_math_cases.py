"""The math verifier's case table (docs/rewards.md, math): each case is a completion, a gold
answer, the verdict and why. The kinds follow the holes that were found in the verifier
(equations with left-hand sides, `=` in subscripts, several assignments, multi-part golds, text
answers compared as letter products, superscripts read as digits, "Final Answer: The final
answer is ...") and the shapes real model outputs take (sets, intervals, tuples, units,
percentages, LaTeX spellings, decimals and fractions, hedges)."""

from __future__ import annotations

import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.math import MathReward

R, W, N = 1.0, 0.0, None  # right, wrong, not scored

CASES = {
    "lhs": [
        (r"\boxed{3x+2y=6}", "3x+2y=6", R, "the identical equation"),
        (r"\boxed{x^2+y^2=1}", "x^2+y^2=1", R, "left-hand side with digits is kept"),
        (r"\boxed{y^2+x^2=1}", "x^2+y^2=1", R, "terms reordered"),
        (r"\boxed{6=3x+2y}", "3x+2y=6", R, "sides swapped"),
        (r"\boxed{x^2+y^2=2}", "x^2+y^2=1", W, "another constant"),
        (r"\boxed{1}", "x^2+y^2=1", W, "the right-hand side alone is not the equation"),
        (r"\boxed{x^2+y^2}", "x^2+y^2=1", W, "the left-hand side alone is not the equation"),
        (r"\boxed{3x+2y=6}", "6", W, "an equation is not the value 6"),
        (r"\boxed{x=5}", "5", R, "a binding: the value counts"),
        (r"\boxed{5}", "x=5", R, "the gold's name may be left out"),
        (r"\boxed{x = 5}", "x = 5", R, "the same binding"),
        (r"\boxed{y=5}", "x=5", W, "the value bound to another name"),
        (r"\boxed{f(x)=x+1}", "x+1", R, "a function name is a name"),
        (r"\boxed{y = 3+2x}", "y=2x+3", R, "a line, terms reordered"),
        (r"\boxed{2x+3}", "y=2x+3", R, "a line given by its right-hand side"),
        (r"\boxed{y=2x+4}", "y=2x+3", W, "another line"),
        (r"\boxed{x = 7 = 8 = 42}", "42", W, "a chain with several values"),
        (r"\boxed{x = 2+3 = 5}", "5", R, "a derivation chain whose values all agree"),
        (r"\boxed{7 = 8}", "8", W, "a false equation, not the value 8"),
        (r"\boxed{2 + 3 = 5}", "5", R, "both sides equal the gold"),
        (r"\boxed{AB = 5}", "5", R, "a segment name is a name"),
        (r"\boxed{x \le 3}", r"x \leq 3", R, "the same inequality in another spelling"),
        (r"\boxed{x < 3}", r"x \leq 3", W, "strict instead of non-strict"),
        (r"\boxed{x > 2}", "x>2", R, "the same inequality"),
        (r"\boxed{x \geq 2}", "x>2", W, "non-strict instead of strict"),
        (r"\boxed{3 > x}", "x<3", R, "an inequality written the other way round"),
        (r"\boxed{k = 5}", "k=5", R, "binding with the same name"),
        (r"\boxed{x_1 = 4}", "4", R, "a subscripted name"),
    ],
    "subscript": [
        (r"\boxed{\sum_{k=1}^{10} k}", r"\sum_{k=1}^{10} k", R, "= inside a subscript is not split"),
        (r"\boxed{55}", r"\sum_{k=1}^{10} k", R, "the sum's value"),
        (r"\boxed{1}", r"\sum_{k=1}^{10} k", W, "the subscript's 1 is not the answer"),
        (r"\boxed{10}", r"\sum_{k=1}^{10} k", W, "the upper limit is not the answer"),
        (r"\boxed{\sum_{k=1}^{10} k = 55}", "55", R, "a sum and its value"),
        (r"\boxed{\sum_{k=1}^{10} k = 56}", "55", W, "a sum with a wrong value"),
        (r"\boxed{\prod_{i=1}^{4} i}", "24", R, "a product with = in its subscript"),
        (r"\boxed{a_{n=2}}", "5", W, "a symbol, not a value"),
        (r"\boxed{2^{10}}", "1024", R, "an exponent in braces"),
        (r"\boxed{1024}", "2^{10}", R, "the power's value"),
        (r"\boxed{2^{11}}", "1024", W, "another power"),
    ],
    "assignments": [
        (r"\boxed{p=-1, p=15/8}", "p=-1, p=15/8", R, "the same solution set"),
        (r"\boxed{p = \frac{15}{8}, p = -1}", "p=-1, p=15/8", R, "solutions in another order"),
        (r"\boxed{-1, \frac{15}{8}}", "p=-1, p=15/8", R, "the values without names"),
        (r"\boxed{p=-1 \text{ or } p=\frac{15}{8}}", "p=-1, p=15/8", R, "solutions joined by or"),
        (r"\boxed{-1} and \boxed{\frac{15}{8}}", "p=-1, p=15/8", R, "one box per solution"),
        (r"\boxed{p=-1}", "p=-1, p=15/8", W, "one of two solutions"),
        (r"\boxed{p=-1, p=2}", "p=-1, p=15/8", W, "a wrong second solution"),
        (r"\boxed{p=-1, p=15/8, p=3}", "p=-1, p=15/8", W, "an extra solution"),
        (r"\boxed{q=-1, q=15/8}", "p=-1, p=15/8", W, "the values bound to another name"),
        (r"\boxed{x=1, y=2}", "x=1, y=2", R, "the same system solution"),
        (r"\boxed{y=2, x=1}", "x=1, y=2", R, "the same bindings in another order"),
        (r"\boxed{x=2, y=1}", "x=1, y=2", W, "the values swapped between names"),
        (r"\boxed{2, 1}", "x=1, y=2", W, "values without names cannot be matched to x and y"),
        (r"\boxed{x=1}", "x=1, y=2", W, "one of two unknowns"),
        (r"\boxed{x = 3 \text{ or } x = 4}", "3, 4", R, "both roots"),
        (r"\boxed{x = 3 \text{ or } x = 4}", "3", W, "a hedge between two roots"),
        (r"\boxed{3, 4}", "4, 3", R, "a list of roots in another order"),
        (r"\boxed{3, 5}", "4, 3", W, "a wrong root"),
    ],
    "multibox": [
        (r"(a) \boxed{3} (b) \boxed{5}", r"\boxed{3} and \boxed{5}", R, "both parts, in order"),
        (r"\boxed{3, 5}", r"\boxed{3}, \boxed{5}", R, "both parts in one box"),
        (r"\boxed{5}", r"\boxed{3}, \boxed{5}", W, "only the last part"),
        (r"\boxed{3}", r"\boxed{3}, \boxed{5}", W, "only the first part"),
        (r"\boxed{5} \boxed{3}", r"\boxed{3}, \boxed{5}", W, "the parts swapped"),
        (r"\boxed{3} \boxed{5} \boxed{7}", r"\boxed{3}, \boxed{5}", W, "an extra part"),
        (r"\boxed{\frac{1}{2}} \boxed{0.25}", r"\boxed{0.5}, \boxed{\frac14}", R, "each part equivalent"),
        (r"\boxed{3} \boxed{3}", r"\boxed{3}, \boxed{3}", R, "a repeated part"),
        (r"\boxed{Yes} \boxed{4}", r"\boxed{\text{yes}} \boxed{4}", R, "a text part and a number"),
        (r"\boxed{No} \boxed{4}", r"\boxed{\text{yes}} \boxed{4}", W, "the text part wrong"),
    ],
    "text": [
        (r"\boxed{no}", "on", W, "an anagram is another word"),
        (r"\boxed{on}", "on", R, "the same word"),
        (r"\boxed{ACB}", "ABC", W, "letters reordered"),
        (r"\boxed{ABC}", "ABC", R, "the same letters"),
        (r"\boxed{abc}", "ABC", R, "case-insensitive"),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", R, "a name in text"),
        (r"\boxed{Evelyn}", r"\text{Evelyn}", R, "a name without the text wrapper"),
        (r"\boxed{Evlyne}", r"\text{Evelyn}", W, "the same letters, another name"),
        ("Answer: yes", "Yes", R, "yes, case-insensitive"),
        ("Answer: no", "Yes", W, "no is not yes"),
        (r"\boxed{\text{(C)}}", "C", R, "a choice letter in parentheses"),
        (r"\boxed{B}", "C", W, "another choice"),
        (r"\boxed{(C)}", r"\text{(C)}", R, "both as parenthesised choices"),
        ("The answer is Tuesday.", "Tuesday", R, "a day, full stop dropped"),
        ("The answer is Thursday.", "Tuesday", W, "another day"),
        (r"\boxed{north east}", "northeast", R, "space-insensitive"),
        (r"\boxed{east north}", "northeast", W, "words reordered"),
        (r"\boxed{even}", r"\text{even}", R, "parity word"),
        (r"\boxed{neve}", r"\text{even}", W, "an anagram of even"),
        (r"\boxed{yes or no}", "yes", W, "a hedge between two words"),
        (r"\boxed{\textbf{Devon}}", "Devon", R, "bold text wrapper"),
    ],
    "unicode": [
        ("The answer is 3²", "9", R, "a superscript is an exponent"),
        ("The answer is 3²", "32", W, "3² is not thirty-two"),
        (r"\boxed{x²+1}", "x^2+1", R, "a superscript on a variable"),
        (r"\boxed{x²+1}", "x2+1", W, "the superscript is not a coefficient"),
        ("The answer is 2¹⁰", "1024", R, "a run of superscript digits"),
        ("The area is \\boxed{25 m²}", "25", R, "a squared unit after the number"),
        ("The area is \\boxed{25 cm²}", "25", R, "another squared unit"),
        ("The area is \\boxed{26 m²}", "25", W, "a wrong area with a unit"),
        ("\\boxed{４２}", "42", R, "full-width digits"),
        ("\\boxed{−5}", "-5", R, "the Unicode minus sign"),
        ("\\boxed{½}", "0.5", R, "a vulgar fraction"),
        ("\\boxed{√2}", r"\sqrt{2}", R, "the root sign"),
        ("\\boxed{2π}", r"2\pi", R, "the Greek letter pi"),
        ("\\boxed{x ≤ 3}", r"x \le 3", R, "the less-or-equal sign"),
        ("\\boxed{x₁}", "x_1", R, "a subscript is an index"),
        ("\\boxed{3×4}", "12", R, "the times sign"),
        ("\\boxed{10°}", "10", R, "degrees"),
    ],
    "final_answer": [
        ("Final Answer: The final answer is 7.78", "7.78", R, "the sentence inside the answer line"),
        ("Final Answer: The final answer is $7.78$. I hope it is correct.", "7.78", R,
         "the closing sentence is dropped"),
        ("Final Answer: The final answer is 7.79", "7.78", W, "a wrong value in the same sentence"),
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", R,
         "a fraction in the sentence"),
        ("**Final Answer:** $12$.", "12", R, "markdown emphasis"),
        ("**Answer**: 12", "12", R, "emphasis before the colon"),
        ("The answer is: 12", "12", R, "the answer is, with a colon"),
        ("Answer:\n12", "12", R, "the value on the next line"),
        ("First answer: 2\nFinal Answer: 2", "2", R, "two lines, the same answer"),
        ("First answer: 2\nFinal Answer: 3", "3", W, "two lines, different answers"),
        ("So the answer is 3 or 4.", "4", W, "a hedge in the answer line"),
        ("Therefore, the final answer is $\\boxed{7.78}$.", "7.78", R, "a box in the sentence"),
    ],
    "structures": [
        (r"\boxed{\{1, 2\}}", r"\{2, 1\}", R, "a set in another order"),
        (r"\boxed{\{1, 3\}}", r"\{2, 1\}", W, "another set"),
        (r"\boxed{[1, 2)}", "[1,2)", R, "the same half-open interval"),
        (r"\boxed{[1, 2]}", "[1,2)", W, "a closed instead of a half-open interval"),
        (r"\boxed{(2, \infty)}", r"(2,\infty)", R, "an unbounded interval"),
        (r"\boxed{(3, \infty)}", r"(2,\infty)", W, "another bound"),
        (r"\boxed{(-\infty, 2] \cup [3, \infty)}", r"(-\infty,2]\cup[3,\infty)", R, "a union"),
        (r"\boxed{(1, 2)}", "(1,2)", R, "the same pair"),
        (r"\boxed{(2, 1)}", "(1,2)", W, "a pair reversed"),
        (r"\boxed{(1, 2, 3)}", "(1,2,3)", R, "a triple"),
        (r"\boxed{(1, 3, 2)}", "(1,2,3)", W, "a triple reordered"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", R, "a vector"),
        (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", W, "a vector reversed"),
        (r"\boxed{x \in [2, 5]}", "[2,5]", R, "membership in the interval"),
    ],
    "units": [
        (r"\boxed{5 \text{ cm}}", "5", R, "a unit in text"),
        (r"\boxed{5}", r"5\text{ cm}", R, "the gold's unit"),
        (r"\boxed{6 \text{ cm}}", "5", W, "a wrong length"),
        (r"\boxed{\$18.90}", "18.90", R, "a dollar sign"),
        (r"\boxed{\$19}", "18.90", W, "a rounded amount"),
        (r"\boxed{30^\circ}", "30", R, "degrees in LaTeX"),
        (r"\boxed{31^{\circ}}", "30", W, "a wrong angle"),
        (r"\boxed{50\%}", "50", R, "a percentage against its number"),
        (r"\boxed{50}", r"50\%", R, "a number against a percentage"),
        (r"\boxed{0.5}", r"50\%", R, "a percentage as a fraction of one"),
        (r"\boxed{25\%}", r"50\%", W, "another percentage"),
        (r"\boxed{12}", r"12\%", R, "a percentage without its sign"),
        (r"\boxed{0.12}", "12", W, "a number is not its hundredth"),
        ("The answer is 5 apples.", "5", R, "a count with its noun"),
        ("The answer is 6 apples.", "5", W, "a wrong count with its noun"),
    ],
    "latex": [
        (r"\boxed{\dfrac{1}{2}}", "0.5", R, "dfrac"),
        (r"\boxed{\tfrac12}", r"\frac{1}{2}", R, "tfrac without braces"),
        (r"\boxed{\frac{-1}{2}}", r"-\frac{1}{2}", R, "the sign inside the fraction"),
        (r"\boxed{\frac{1}{-2}}", r"\frac{1}{2}", W, "the sign of the value"),
        (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", R, "a root simplified"),
        (r"\boxed{\sqrt{3}/2}", r"\frac{\sqrt{3}}{2}", R, "a slash fraction"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{3}}{2}", W, "another root"),
        (r"\boxed{\left( x+1 \right)^2}", "x^2+2x+1", R, "left and right delimiters, expanded"),
        (r"\boxed{(x-1)(x+1)}", "x^2-1", R, "a factored form"),
        (r"\boxed{(x-1)^2}", "x^2-1", W, "another polynomial"),
        (r"$\boxed{\pi}$", r"\pi", R, "a box inside math mode"),
        (r"\boxed{3.14}", r"\pi", W, "pi rounded is not pi"),
        (r"\(\boxed{7}\)", "7", R, "inline math delimiters"),
        (r"\fbox{7}", "7", R, "fbox"),
        (r"\boxed {7}", "7", R, "a space before the brace"),
        (r"\boxed{\frac{x+1}{2}}", r"\frac{1+x}{2}", R, "terms reordered in a fraction"),
        (r"\boxed{e}", "2.718", W, "e is not its rounding"),
        (r"\boxed{\infty}", r"\infty", R, "infinity"),
        (r"\boxed{-\infty}", r"\infty", W, "minus infinity"),
    ],
    "numbers": [
        (r"\boxed{0.5}", r"\frac{1}{2}", R, "a decimal and a fraction"),
        (r"\boxed{\frac{1}{2}}", "0.5", R, "a fraction and a decimal"),
        ("The answer is 1/2", "0.5", R, "a slash fraction in the answer line"),
        (r"\boxed{1.5}", r"\frac{3}{2}", R, "an improper fraction"),
        (r"\boxed{0.75}", r"\frac{3}{4}", R, "three quarters"),
        (r"\boxed{0.74}", r"\frac{3}{4}", W, "close is not equal"),
        (r"\boxed{42.0}", "42", R, "a trailing zero"),
        (r"\boxed{42.01}", "42", W, "a wrong decimal"),
        (r"\boxed{1,000}", "1000", R, "a thousands separator"),
        ("I computed 3, then 1,000", "1000", R, "the last number with a separator"),
        (r"\boxed{1000}", "1,000", R, "the gold's separator"),
        (r"\boxed{1,001}", "1000", W, "another thousand"),
        (r"\boxed{-7}", "-7", R, "a negative number"),
        (r"\boxed{7}", "-7", W, "the sign dropped"),
        (r"\boxed{+7}", "7", R, "an explicit plus sign"),
        (r"\boxed{.5}", "0.5", R, "no leading zero"),
        (r"\boxed{0.333}", r"\frac{1}{3}", W, "a third rounded to three places"),
        ("#### 72", "72", R, "the GSM8K marker in the completion"),
        ("so 12 apples", "#### 12", R, "the GSM8K marker in the gold"),
        ("<answer>12</answer>", 12, R, "an integer gold"),
        ("<answer>13</answer>", 12, W, "a wrong tagged answer"),
    ],
    "extraction": [
        (r"\boxed{3} \boxed{4}", "3", W, "two different boxed answers"),
        (r"\boxed{3} \boxed{3}", "3", R, "the same answer boxed twice"),
        ("the answer is 3 or 4", "3", W, "a hedge"),
        (r"\boxed{\frac{1}{2} \text{ or } \frac{1}{3}}", r"\frac{1}{2}", W, "a hedge in a box"),
        (r"\boxed{" + "1" * 600 + "}", "1", W, "an answer over the length cap"),
        ("", "3", W, "an empty completion"),
        ("   \n ", "3", W, "whitespace only"),
        (r"truncated \boxed{\frac{1}{", "0.5", W, "a box cut off by the length limit"),
        ("no number at all", "3", W, "nothing to extract"),
        (r"\boxed{}", "3", W, "an empty box"),
        (r"<answer>5</answer> \boxed{6}", "6", R, "boxed is tried first"),
        ("<answer>  </answer>", "3", W, "an empty answer tag"),
        ("we get 3, then 17 apples", "17", R, "the last number"),
        ("we get 17, then 3 apples", "17", W, "an earlier number is not the answer"),
    ],
    "number_tokens": [
        ("AZYUK2A", "2", W, "a digit inside a word is not a number"),
        ("so we get x2", "2", W, "a digit glued to a letter is an index"),
        ("so we get 2x", "2", W, "a coefficient is not a number on its own"),
        ("so we get 2.5x", "2.5", W, "nor is a decimal coefficient, nor a part of it"),
        ("we get 12 in the 3rd step", "12", R, "an ordinal is not the last number"),
        ("we find x=2", "2", R, "a number after an equals sign"),
        ("so we get 2.", "2", R, "a number before a full stop"),
        ("so we get $2$", "2", R, "a number in math delimiters"),
        ("so we get -3", "-3", R, "a negative number"),
        ("so we get -3", "3", W, "the sign belongs to the number"),
        ("the ratio is 3/4", "0.75", R, "a slash fraction"),
        ("so the sum is (7)", "7", R, "a number in parentheses"),
        ("we get 12, then answer:2", "2", R, "a number after a colon"),
    ],
    "answer_sentence": [
        ("Final Answer: The largest $n$ is 34.", "34", R, "the number ending an answer sentence"),
        ("Final Answer: The volume of $ABCDEFGH$ is 120.", "120", R, "a point name in the sentence"),
        ("Final Answer: The largest $n$ is 35.", "34", W, "a wrong number ending the sentence"),
        ("Final Answer: The volume of $ABCDEFGH$ is 12.", "120", W, "a wrong volume"),
        ("Final Answer: There are 12 ways.", "12", R, "words after the number"),
        ("Final Answer: The sum of 3 and 4 is 7.", "7", R, "the final number, not an earlier one"),
        ("Final Answer: The sum of 3 and 4 is 7.", "4", W, "an earlier number is not the answer"),
        ("Final Answer: The probability is $\\frac{3}{4}$.", "0.75", R, "math ending the sentence"),
        ("Final Answer: The function is $f(x) = 2x+3$.", "2x+3", R, "a binding ending the sentence"),
        ("Final Answer: It is either 3 or 4.", "4", W, "a hedge in a sentence"),
        ("Final Answer: The largest $n$ is 33, not 34.", "34", W, "a negated number"),
        ("Final Answer: The roots are 3 and 4.", "4", W, "a list ending a sentence"),
        ("Final Answer: The polynomial is x^2 + 1.", "1", W, "a constant ending an expression"),
        ("Final Answer: $x^2+1$", "x^2+1", R, "math, not a sentence"),
        ("Final Answer: 2x+3", "2x+3", R, "an expression, not a sentence"),
        ("Final Answer: 2x+3", "3", W, "its constant term is not its value"),
        ("Final Answer: x = 5", "5", R, "an equation, not a sentence"),
        ("Final Answer: 3x+2y=6", "3x+2y=6", R, "an equation kept whole"),
        ("Final Answer: 3x+2y=6", "6", W, "an equation is not its right-hand side"),
        ("Final Answer: 5 apples", "5", R, "a number with its noun"),
    ],
    "no_score": [
        (r"\boxed{5}", None, N, "no gold answer in the row"),
        (r"\boxed{5}", "", N, "an empty gold answer"),
        (r"\boxed{5}", "}{", N, "a gold that is not mathematics"),
        (r"\boxed{5}", r"\boxed{}", N, "an empty gold box"),
        (r"\boxed{9^{9^{9^{9^{9}}}}}", "5", N, "an answer too large to verify in time"),
    ],
}


def _flat():
    for kind, cases in CASES.items():
        for completion, gold, verdict, reason in cases:
            yield pytest.param(completion, gold, verdict, id=f"{kind}: {reason}")


@pytest.fixture(scope="module")
def math_reward():
    return MathReward(timeout=3.0)


def test_the_table_covers_every_kind_with_at_least_150_cases():
    assert sum(len(cases) for cases in CASES.values()) >= 150
    for kind, cases in CASES.items():
        verdicts = {verdict for _, _, verdict, _ in cases}
        assert kind == "no_score" or verdicts == {R, W}, f"{kind} needs right and wrong cases"
        assert all(reason for *_, reason in cases)


@pytest.mark.parametrize("completion, gold, verdict", list(_flat()))
def test_case(math_reward, completion, gold, verdict):
    row = {} if gold is None else {"answer": gold}
    assert math_reward([Sample(completion, row)]) == [verdict]


def test_the_whole_table_as_one_batch_gives_the_same_verdicts(math_reward):
    cases = [c for cases in CASES.values() for c in cases if "9^{9" not in c[0]]
    samples = [Sample(c, {} if g is None else {"answer": g}) for c, g, _, _ in cases]
    assert math_reward(samples) == [v for _, _, v, _ in cases]
