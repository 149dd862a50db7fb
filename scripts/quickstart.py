"""Print the commands of the README's Quickstart, one per line (used by .ci/run and the tests)."""
from __future__ import annotations

import re
import sys
from pathlib import Path


def quickstart_commands(readme: str) -> list[str]:
    section = re.search(r"^#+ [^\n]*Quickstart[^\n]*\n(.*?)(?=^#+ |\Z)", readme, re.S | re.M)
    if not section:
        raise SystemExit("README has no section whose heading contains 'Quickstart'")
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    if not block:
        raise SystemExit("the Quickstart section has no ```bash block")
    # a line ending in a backslash continues on the next, as in bash
    text = re.sub(r"\\\n\s*", " ", block.group(1))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.stdout.write("\n".join(quickstart_commands((root / "README.md").read_text())) + "\n")
