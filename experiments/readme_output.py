"""Run a command and put what it prints into the README, between its markers, with the command.

    python experiments/readme_output.py bench-env -- python experiments/bench_env_overhead.py

replaces the text between ``<!-- output:bench-env -->`` and ``<!-- /output:bench-env -->`` in
README.md by the command and its standard output (a code block; with ``--markdown`` the output
as it is, for scripts that print markdown tables), so figures that benchmark
scripts print reach the README without being typed by hand. ``--from FILE`` takes the output
from a file an earlier run saved instead of running the command again (the command is still
shown). The command runs from the repository root; a failing command changes nothing.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replace_between(path: Path, kind: str, label: str, block: str) -> None:
    """Put ``block`` between ``<!-- KIND:LABEL -->`` and ``<!-- /KIND:LABEL -->`` in ``path``
    (the markers must exist; they stay). Every generated README section goes through here."""
    start, end = f"<!-- {kind}:{label} -->", f"<!-- /{kind}:{label} -->"
    content = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    path.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", content))


def replace_output(
    readme: Path, label: str, command: str, output: str, markdown: bool = False
) -> None:
    if markdown:  # the output is markdown (tables): shown as such, below its command
        block = f"`{command}`\n\n{output.strip()}"
    else:
        block = f"```\n$ {command}\n{output.rstrip()}\n```"
    replace_between(readme, "output", label, block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--from", dest="source", type=Path, help="take the output from here")
    parser.add_argument("--markdown", action="store_true", help="the output is markdown")
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("give the command after --")
    cut = argv.index("--")
    args, command = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    if args.source is not None:
        output = args.source.read_text()
    else:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-3000:])
            raise SystemExit(
                f"readme_output: error: {shlex.join(command)} exited {done.returncode}"
            )
        output = done.stdout
    replace_output(args.readme, args.label, shlex.join(command), output, args.markdown)
    print(output, end="")


if __name__ == "__main__":
    main()
