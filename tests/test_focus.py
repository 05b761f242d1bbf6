"""A table passage in the prompt shows the rows the question names; a long prose passage the sentences it asks about."""

from __future__ import annotations

from enclave.chat.focus import focus, window
from enclave.chat.rag import format_context
from enclave.core.protocols import Chunk

RECORDS = "\n".join(
    [
        "Fixers",
        "Columns: From | To",
        *(
            f"From: {a}; To: {b}"
            for a, b in [
                ("failUnlessEqual(a, b)", "assertEqual(a, b)"),
                ("assertEquals(a, b)", "assertEqual(a, b)"),
                ("failIfEqual(a, b)", "assertNotEqual(a, b)"),
                ("failUnless(a)", "assertTrue(a)"),
                ("failIf(a)", "assertFalse(a)"),
                ("failUnlessRaises(exc, cal)", "assertRaises(exc, cal)"),
            ]
        ),
    ]
)

MARKDOWN = """Type codes
| Type code | C Type | Python Type |
|---|---|---|
| 'b' | signed char | int |
| 'B' | unsigned char | int |
| 'u' | wchar_t | Unicode character |
| 'h' | signed short | int |
| 'H' | unsigned short | int |"""


def test_records_keep_the_heading_the_columns_and_the_named_row() -> None:
    got = focus("In 2to3, what is the To of From `failIf(a)`?", RECORDS)
    assert got.splitlines() == ["Fixers", "Columns: From | To", "From: failIf(a); To: assertFalse(a)"]


def test_a_markdown_table_keeps_its_header_and_prefers_the_value_as_written() -> None:
    got = focus("In array, what is the C Type of Type code `'B'`?", MARKDOWN).splitlines()
    assert got[:3] == MARKDOWN.splitlines()[:3]
    assert got[3:] == ["| 'B' | unsigned char | int |"]  # the value as written, not 'b' in another case


def test_words_of_the_question_pick_the_row_when_nothing_is_quoted() -> None:
    got = focus("Which C type does the array module use for wchar_t codes?", MARKDOWN)
    assert "| 'u' | wchar_t | Unicode character |" in got and "signed short" not in got


def test_prose_few_rows_and_unmatched_questions_leave_the_passage_whole() -> None:
    prose = "Paris is the capital of France.\nIt has been since 987: Hugh Capet made it so."
    assert focus("What is the capital of France?", prose) == prose
    assert focus("Anything about `nothing-here`?", RECORDS) == RECORDS  # no row holds what it names
    small = "\n".join(RECORDS.splitlines()[:4])  # two rows: nothing to leave out
    assert focus("In 2to3, what is the To of From `failUnlessEqual(a, b)`?", small) == small


def test_the_prompt_shows_a_far_row_that_the_700_character_cut_would_drop() -> None:
    rows = [f"Name: item{i}; Size: {i * 10} bytes; Note: {'filler words ' * 3}" for i in range(40)]
    chunk = Chunk(id="t:1", text="Sizes\n" + "\n".join(rows), title="Sizes.xlsx", uri="Sizes.xlsx", score=1.0)
    context = format_context([chunk], question="What is the Size of Name `item37`?")
    assert "Size: 370 bytes" in context and "item3;" not in context
    assert "Size: 370 bytes" not in format_context([chunk])  # without the question: the first 700 characters


def test_the_cell_a_question_asks_for_is_found_by_its_row_value_and_column() -> None:
    from enclave.chat.focus import named_cell, says_cell

    assert named_cell("In array, what is the C Type of Type code `'B'`?", MARKDOWN) == ("C Type", "unsigned char")
    assert named_cell("In 2to3, what is the To of From `failIf(a)`?", RECORDS) == ("To", "assertFalse(a)")
    assert named_cell("What is the To of `nothing`?", RECORDS) is None  # no row holds the value
    assert named_cell("What does the array module do?", MARKDOWN) is None  # nothing quoted
    assert says_cell("The To of failIf(a) is `assertFalse(a)` [1].", "assertFalse(a)")
    assert not says_cell("It is assertFalseish.", "assertFalse(a)")


def test_an_answer_from_a_named_row_is_verified_only_when_it_gives_that_cell() -> None:
    from enclave.chat.answerability import answer_note, term_weights

    question = "In collections.abc, what is the Abstract Methods of ABC `Container [1]`?"
    passage = (
        "collections.abc — Abstract Base Classes\nColumns: ABC | Inherits from | Abstract Methods\n"
        "ABC: Container [1]; Abstract Methods: __contains__\nABC: Hashable [1]; Abstract Methods: __hash__\n"
        "ABC: Sized [1]; Abstract Methods: __len__"
    )
    weights = term_weights(question, [passage])
    # A bare cell used to fail "names no command, module or setting" (the question says "Methods").
    assert answer_note(question, "Abstract Methods: __contains__", passage, weights) is None
    note = answer_note(question, "The Abstract Methods of Container is __hash__.", passage, weights)
    assert note == "its passage's row gives the Abstract Methods as `__contains__`"


def test_a_long_passage_shows_the_run_of_sentences_the_question_is_about() -> None:
    opening = "cut(1) General Commands Manual. " + "Synopsis: cut OPTION... [FILE]... " * 8
    tail = "Print selected parts of lines from each FILE to standard output. With no FILE, read standard input."
    text = opening + "\n" + tail
    got = window("Which command prints selected parts of lines from each file?", text, 200)
    assert got.startswith("… ") and "selected parts of lines" in got and len(got) <= 200
    # Where the beginning holds the question's words as well as any later run, the beginning stays.
    assert window("What does the cut synopsis say?", text, 200) == text[:200]
    assert window("anything", "short passage", 200) == "short passage"
