"""Where a served request's CPU time goes: a py-spy raw profile, summed by component.

py-spy record -p PID -d 20 -r 100 -f raw -o profile.txt --threads
python bench/profile_summary.py profile.txt
"""

import re
import sys
from collections import Counter

CATEGORIES = [
    ("inference (OpenVINO/TensorFlow)", re.compile(r"openvino|tensorflow|keras")),
    ("image decode + resize (Pillow)", re.compile(r"PIL/|app/data/images\.py")),
    ("multipart parsing", re.compile(r"python_multipart|multipart|formparsers")),
    ("batching + numpy stacking", re.compile(r"app/serving/batcher\.py|numpy")),
    ("HTTP server (uvicorn)", re.compile(r"uvicorn|httptools|h11")),
    ("FastAPI / Starlette / pydantic", re.compile(r"fastapi|starlette|pydantic|anyio")),
    ("our handlers and manager", re.compile(r"app/")),
]


# Threads waiting for work: not time a request spends.
IDLE = re.compile(r"Condition\.wait|_worker \(concurrent/futures/thread\.py|select|epoll|poll \(")


def categorise(stack: str) -> str:
    # The innermost matching frame decides (a decode called from a handler is "decode").
    for frame in reversed(stack.split(";")):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other (event loop, threads, Python runtime)"


def main(path: str) -> None:
    totals: Counter[str] = Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if count.isdigit() and not IDLE.search(stack.split(";")[-1]):
                totals[categorise(stack)] += int(count)
    total = sum(totals.values()) or 1
    print("| component | share of busy samples |")
    print("|---|---:|")
    for name, n in totals.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
