"""Markdown tables for the generated docs."""

from synthfm.report.markdown import markdown_table


def test_markdown_table() -> None:
    assert markdown_table([{"a": 1, "b": "x"}]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert markdown_table([{"a": 1, "b": "x"}], ["b"]) == "| b |\n|---|\n| x |"
    assert markdown_table([]) == ""
