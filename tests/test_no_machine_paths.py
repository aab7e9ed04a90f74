"""Committed reports, model cards, logs and docs name no folder of the machine that made them."""
import re
import subprocess

from rewire_lib.files.paths import REPO_ROOT

# Text files a person reads or a tool loads; source code and tests may name example paths.
DOC_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".csv", ".log", ".txt")
MACHINE_PATH = re.compile(r"(?<![\w<])/(?:work|tmp|root|home)/[\w.-]+")


def test_committed_documents_carry_no_absolute_machine_path():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        if not name.endswith(DOC_SUFFIXES) or name.startswith("tests/"):
            continue
        text = (REPO_ROOT / name).read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{name}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "absolute machine paths in committed documents:\n" + "\n".join(offenders[:20])
