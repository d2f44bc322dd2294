"""Where a command's CPU goes, by kind of process: the test suite's, for instance.

    python -m benchmarks.suite_cpu -- make test        # takes as long as the command

On 2 cores the suite is bound by CPU (docs/develop.md), so what costs is CPU-seconds, not waiting.
Every process on the machine is read from /proc each half second: its user and system time, and
its command line as started (a Ray worker's title instead, which says what it became, cut to the
length of its first command line). Processes already running when the command starts are left
out. They are grouped by what they are: a stage (`lmp train`), a Ray worker by its actor's class or
a Ray daemon, a server (MLflow, Prefect, PostgreSQL), pytest's lanes, DVC. A process living under
half a second may be missed, and each loses at most its last half second.

suite_wall_seconds, suite_cpu_seconds: the command's wall time and its processes' CPU-seconds;
suite_cpu_s_<kind>: the largest kinds' (the table prints every kind).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import save_results

TICKS = os.sysconf("SC_CLK_TCK")
# (pattern, kind), the first that matches; {0} is the pattern's group. `lmp` is read apart.
KINDS = ((r"^ray::(\w+)", "ray::{0}"),
         (r"/ray/.*\b(raylet|gcs_server|dashboard|log_monitor|monitor|runtime_env|default_worker)\b",
          "ray {0}"),
         (r"mlflow\.pyfunc\.scoring_server", "mlflow models serve"),
         (r"mlflow|huey", "mlflow server"),
         (r"prefect\.server|prefect server", "prefect server"),
         (r"prefect worker", "prefect worker"),
         (r"prefect", "prefect flow run or CLI"),
         (r"xdist|pytest|exec\(eval\(sys\.stdin", "pytest lanes"),
         (r"/dvc (?:-\S+ )*(\w+)", "dvc {0}"),
         (r"postgres", "postgres"),
         (r"multiprocessing\.spawn", "torch ranks (multiprocessing)"),
         (r"python\S* (?:-\S+ )*-m ?(\S+)", "python -m {0}"),
         (r"^\S*python\S* (?:\S*/)?(\S+)", "python {0}"))


def processes() -> dict[str, tuple[float, str]]:
    """{pid:start time: (CPU-seconds so far, command line)} of every process now."""
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seen[f"{pid}:{fields[19]}"] = ((int(fields[11]) + int(fields[12])) / TICKS,
                                       cmdline.strip() or stat[stat.index("(") + 1:stat.rindex(")")])
    return seen


def kind(cmdline: str) -> str:
    """What a process is, from its command line."""
    from lm_pipeline.cli import COMMANDS

    words = cmdline.split()
    names = [Path(word).name for word in words[:2]]
    at = names.index("lmp") if "lmp" in names and names[0] in ("lmp", "python", "python3") else None
    if at is not None:
        return "lmp " + next((word for word in words[at + 1:] if word in COMMANDS), "")
    for pattern, name in KINDS:
        if found := re.search(pattern, cmdline):
            return name.format(*found.groups())
    return Path(words[0]).name if words else "?"


def measure(cmd: list[str]) -> tuple[int, float, dict[str, float], Counter]:
    """Run cmd while sampling; its exit code, wall time, CPU-seconds by kind and processes by kind."""
    before = set(processes())
    start, first, latest = time.monotonic(), {}, {}
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        now = {key: value for key, value in processes().items() if key not in before}
        first |= {key: cmdline for key, (_, cmdline) in now.items() if key not in first}
        latest |= now
        time.sleep(0.5)
    wall = time.monotonic() - start
    cpu, count = Counter(), Counter()
    for key, (seconds, cmdline) in latest.items():
        # A Ray worker's title says what it became; anything else is what it was started as.
        name = kind(cmdline if cmdline.startswith("ray::") else first[key])
        cpu[name] += seconds
        count[name] += 1
    return proc.returncode, wall, cpu, count


def main() -> int:
    cmd = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    if not cmd:
        print(__doc__)
        return 2
    code, wall, cpu, count = measure(cmd)
    total = sum(cpu.values())
    print(f"\n{' '.join(cmd)}: exit {code}, {wall:.0f} s wall, {total:.0f} CPU-seconds\n")
    print("| process | count | CPU-s | share |\n|---|---|---|---|")
    for name, seconds in cpu.most_common():
        print(f"| {name} | {count[name]} | {seconds:.1f} | {seconds / max(total, 1e-9):.1%} |")
    slug = {name: re.sub(r"\W+", "_", name).strip("_").lower() for name in cpu}
    save_results({"suite_wall_seconds": wall, "suite_cpu_seconds": total} |
                 {f"suite_cpu_s_{slug[name]}": seconds for name, seconds in cpu.most_common(12)},
                 replaces="suite_")
    return code


if __name__ == "__main__":
    sys.exit(main())
