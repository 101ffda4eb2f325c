"""Host stand-in for Argo's test image ``argoproj/argosay:v2`` (run when it has no command).

Behaviour by first argument, as the image does: none or ``echo`` -> prints ``hello argo``;
``echo MSG`` -> prints MSG; ``echo MSG FILE`` -> writes MSG to FILE (creating folders);
``cat FILE`` -> prints FILE; ``assert_contains FILE TEXT`` -> exit 0 only if FILE contains TEXT;
``exit [CODE]`` -> exits CODE; ``sleep DURATION`` -> sleeps; ``sh FILE`` -> runs FILE with sh;
anything else -> exit 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def _seconds(text: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
    return total


def main(argv: list[str]) -> int:
    if not argv or (argv[0] == "echo" and len(argv) == 1):
        print("hello argo")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "echo":
        if len(rest) >= 2:
            os.makedirs(os.path.dirname(os.path.abspath(rest[1])), exist_ok=True)
            with open(rest[1], "w") as f:
                f.write(rest[0])
            return 0
        print(rest[0])
        return 0
    if cmd == "cat" and rest:
        with open(rest[0]) as f:
            sys.stdout.write(f.read())
        return 0
    if cmd == "assert_contains" and len(rest) >= 2:
        with open(rest[0]) as f:
            return 0 if rest[1] in f.read() else 1
    if cmd == "exit":
        return int(rest[0]) if rest else 0
    if cmd == "sleep" and rest:
        time.sleep(_seconds(rest[0]))
        return 0
    if cmd == "sh" and rest:
        return subprocess.call(["sh", rest[0]])
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
