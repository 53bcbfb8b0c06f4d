"""python -m tests.models.golden [--write [--overwrite]]: compare the kernels with the stored
bits (the default), or store them (see the package docstring for when that is legitimate)."""

from __future__ import annotations

import argparse
import sys

from tests.models.golden import PATH, THREADS, compute, differences, environment_note, load, write


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.models.golden", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"store the results in {PATH}")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args()
    if args.write:
        write(overwrite=args.overwrite)
        return 0
    stored, env = load()
    lines: list[str] = []
    lines += differences(stored, compute(lines.append))
    for line in lines:
        print(line)
    if lines:
        print(environment_note(env))
        return 1
    print(f"all {len(stored)} arrays equal to {PATH}, bit for bit, on {THREADS} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
