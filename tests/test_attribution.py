"""Tests for moa.attribution: segmentation, attribution, shares, agreement, the JSON contract."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from moa.attribution import DEFAULT_THRESHOLD, Attribution, attribute, split_segments

CASES_PATH = Path(__file__).parent / "data" / "attribution_cases.json"
CASES = json.loads(CASES_PATH.read_text(encoding="utf-8"))["cases"]

MARKDOWN = """# Pasta night

Boil 4 L of water, e.g. in a large pot. Add 2.5 tbsp of salt... then wait!
Dr. Smith says v1.2.3 is out; see https://example.com/docs/v1.2. It works.

- First item. It has two sentences.
  And a continuation line.
* Second item
  1. Nested numbered item
2) Another numbered item

```python
x = 1.  # a period inside code. Not a sentence end
print(x)
```

~~~
tilde fence
~~~

| Name | Value |
|------|-------|
| pi   | 3.14  |

---

Setext heading
==============

Last sentence without a full stop"""


def texts(text: str) -> list[str]:
    return [s.text for s in split_segments(text)]


# --- Segmentation --------------------------------------------------------------------------


def test_offsets_map_back_into_the_original_text():
    sources = [MARKDOWN] + [c["final"] for c in CASES] + [x for c in CASES for x in c["candidates"]]
    for text in sources:
        previous_end = 0
        for seg in split_segments(text):
            assert text[seg.start : seg.end] == seg.text
            assert seg.text == seg.text.strip() and seg.text
            assert seg.start >= previous_end  # in order, never overlapping
            previous_end = seg.end


def test_markdown_blocks_become_the_expected_units():
    segs = split_segments(MARKDOWN)
    assert [(s.kind, s.text) for s in segs] == [
        ("heading", "# Pasta night"),
        ("sentence", "Boil 4 L of water, e.g. in a large pot."),
        ("sentence", "Add 2.5 tbsp of salt... then wait!"),
        ("sentence", "Dr. Smith says v1.2.3 is out; see https://example.com/docs/v1.2."),
        ("sentence", "It works."),
        ("list_item", "- First item. It has two sentences.\n  And a continuation line."),
        ("list_item", "* Second item"),
        ("list_item", "1. Nested numbered item"),
        ("list_item", "2) Another numbered item"),
        ("code", "```python\nx = 1.  # a period inside code. Not a sentence end\nprint(x)\n```"),
        ("code", "~~~\ntilde fence\n~~~"),
        ("table", "| Name | Value |"),
        ("table", "| pi   | 3.14  |"),
        ("heading", "Setext heading"),
        ("sentence", "Last sentence without a full stop"),
    ]


def test_unclosed_code_fence_runs_to_the_end():
    text = "Intro.\n\n```js\nlet a = 1;\n\nlet b = 2. Still code."
    assert texts(text) == ["Intro.", "```js\nlet a = 1;\n\nlet b = 2. Still code."]


@pytest.mark.parametrize(
    "sentence",
    [
        "Use a mild oil, e.g. sunflower or canola.",
        "Pick one, i.e. the one you already know.",
        "Dr. Jones and Mr. Lee met Prof. Chen at 10 a.m. on Monday.",
        "Pi is about 3.14159 and e is about 2.718.",
        "Upgrade to version 2.10.1 of the library.",
        "Read https://docs.python.org/3.12/library/re.html for details.",
        "Wait... And then nothing happened.",
        "He wrote it with J. R. R. Tolkien in mind.",
        "Cats vs. dogs is an old debate.",
        "Call `obj.method. Then` only in tests.",
    ],
)
def test_abbreviations_decimals_urls_and_ellipses_do_not_split(sentence):
    assert texts(sentence) == [sentence]


def test_sentences_split_on_terminal_punctuation():
    text = 'It rained. Did it stop? Yes! "Finally," she said. mRNA vaccines came later.'
    assert texts(text) == [
        "It rained.",
        "Did it stop?",
        "Yes!",
        '"Finally," she said.',
        "mRNA vaccines came later.",
    ]


def test_emphasis_closing_a_sentence_stays_with_it():
    assert texts("**Boil the water.** Then add salt.") == ["**Boil the water.**", "Then add salt."]


def test_a_line_ending_in_a_colon_ends_a_unit():
    assert texts("Steps:\nMix the flour.") == ["Steps:", "Mix the flour."]


# --- Attribution ---------------------------------------------------------------------------

CANDIDATES = [
    "Preheat the oven to 200 °C. Grease a 20 cm tin with butter. "
    "Bake the cake for 25 minutes until a skewer comes out clean.",
    "Use room-temperature eggs so the batter does not split. "
    "Line the tin with baking paper. Let the cake cool for ten minutes before turning it out.",
    "Sift the flour with the baking powder to avoid lumps. Never open the oven door early.",
]


def sources_of(result: Attribution, index: int) -> list[int]:
    return [s.candidate for s in result.segments[index].sources]


def test_copied_and_lightly_edited_sentences_credit_the_right_candidate():
    final = (
        "Preheat the oven to 200 °C. "  # copied from 0
        "Sift the flour together with the baking powder to avoid any lumps. "  # edited, 2
        "Let the cake cool for 10 minutes before you turn it out."  # edited, 1
    )
    result = attribute(final, CANDIDATES)
    assert [sources_of(result, i) for i in range(3)] == [[0], [2], [1]]
    assert result.segments[0].sources[0].score == pytest.approx(1.0)
    assert all(not s.novel for s in result.segments)
    assert all(DEFAULT_THRESHOLD <= s.score <= 1 for s in result.segments)


def test_new_sentences_are_novel_even_on_the_same_topic():
    final = (
        "Dust the top with icing sugar just before serving. "
        "A pinch of cardamom in the batter adds warmth."
    )
    result = attribute(final, CANDIDATES)
    assert all(s.novel and not s.sources for s in result.segments)


def test_a_short_sentence_does_not_match_every_candidate_that_shares_a_word():
    result = attribute("Enjoy! Bake it.", ["Enjoy your meal with friends.", "Bake it for an hour."])
    assert [s.novel for s in result.segments] == [True, True]


def test_merged_sentence_lists_both_candidates():
    final = "Preheat the oven to 200 °C and line the tin with baking paper."
    result = attribute(final, CANDIDATES)
    seg = result.segments[0]
    assert seg.merged and not seg.novel
    assert sorted(sources_of(result, 0)) == [0, 1]
    assert seg.score >= DEFAULT_THRESHOLD
    assert result.candidate_segments[0][0].kept and result.candidate_segments[1][1].kept


def test_every_candidate_that_said_the_same_thing_gets_credit():
    candidates = [
        "Water boils at 100 °C at sea level. It boils at lower temperatures on mountains.",
        "Fish need clean water.",
        "At sea level, water boils at 100 °C.",
    ]
    result = attribute("Water boils at 100 °C at sea level.", candidates)
    assert sources_of(result, 0) == [0, 2]  # best first
    scores = [s.score for s in result.segments[0].sources]
    assert scores == sorted(scores, reverse=True)


def test_code_blocks_are_attributed_whole():
    code = "```python\ndef area(r):\n    return 3.14159 * r * r\n```"
    other = "```python\ndef perimeter(r):\n    return 2 * 3.14159 * r\n```"
    result = attribute(f"Here it is:\n\n{code}", ["Try this.", f"Use this:\n\n{code}", other])
    assert result.segments[1].segment.kind == "code"
    assert sources_of(result, 1) == [1]


def test_candidate_columns_mark_kept_and_dropped_segments():
    final = "Preheat the oven to 200 °C. Something else entirely, about gardening tools."
    result = attribute(final, CANDIDATES)
    column = result.candidate_segments[0]
    assert [c.segment.text for c in column] == texts(CANDIDATES[0])
    assert column[0].kept and column[0].used_by == [0] and column[0].match == 0
    assert column[0].score == pytest.approx(1.0)
    assert not column[1].kept and not column[1].used_by
    assert all(not c.kept for c in result.candidate_segments[2])
    assert all(0.0 <= c.score <= 1.0 for col in result.candidate_segments for c in col)


# --- Shares, agreement ---------------------------------------------------------------------


def test_shares_and_novel_share_sum_to_one():
    final = (
        "Preheat the oven to 200 °C. Line the tin with baking paper. "
        "Serve it with whipped cream and fresh strawberries."
    )
    result = attribute(final, CANDIDATES)
    assert sum(result.share) + result.novel_share == pytest.approx(1.0)
    assert result.share[0] > 0 and result.share[1] > 0 and result.share[2] == 0
    assert result.novel_share > 0
    lengths = [len(s.segment.text) for s in result.segments]
    assert result.novel_share == pytest.approx(lengths[2] / sum(lengths))
    assert result.main_source == max(range(3), key=lambda i: result.share[i])


def test_a_segment_with_two_sources_splits_its_share_by_score():
    candidates = ["Water boils at 100 °C at sea level.", "At sea level, water boils at 100 °C."]
    result = attribute("Water boils at 100 °C at sea level.", candidates)
    a, b = result.segments[0].sources
    assert result.share[a.candidate] == pytest.approx(a.score / (a.score + b.score))
    assert result.main_source == a.candidate


def test_agreement_is_symmetric_and_favours_near_identical_candidates():
    candidates = [
        "Rome was not built in a day. The empire lasted for centuries in the west.",
        "Rome was not built in a day. The empire lasted for many centuries in the west.",
        "Photosynthesis turns light into chemical energy inside chloroplasts.",
    ]
    agreement = attribute("Rome was not built in a day.", candidates).agreement
    for a in range(3):
        assert agreement[a][a] == 1.0
        for b in range(3):
            assert agreement[a][b] == agreement[b][a]
            assert 0.0 <= agreement[a][b] <= 1.0
    assert agreement[0][1] > 0.7
    assert agreement[0][1] > agreement[0][2] + 0.5


# --- JSON contract -------------------------------------------------------------------------


def test_to_json_has_the_contract_shape_and_maps_candidate_ids():
    final = "Preheat the oven to 200 °C. Line the tin with baking paper. Add sprinkles."
    result = attribute(final, CANDIDATES)
    rows = result.to_json(candidate_ids=[3, 5, 7])
    assert json.loads(json.dumps(rows)) == rows
    assert [set(r) for r in rows] == [{"sentence", "sources", "novel"}] * 3
    assert rows[0] == {
        "sentence": "Preheat the oven to 200 °C.",
        "sources": [{"candidate": 3, "score": 1.0}],
        "novel": False,
    }
    assert rows[1]["sources"][0]["candidate"] == 5
    assert rows[2] == {"sentence": "Add sprinkles.", "sources": [], "novel": True}
    for row in rows:
        for src in row["sources"]:
            assert set(src) == {"candidate", "score"}
            assert src["score"] == round(src["score"], 3)
    assert result.to_json()[1]["sources"][0]["candidate"] == 1  # default: local indexes


def test_to_json_rejects_a_wrong_number_of_ids():
    with pytest.raises(ValueError, match="2 ids for 3 candidates"):
        attribute("Hi there.", CANDIDATES).to_json([0, 1])


# --- Edge cases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final", "candidates"),
    [
        ("", []),
        ("", ["Some text."]),
        ("   \n\n", ["x"]),
        ("One sentence.", []),
        ("A b.", ["", "  "]),
    ],
)
def test_empty_inputs_do_not_fail(final, candidates):
    result = attribute(final, candidates)
    assert all(s.novel and not s.sources for s in result.segments)
    assert result.share == [0.0] * len(candidates)
    assert result.main_source is None
    assert len(result.agreement) == len(candidates)
    assert result.novel_share == (1.0 if result.segments else 0.0)
    assert result.to_json() == [
        {"sentence": s.segment.text, "sources": [], "novel": True} for s in result.segments
    ]


def test_unknown_matcher_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="lexical"):
        attribute("x", ["y"], matcher="telepathy")


def test_long_answers_stay_fast():
    # A loose bound that catches an accidental all-pairs loop; bench/attribution.py measures.
    rng = random.Random(3)
    words = [f"w{i}" for i in range(400)] + ["the", "a", "of", "and", "to"] * 40

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "."

    candidates = [" ".join(sentence() for _ in range(140)) for _ in range(8)]
    final = " ".join(rng.choice(split_segments(c)).text for c in candidates for _ in range(4))
    start = time.perf_counter()
    result = attribute(final, candidates)
    assert time.perf_counter() - start < 2.0
    assert sum(not s.novel for s in result.segments) == len(result.segments)


# --- The labelled set ----------------------------------------------------------------------


def test_labelled_cases_segment_as_labelled():
    assert len(CASES) >= 40
    for case in CASES:
        assert texts(case["final"]) == [label["text"] for label in case["labels"]], case["id"]


def _precision_recall(kind: str) -> tuple[float, float]:
    predicted = labelled = correct = 0
    for case in CASES:
        result = attribute(case["final"], case["candidates"])
        for seg, label in zip(result.segments, case["labels"], strict=True):
            if label["kind"] != kind:
                continue
            got, want = {s.candidate for s in seg.sources}, set(label["sources"])
            predicted, labelled, correct = (
                predicted + len(got),
                labelled + len(want),
                correct + len(got & want),
            )
    return correct / predicted, correct / labelled


# Floors a little under what bench/attribution.py measured (see bench/RESULTS.md), so a
# regression fails while harmless ties and rounding do not.
@pytest.mark.parametrize(
    ("kind", "min_precision", "min_recall"),
    [("copied", 0.97, 0.97), ("edited", 0.97, 0.97), ("merged", 0.95, 0.9)],
)
def test_labelled_set_precision_and_recall_floors(kind, min_precision, min_recall):
    precision, recall = _precision_recall(kind)
    assert precision >= min_precision and recall >= min_recall, (precision, recall)


def test_labelled_set_new_sentences_are_flagged():
    # Round 2 traded a point of the flag's recall (0.91 -> 0.90 here) for precision: a left-over
    # final sentence and a dropped candidate sentence that mean the same are a paraphrase.
    flagged = total = right = predicted = 0
    for case in CASES:
        result = attribute(case["final"], case["candidates"])
        for seg, label in zip(result.segments, case["labels"], strict=True):
            predicted += seg.novel
            right += seg.novel and label["kind"] == "new"
            if label["kind"] == "new":
                total += 1
                flagged += seg.novel
    assert flagged / total >= 0.88, flagged / total
    assert right / predicted >= 0.9, right / predicted


# --- The semantic matcher ------------------------------------------------------------------

# The first held-out set, scored once and then moved into the tuning data (issue 12, round 2).
ROUND2 = json.loads((CASES_PATH.parent / "attribution_tuning_round2.json").read_text("utf-8"))[
    "cases"
]


def test_semantic_matcher_credits_a_paraphrase_lexical_calls_new():
    candidates = [
        "Keep your bedroom cool, dark and quiet.",
        "Go to bed and get up at the same time every day, even at weekends.",
    ]
    final = "Stick to one bedtime and one wake-up time every single day, weekends included."
    assert attribute(final, candidates, matcher="lexical").segments[0].novel
    seg = attribute(final, candidates, matcher="semantic").segments[0]
    assert not seg.novel and [s.candidate for s in seg.sources] == [1]


def test_semantic_matcher_credits_each_source_of_a_clause_merge():
    candidates = [
        "Green tea should be brewed with water around 80 °C; boiling water makes it bitter.",
        "Steep green tea for two to three minutes only.",
    ]
    final = (
        "For green tea, let the water cool to about 80 °C and brew it for no more than two or "
        "three minutes; hotter water turns it bitter."
    )
    seg = attribute(final, candidates, matcher="semantic").segments[0]
    assert sorted(s.candidate for s in seg.sources) == [0, 1] and seg.merged


def test_embeddings_are_computed_once_per_text():
    from moa import embeddings

    embedder = embeddings.get_embedder()
    final = "Stick to one bedtime and one wake-up time every single day, weekends included."
    candidates = ["Go to bed and get up at the same time every day, even at weekends."]
    attribute(final, candidates, matcher="semantic")
    before = embedder.computed
    attribute(final, candidates, matcher="semantic")
    assert embedder.computed == before  # the second attribution embedded nothing


def test_round2_tuning_cases_segment_as_labelled():
    units = [lab for c in ROUND2 for lab in c["labels"]]
    assert len(ROUND2) >= 25 and len(units) >= 200
    for case in ROUND2:
        assert texts(case["final"]) == [label["text"] for label in case["labels"]], case["id"]


def test_semantic_beats_lexical_on_the_round2_tuning_set():
    # Floors a little under what bench/attribution.py measures on this set, so a regression fails.
    from bench.attribution import evaluate

    sem, lex = evaluate(ROUND2, matcher="semantic"), evaluate(ROUND2, matcher="lexical")
    for kind in ("paraphrased", "merged"):
        assert sem.by_kind[kind].recall > lex.by_kind[kind].recall + 0.15, kind
    precision, recall = sem.novel()
    assert precision >= 0.9 and recall >= 0.85, (precision, recall)
    assert sem.by_kind["merged"].recall >= 0.9
    assert sem.by_format["code"].recall >= 0.95 and sem.by_format["table"].recall >= 0.8


def test_bench_reports_no_heldout_set_until_one_is_written(monkeypatch, tmp_path):
    from bench import attribution as bench

    monkeypatch.setattr(bench, "HELDOUT_PATH", tmp_path / "attribution_heldout4.json")
    monkeypatch.setattr(bench, "time_matchers", lambda: ["(speed skipped)"])
    monkeypatch.setattr(
        bench, "TUNING_PATHS", (CASES_PATH.parent / "attribution_tuning_extra.json",)
    )
    monkeypatch.setattr(bench, "evaluate_panel", lambda: {})
    body = bench.report()
    assert "No held-out set exists yet" in body and "held-out:" not in body
    assert "Matcher `semantic`, tuning:" in body


# --- Round 2 rules: tables, code, left-over paraphrases --------------------------------------


def test_table_row_is_kept_from_the_candidate_that_said_it_in_prose():
    candidates = [
        "TCP is connection-oriented and guarantees delivery in order. UDP is connectionless "
        "and has no delivery guarantee, but lower overhead.",
        "| | TCP | UDP |\n|---|---|---|\n| Connection | yes | no |\n| Speed | slower | faster |",
    ]
    final = (
        "| | TCP | UDP |\n|---|---|---|\n| Connection | yes | no |\n"
        "| Overhead | higher | lower |\n| Header size | 20 bytes | 8 bytes |"
    )
    for matcher in ("lexical", "semantic"):
        segs = attribute(final, candidates, matcher=matcher).segments
        assert [s.segment.text for s in segs][2] == "| Overhead | higher | lower |"
        assert [src.candidate for src in segs[0].sources] == [1]  # the header row, copied
        assert [src.candidate for src in segs[1].sources] == [1]
        assert [src.candidate for src in segs[2].sources] == [0], matcher  # said in prose
        assert segs[3].novel, matcher  # no candidate says anything about header size


def test_table_row_kept_from_a_candidate_table_with_edited_cells():
    candidates = [
        "| Food | How often |\n|---|---|\n| Vegetables and fruit | every meal |\n"
        "| Olive oil | daily |",
        "Sweets are fine now and then.",
    ]
    final = "| Food | How often |\n|---|---|\n| Vegetables and fruit | at every meal |"
    segs = attribute(final, candidates).segments
    assert [[src.candidate for src in s.sources] for s in segs] == [[0], [0]]


def test_code_with_renamed_variables_and_new_layout_is_kept():
    candidate = (
        "Sum the order lines:\n\n```python\ndef total(items):\n    s = 0\n"
        "    for x in items:\n        s += x.price * x.qty\n    return s\n```"
    )
    renamed = (
        "```python\ndef total(orders):\n  result=0\n  for order in orders: "
        "result += order.price*order.qty\n  return result\n```"
    )
    unrelated = "```python\ndef helper(values):\n    return sorted(v for v in values if v)\n```"
    other = "Prices are in cents, so divide by 100 to show euros."
    for matcher in ("lexical", "semantic"):
        seg = attribute(renamed, [other, candidate], matcher=matcher).segments[0]
        assert seg.segment.kind == "code" and [s.candidate for s in seg.sources] == [1]
        assert attribute(unrelated, [other, candidate], matcher=matcher).segments[0].novel


def test_code_that_applies_another_candidates_advice_credits_both():
    candidates = [
        'Loop over the files:\n\n```bash\nfor f in *.txt; do\n  wc -l "$f"\ndone\n```',
        "Use `nullglob` so the loop does not run on the literal pattern when nothing matches.",
        "For recursive search use find with -exec.",
    ]
    final = '```bash\nshopt -s nullglob\nfor f in *.txt; do\n  wc -l "$f"\ndone\n```'
    seg = attribute(final, candidates).segments[0]
    assert sorted(s.candidate for s in seg.sources) == [0, 1] and seg.merged


def test_left_over_paraphrase_is_credited_but_unrelated_new_text_is_not():
    # Not one shared content word: only meaning links the final sentence to candidate 1's.
    candidates = [
        "Work for 25 minutes, then take a 5-minute break. After four rounds take a longer break.",
        "Choose one task before you start the timer. If a distraction pops into your head, "
        "note it on paper and return to the task.",
    ]
    final = (
        "Work for 25 minutes, then take a 5-minute break. "
        "Choose one task before you start the timer. "
        "When something distracting comes to mind, jot it down and go straight back to work. "
        "Turning off phone notifications makes a bigger difference than the timer itself."
    )
    segs = attribute(final, candidates, matcher="semantic").segments
    assert [s.candidate for s in segs[2].sources] == [1]
    assert segs[3].novel
    assert attribute(final, candidates, matcher="lexical").segments[2].novel


def test_a_left_over_sentence_that_corrects_a_number_is_not_a_paraphrase():
    candidates = [
        "The Eiffel Tower was finished in 1889 for the World Fair. At the time it was the "
        "tallest structure in the world, standing 312 metres high.",
        "Paris has many museums, the Louvre being the largest.",
    ]
    final = (
        "The Eiffel Tower was finished in 1889 for the World Fair. When it opened, no building "
        "on earth was taller: it measured 300 metres. Paris has many museums, the Louvre being "
        "the largest."
    )
    segs = attribute(final, candidates, matcher="semantic").segments
    assert segs[1].segment.text.startswith("When it opened") and segs[1].novel
    same = final.replace("300 metres", "312 metres")
    assert [s.candidate for s in attribute(same, candidates).segments[1].sources] == [0]


# --- Round 3 rules: framing lines, table rows needing a supported cell ----------------------

# The second held-out set, scored once after the round-2 freeze and then moved into the tuning
# data (issue 12, round 3).
ROUND3 = json.loads((CASES_PATH.parent / "attribution_tuning_round3.json").read_text("utf-8"))[
    "cases"
]


def test_a_lead_in_is_new_unless_a_candidate_frames_the_same_way():
    candidates = [
        "For a minor burn, hold it under cool running water for at least 10 minutes. "
        "Then cover it loosely with cling film.",
        "Leave blisters intact, since they protect against infection.",
    ]
    final = (
        "For a minor burn:\n\n- Hold it under cool running water for at least 10 minutes.\n"
        "- Leave blisters intact, since they protect against infection."
    )
    for matcher in ("lexical", "semantic"):
        segs = attribute(final, candidates, matcher=matcher).segments
        assert segs[0].segment.text == "For a minor burn:" and segs[0].novel, matcher
        assert [s.candidate for s in segs[1].sources] == [0]
    # A candidate's own lead-in, kept as it was, is still credited.
    framed = ["Create one on columns you often filter or join on:\n\n```sql\nSELECT 1;\n```"]
    seg = attribute("Create one on columns you often filter or join on:", framed).segments[0]
    assert [s.candidate for s in seg.sources] == [0]


def test_a_heading_is_credited_only_from_a_candidate_heading():
    candidates = [
        "## First chords\n\nStart with G, C and D: they cover thousands of songs.",
        "Guidelines for a creamy risotto: stir often and add the stock a ladle at a time.",
    ]
    for matcher in ("lexical", "semantic"):
        segs = attribute("## First chords", candidates, matcher=matcher).segments
        assert [s.candidate for s in segs[0].sources] == [0], matcher
        segs = attribute("## How to make a creamy risotto", candidates, matcher=matcher).segments
        assert segs[0].novel, matcher


def test_a_table_header_row_is_credited_only_from_a_candidate_table():
    candidates = [
        "Landlords must return a deposit within a deadline after move-out that depends on the "
        "state: 14 days in California, 30 days in Texas.",
        "| State | Deadline |\n|---|---|\n| Texas | 30 days |",
    ]
    final = "| State | Deadline after move-out |\n|---|---|\n| California | 21 days |"
    segs = attribute(final, candidates[:1], matcher="semantic").segments
    assert segs[0].novel  # prose about deadlines is not where a table's header came from
    segs = attribute(final, candidates, matcher="semantic").segments
    assert [s.candidate for s in segs[0].sources] == [1]


def test_a_table_row_needs_one_of_its_cells_wholly_in_the_candidate():
    candidates = [
        "Where to buy matters less than fees: you buy an ETF through a broker, like a share, "
        "and an index fund is priced once a day after the close.",
    ]
    final = (
        "| | Index fund | ETF |\n|---|---|---|\n"
        "| Where to buy | Fund company or bank | Any brokerage account |"
    )
    # The rule that keeps a row still new after both matchers (the lexical matcher alone
    # leaves it to this rule): "fund" names a topic, no cell of the row is in the candidate.
    segs = attribute(final, candidates, matcher="lexical").segments
    assert segs[1].novel
    said = candidates[0].replace("an index fund", "an index fund from a fund company or bank")
    segs = attribute(final, [said], matcher="lexical").segments
    assert [s.candidate for s in segs[1].sources] == [0]


def test_round3_tuning_cases_segment_as_labelled():
    units = [lab for c in ROUND3 for lab in c["labels"]]
    assert len(ROUND3) >= 25 and len(units) >= 200
    for case in ROUND3:
        assert texts(case["final"]) == [label["text"] for label in case["labels"]], case["id"]


def test_semantic_matcher_on_the_round3_tuning_set():
    # Floors a little under what bench/attribution.py measures on this set (round 3: kept-pair
    # recall 0.89 at precision 0.98, novel flags 0.90 at recall 0.89, merged 0.80).
    from bench.attribution import evaluate

    sem = evaluate(ROUND3, matcher="semantic")
    precision, recall = sem.novel()
    assert precision >= 0.87 and recall >= 0.86, (precision, recall)
    assert sem.by_format["heading"].novel_recall >= 0.99
    assert sem.by_format["table"].novel_recall >= 0.99
    assert sem.overall.precision >= 0.94 and sem.overall.recall >= 0.87  # all segments


# --- Round 4 rules ----------------------------------------------------------------------------


def test_a_wholly_bold_short_line_is_a_heading():
    candidates = [
        "To see more meteors, go somewhere dark, let your eyes adapt for twenty minutes and "
        "look about halfway up the sky.",
        "**How to see more meteors**\n\nGet away from city lights.",
    ]
    final = "**How to see more meteors**\n\n- Go somewhere dark and give your eyes twenty minutes."
    for matcher in ("lexical", "semantic"):
        segs = attribute(final, candidates[:1], matcher=matcher).segments
        assert segs[0].segment.text == "**How to see more meteors**" and segs[0].novel, matcher
        segs = attribute(final, candidates, matcher=matcher).segments
        assert [s.candidate for s in segs[0].sources] == [1], matcher
    # Bold inside a sentence, or two bold runs, is not a heading.
    seg = attribute("**Keep** it dry and **warm**.", ["Keep it dry and warm."]).segments[0]
    assert [s.candidate for s in seg.sources] == [0]


def test_a_copied_table_row_does_not_credit_prose_that_only_describes_it():
    candidates = [
        "SQL defines four isolation levels. Read uncommitted allows dirty reads, where you see "
        "other transactions' uncommitted changes. Read committed prevents dirty reads but a row "
        "can change between two reads in the same transaction (a non-repeatable read). "
        "Repeatable read stops that, though the standard still allows phantom rows to appear. "
        "Serializable prevents all three anomalies.",
        "| Level | Dirty read | Non-repeatable read | Phantom |\n|---|---|---|---|\n"
        "| Read uncommitted | Possible | Possible | Possible |\n"
        "| Read committed | Prevented | Possible | Possible |\n"
        "| Repeatable read | Prevented | Prevented | Possible |\n"
        "| Serializable | Prevented | Prevented | Prevented |",
    ]
    final = (
        "| Level | Dirty read | Non-repeatable read | Phantom |\n|---|---|---|---|\n"
        "| Read committed | Prevented | Possible | Possible |\n"
        "| Serializable | Prevented | Prevented | Prevented |"
    )
    segs = attribute(final, candidates, matcher="semantic").segments
    assert [[s.candidate for s in seg.sources] for seg in segs] == [[1], [1], [1]]
