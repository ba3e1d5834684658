"""The README keeps its promises: the quick start's excerpt is what `python mixbo.py --sim` prints,
the README stays short, and no lab notes reach the README or the code.

The excerpt is the fenced block of README.md that starts with the line `$ python mixbo.py --sim`.
Its lines must appear in a fresh run's output in order and contiguously, except where a line
`  ...` marks an elision (any number of output lines, possibly none); without an elision at its
start or end the excerpt must begin or end where the output does. Trailing spaces are ignored, and
the `ledger:` line's path (the test writes its own ledger). To regenerate the excerpt:

    python tests/test_readme.py            # prints the first and last lines of a fresh run
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "$ python mixbo.py --sim"
ELISION = "..."
MAX_README_LINES = 400
LAB_NOTES = {                       # this file, which spells them out, is the one file not scanned
    "an issue number": re.compile(r"\bissues?\s+#?[0-9]", re.IGNORECASE),
    "a session": re.compile(r"\bthis\s+session\b", re.IGNORECASE),
    "a machine's nickname": re.compile(r"\bthis\s+box\b", re.IGNORECASE),
    "an uncommitted script": re.compile(r"\bone-off\s+scripts?\b", re.IGNORECASE),
    "a commit hash": re.compile(r"(?<![0-9A-Za-z_./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])"
                                r"[0-9a-f]{7,40}(?![0-9A-Za-z_-])"),
    "a commit": re.compile(r"\bcommit\s+[0-9a-f]{7,40}\b", re.IGNORECASE),
}


def readme_excerpt(text):
    """The quick start's excerpt: the lines of the fenced block opened by COMMAND, COMMAND first."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip() == COMMAND and i > 0 and lines[i - 1].startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md line {i + 1}: the excerpt's fence is never closed")
            return lines[i:end]
    raise ValueError(f"README.md has no fenced block starting with the line {COMMAND!r}")


def normalize(line):
    """A line as compared: trailing spaces dropped, the ledger's path dropped."""
    line = line.rstrip()
    return "ledger:" if line.startswith("ledger:") else line


def segments(excerpt):
    """(segments, open_start, open_end): the excerpt's runs of lines between elisions, and whether
    it starts or ends with an elision."""
    runs, current = [], []
    for line in excerpt:
        if line.strip() == ELISION:
            runs.append(current)
            current = []
        else:
            current.append(normalize(line))
    runs.append(current)
    return [r for r in runs if r], not runs[0], not runs[-1]


DECIMAL = re.compile(r"-?\d+\.\d+")


def same_line(readme, output):
    """Equal but for decimals printed to the same digits that differ by one unit in the last: the
    CPU's floating-point path (AVX2 or AVX-512 kernels) may round a sum either way."""
    x, y = DECIMAL.findall(readme), DECIMAL.findall(output)
    if DECIMAL.split(readme) != DECIMAL.split(output) or len(x) != len(y):
        return False
    unit = lambda d: 10.0 ** -len(d.split(".")[1])
    return all(len(u) == len(v) and abs(float(u) - float(v)) <= 1.5 * unit(u) for u, v in zip(x, y))


def mismatch(excerpt, output):
    """None if the excerpt matches the output lines, else a message with the first README line
    that differs from the output where that segment fits best. Each segment is placed at its
    earliest fit after the previous one (for ordered segments the earliest fit is never worse)."""
    runs, open_start, open_end = segments(excerpt)
    output = [normalize(line) for line in output]
    at = 0
    for k, run in enumerate(runs):
        fits = [s for s in range(at, len(output) - len(run) + 1)
                if all(map(same_line, run, output[s:s + len(run)]))]
        allowed = [s for s in fits if (s == 0 or k > 0 or open_start)
                   and (s + len(run) == len(output) or k < len(runs) - 1 or open_end)]
        if not allowed:
            where = f"excerpt segment {k + 1} (of {len(runs)})"
            if fits:
                return (f"{where} is in the output, but not at its {'start' if k == 0 else 'end'}"
                        f"; mark an elision with '  {ELISION}'")
            best = max(range(at, max(at + 1, len(output))),
                       key=lambda s: sum(map(same_line, run, output[s:])))
            j = next(j for j, line in enumerate(run)
                     if best + j >= len(output) or not same_line(line, output[best + j]))
            got = output[best + j] if best + j < len(output) else "<end of output>"
            return f"{where} does not match the output:\n  README: {run[j]!r}\n  output: {got!r}"
        at = allowed[0] + len(run)
    return None


