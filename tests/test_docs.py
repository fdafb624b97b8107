"""The code cites the project's own contract, ``docs/contract.md``, and only sections it has.

Comments and docstrings point readers at ``docs/contract.md §n``. A citation of a document that
is not in the repository, or of a section the contract does not have, sends a reader nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
README = ROOT / "README.md"

#: Where citations live: the package, its tests, benchmarks, examples and the documentation.
SCANNED_FOLDERS = ("invoke_middleware", "tests", "bench", "examples", "schemas", "docs")
SCANNED_FILES = ("README.md", "CHANGELOG.md")

#: The name of the product contract that is not in the repository, as a whole upper-case word.
#: The character class keeps this file from matching itself.
OUTSIDE_CONTRACT = re.compile(r"\bS[P]EC\b")

#: ``docs/contract.md`` followed by one section or a list of them: ``§3``, ``§3, §4 and §6``.
CITATION = re.compile(r"docs/contract\.md((?:\s*(?:,|and|or)?\s*§\s?\d+(?:\.\d+)*)+)")
SECTION_NUMBER = re.compile(r"§\s?(\d+(?:\.\d+)*)")

#: A numbered heading of the contract: ``## 5. Where a request may go``.
SECTION_HEADING = re.compile(r"^#{2,6} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)

#: The sections the code was written against; they must never disappear or be renumbered.
CITED_SECTIONS = {str(number) for number in range(1, 10)}

#: A relative link from the contract to a section of the README.
README_LINK = re.compile(r"\]\(\.\./README\.md#([a-z0-9-]+)\)")


def scanned_files() -> Iterator[Path]:
    """Every text file in the scanned folders (symbolic links and caches left out)."""
    for folder in SCANNED_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts:
                continue
            yield path
    for name in SCANNED_FILES:
        yield ROOT / name


def read_text(path: Path) -> str | None:
    """The file's text, or ``None`` for a file that is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def cited_sections(text: str) -> list[str]:
    """The contract sections ``text`` cites, in order."""
    return [
        number
        for citation in CITATION.finditer(text)
        for number in SECTION_NUMBER.findall(citation.group(1))
    ]


def contract_sections() -> list[str]:
    """The numbers of the contract's headings, in order."""
    return SECTION_HEADING.findall(CONTRACT.read_text(encoding="utf-8"))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, dashes."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


# The examples spell the file name through DOC, so that they are not citations of this file's.
DOC = "docs/contract.md"


@pytest.mark.parametrize(
    ("text", "sections"),
    [
        pytest.param(f"see {DOC} §5.", ["5"], id="one"),
        pytest.param(f"rules ({DOC} §3, §4, §6)", ["3", "4", "6"], id="list"),
        pytest.param(f"{DOC} §3 and §5", ["3", "5"], id="and"),
        pytest.param(f"{DOC} §1: slugs", ["1"], id="before-a-colon"),
        pytest.param(f"relay ({DOC} §4) and errors ({DOC} §8)", ["4", "8"], id="two"),
        pytest.param(f"{DOC} §10.2", ["10.2"], id="subsection"),
        pytest.param(f"§5 on its own, and {DOC} alone", [], id="no-citation"),
        pytest.param(f"{DOC} §4; §8 of something else", ["4"], id="list-ends"),
    ],
)
def test_citations_are_read_with_every_section_they_list(text: str, sections: list[str]) -> None:
    assert cited_sections(text) == sections


def test_no_file_cites_a_contract_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scanned_files()
        if (text := read_text(path)) is not None
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE_CONTRACT.search(line)
    ]
    assert offenders == [], "cite docs/contract.md §n instead:\n" + "\n".join(offenders)


def test_every_citation_names_a_section_of_the_contract() -> None:
    sections = set(contract_sections())
    dangling = [
        f"{path.relative_to(ROOT)}: §{number}"
        for path in scanned_files()
        if (text := read_text(path)) is not None
        for number in cited_sections(text)
        if number not in sections
    ]
    assert dangling == [], f"docs/contract.md has sections {sorted(sections)}:\n" + "\n".join(
        dangling
    )


def test_contract_keeps_each_section_the_code_is_written_against_once() -> None:
    sections = contract_sections()
    assert len(sections) == len(set(sections)), sections
    assert set(sections) >= CITED_SECTIONS


def test_contract_links_only_to_readme_sections_that_exist() -> None:
    headings = re.findall(r"^#{1,6} (.+)$", README.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    links = README_LINK.findall(CONTRACT.read_text(encoding="utf-8"))
    assert links, "the contract links to the README for configuration"
    assert set(links) <= anchors, sorted(set(links) - anchors)


def test_readme_contents_link_to_the_contract() -> None:
    contents = README.read_text(encoding="utf-8").split("## Contents", 1)[1].split("\n## ", 1)[0]
    assert "(docs/contract.md)" in contents
