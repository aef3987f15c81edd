"""The README's examples run as written, against the local stack `make run` starts.

A fenced ```sh or ```python block whose previous line is `<!-- test: run -->` (an HTML
comment: invisible once rendered) is runnable. Each one runs unchanged except for the address:
the README documents `make run`'s listener, 127.0.0.1:10000, and the stack here takes free
ports, so that address is replaced by the stack's. Shell snippets run under `bash`, Python
ones under this interpreter (the venv's). Each must exit 0, print an answer of the mock
provider, and be counted by the gateway as a governed request of the demo key.

The same module keeps the README honest in two cheaper ways: every relative link of README.md
and docs/ resolves (file and heading), and every repository path and `make` target the README
names exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.dev.mock_provider.text import WORDS
from extproc.dev.stack import LocalStack, child_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MARKER = "<!-- test: run -->"
DOCUMENTED_ADDRESS = "127.0.0.1:10000"  # the listener `make run` documents
RUNNERS = {"sh": ("bash", "-eo", "pipefail", "-c"), "python": (sys.executable, "-c")}
# An answer of the mock provider: its words, at least five in a row (extproc/dev/mock_provider).
ANSWER = re.compile(r"\b(?:{w})(?: (?:{w})){{4,}}\b".format(w="|".join(map(re.escape, WORDS))))


@dataclass(frozen=True)
class Snippet:
    language: str
    code: str
    line: int  # of the opening fence, 1-based

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def marked_snippets(text: str) -> tuple[list[Snippet], list[str]]:
    """The runnable snippets, and what is wrong with any marker that marks none."""
    lines = text.splitlines()
    snippets: list[Snippet] = []
    problems: list[str] = []
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[index + 1].strip() if index + 1 < len(lines) else ""
        opening = re.fullmatch(r"```(\w+)", fence)
        if opening is None or opening.group(1) not in RUNNERS:
            problems.append(f"line {index + 1}: {MARKER} is not followed by a sh or python fence")
            continue
        try:
            end = lines.index("```", index + 2)
        except ValueError:
            problems.append(f"line {index + 2}: the fence is never closed")
            continue
        code = "\n".join(lines[index + 2 : end]) + "\n"
        snippets.append(Snippet(opening.group(1), code, index + 2))
    return snippets, problems


SNIPPETS, PROBLEMS = marked_snippets(README.read_text())


def test_every_marker_marks_a_runnable_block() -> None:
    assert not PROBLEMS, PROBLEMS


def test_the_first_requests_are_marked() -> None:
    """The curl and the OpenAI SDK examples of "A first request" must stay under test."""
    assert any(s.language == "sh" and s.code.startswith("curl ") for s in SNIPPETS), SNIPPETS
    assert any(
        s.language == "python" and "from openai import OpenAI" in s.code for s in SNIPPETS
    ), SNIPPETS


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Iterator[LocalStack]:
    """What `make run` starts: the demo policies (key tg-demo), the mock provider, the
    in-process store; on ports the kernel picks."""
    root = tmp_path_factory.mktemp("readme")
    stack = LocalStack(
        policy_dir=REPO / "examples" / "policies", run_dir=root / "run", vocab_dir=vocab_dir
    ).start()
    yield stack
    stack.stop()


def governed_ok(stack: LocalStack) -> float:
    """tokengate_requests_total of the demo namespace with outcome ok, over every label."""
    url = f"http://127.0.0.1:{stack.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tokengate_requests"
        for sample in family.samples
        if sample.name == "tokengate_requests_total"
        and sample.labels.get("namespace") == "demo"
        and sample.labels.get("outcome") == "ok"
    )


def snippet_env() -> dict[str, str]:
    """Our environment without provider keys or SDK settings that would override what the
    snippet says (OPENAI_BASE_URL and the like)."""
    return {
        name: value
        for name, value in child_env().items()
        if not name.startswith(("OPENAI_", "ANTHROPIC_"))
    }


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_snippet_runs_as_written(snippet: Snippet, demo_stack: LocalStack, tmp_path: Path) -> None:
    assert DOCUMENTED_ADDRESS in snippet.code, f"{snippet} does not call {DOCUMENTED_ADDRESS}"
    address = demo_stack.base_url.removeprefix("http://")
    code = snippet.code.replace(DOCUMENTED_ADDRESS, address)
    before = governed_ok(demo_stack)

    done = subprocess.run(
        [*RUNNERS[snippet.language], code],
        capture_output=True,
        text=True,
        timeout=120,
        env=snippet_env(),
        cwd=tmp_path,
        check=False,
    )

    report = f"{snippet} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert ANSWER.search(done.stdout), f"no answer in the output: {report}"
    assert governed_ok(demo_stack) >= before + 1, f"not counted as a governed request: {report}"


# --- links, paths and make targets --------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
TOP_LEVEL = {entry.name for entry in REPO.iterdir() if not entry.name.startswith(".")}
REPO_PATH = re.compile(r"`([\w.-]+(?:/[\w.*-]+)*/?)`")


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a file's headings (outside code blocks)."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.+)", line)):
            text = heading.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize(
    "page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(REPO))
)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_paths_the_readme_names_exist() -> None:
    named = {
        path
        for path in REPO_PATH.findall(README.read_text())
        if path.split("/")[0] in TOP_LEVEL and "/" in path
    }
    assert named, "the pattern finds no path at all"
    missing = sorted(path for path in named if not list(REPO.glob(path.rstrip("/"))))
    assert not missing, missing


def test_make_targets_the_readme_names_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README.read_text()))
    assert named, "the pattern finds no make command at all"
    assert named <= targets, sorted(named - targets)
