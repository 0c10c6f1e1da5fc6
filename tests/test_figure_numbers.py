"""The book's figure numbering (_ext/figure_numbers.py) on hand-made Sphinx number tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "_ext"))

from figure_numbers import renumber  # noqa: E402


def test_twins_share_the_chapter_number_and_the_rest_close_ranks():
    # as Sphinx numbers them in reading order: the chapter page, then its notebook pages
    sphinx = {
        "chapters/02": {"figure": {"fig-a": (2, 1), "fig-b": (2, 2)}, "displaymath": {"e": (2, 1)}},
        "notebooks/02": {"figure": {"nb-fig-b": (2, 3), "nb-fig-a": (2, 4), "nb-only": (2, 5),
                                    "nb-fig-c": (2, 6)}},
        "chapters/01": {"figure": {"fig-c": (1, 1)}},
        "notebooks/02b": {"figure": {"extra": (2, 7)}},
    }
    out = renumber(sphinx)
    assert out["notebooks/02"]["figure"] == {"nb-fig-b": (2, 2), "nb-fig-a": (2, 1),
                                             "nb-only": (2, 3), "nb-fig-c": (1, 1)}
    assert out["notebooks/02b"]["figure"] == {"extra": (2, 4)}  # no gap left by the twins
    assert out["chapters/02"] == sphinx["chapters/02"]  # equations untouched
    assert sphinx["notebooks/02"]["figure"]["nb-fig-a"] == (2, 4)  # input not modified


def test_pages_without_a_chapter_number_get_appendix_numbers():
    sphinx = {"notebooks/explorables": {"figure": {"x": (1,), "y": (2,)}},
              "notebooks/cover": {"figure": {"z": (3,)}}}
    out = renumber(sphinx)
    assert out["notebooks/explorables"]["figure"] == {"x": ("A", 1), "y": ("A", 2)}
    assert out["notebooks/cover"]["figure"] == {"z": ("A", 3)}


def test_the_cover_page_is_front_matter_and_does_not_shift_the_appendix():
    sphinx = {"index": {"figure": {"teaser": (1,)}},
              "notebooks/explorables": {"figure": {"x": (2,), "y": (3,)}}}
    out = renumber(sphinx, front="index")
    assert out["index"]["figure"] == {"teaser": ("0", 1)}
    assert out["notebooks/explorables"]["figure"] == {"x": ("A", 1), "y": ("A", 2)}