def fresh_run():
    """stdout lines of `python mixbo.py --sim` (with COMMAND as line 0) and its exit code."""
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "mixbo.py", "--sim", "--ledger",
                               os.path.join(folder, "x.jsonl")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    return [COMMAND] + done.stdout.splitlines(), done.returncode, done.stderr


def test_excerpt_matcher_on_known_cases():
    output = ["$ cmd", "a", "ledger: /tmp/1", "b", "c", "d", "e"]
    assert mismatch(["$ cmd", "a", "ledger: runs/x.jsonl  ", "  ...", "e"], output) is None
    assert mismatch(["$ cmd", "  ...", "c", "  ...", "e"], output) is None
    assert mismatch(["  ...", "d", "e"], output) is None
    assert mismatch(["$ cmd", "a", "  ..."], output) is None
    assert mismatch(["$ cmd", "  ...", "d"], output) is not None           # not the end
    assert mismatch(["a", "  ...", "e"], output) is not None                # not the start
    assert mismatch(["$ cmd", "  ...", "d", "c", "  ..."], output) is not None   # out of order
    assert mismatch(["$ cmd", "a", "c", "  ..."], output) is not None       # an elided line
    assert mismatch(["$ cmd", "a", "ledger: x", "b", "c", "d", "e", "f"], output) is not None
    assert "not at its end" in mismatch(["$ cmd", "  ...", "b", "c"], output)
    assert mismatch(["x 2.5676 +- 0.0279"], ["x 2.5677 +- 0.0279"]) is None  # last digit
    assert mismatch(["x 2.5676 +- 0.0279"], ["x 2.5678 +- 0.0279"]) is not None
    assert mismatch(["x 2.5676 +- 0.0279"], ["x 2.567 +- 0.0279"]) is not None
    assert mismatch(["x 2.5676 +- 0.0279"], ["y 2.5676 +- 0.0279"]) is not None


def test_lab_note_patterns_catch_what_they_should():
    bad = ["see issue 8", "in this session", "on this box", "a one-off script",
           "measured at commit 8680416", "(3b848e0)"]
    good = ["sha256 of the files", "0x1E", "1e-6", "float64", "the 2-core box", "deadbeefcafe",
            "ab" * 32, "runs/x-seed0.jsonl", "m00 uniform"]
    assert all(any(p.search(text) for p in LAB_NOTES.values()) for text in bad)
    assert not any(p.search(text) for p in LAB_NOTES.values() for text in good)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it <= {MAX_README_LINES}"


def python_files():
    """The repository's .py files: tracked or not ignored (git), else every .py outside hidden
    and data/ folders (data/stage holds downloaded packages)."""
    try:
        names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                "*.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        return sorted({ROOT / name for name in names if (ROOT / name).is_file()})
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in ROOT.rglob("*.py") if not any(
            part.startswith(".") or part in ("stage", "corpus") for part in p.parts[-4:-1]))


def test_no_lab_notes_in_readme_or_code():
    files = [README] + [p for p in python_files() if p != Path(__file__).resolve()]
    found = [f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()[:80]}"
             for path in files for i, line in enumerate(path.read_text().splitlines(), 1)
             for what, pattern in LAB_NOTES.items() if pattern.search(line)]
    assert not found, "lab notes (say it for a reader who has only the repository):\n" + \
        "\n".join(found)


def test_quick_start_excerpt_matches_a_fresh_run():
    excerpt = readme_excerpt(README.read_text())
    output, returncode, stderr = fresh_run()
    assert returncode == 0, f"python mixbo.py --sim exited {returncode}: {stderr[-2000:]}"
    problem = mismatch(excerpt, output)
    assert problem is None, problem + "\n(regenerate it: python tests/test_readme.py)"


if __name__ == "__main__":
    lines, code, err = fresh_run()
    head, tail = 9, 21          # the header and trial 0; the last trial and the summary
    shown = lines if len(lines) <= head + tail else lines[:head] + ["  " + ELISION] + lines[-tail:]
    print("\n".join("ledger: runs/default-mfkg-seed0.jsonl" if line.startswith("ledger:")
                    else line.rstrip() for line in shown))
    if code:
        print(err, file=sys.stderr)
    sys.exit(code)
