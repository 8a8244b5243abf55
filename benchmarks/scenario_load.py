"""How long a big scenario takes to load, next to PyYAML + libyaml reading the same file.

    python benchmarks/scenario_load.py                  # every shape, 1k/10k/100k, median of 3
    python benchmarks/scenario_load.py --shape mixed --rules 100000 --runs 5
    python benchmarks/scenario_load.py --profile 100000 # cProfile of one load, top 40

The files are generated, in block style as people write them:
- mixed: rules of several stages, `match: {to: "*@x.test"}` (globs, lists, and a distinct
  regex in one rule of five), `reply: 550 5.1.1 ...`, `times: 1`: the heaviest of the three.
- addresses: one rule per refused address (`match: {to: user7@example.test}`), what a
  generated block list looks like.
- aliased: one anchored rule repeated with `- *r`, the shape of the 1 MiB, 140,000-rule file
  that issue 11 reports took 160 s. 100,000 copies pass the alias bound; 140,000 expand to
  1.26 million nodes and are refused, with one line saying so.
The baseline is `yaml.load(text, CSafeLoader)`: plain Python data with no line numbers and no
checks, which is what any YAML-reading tool pays at the least; fakesmtp also keeps every line
and validates every key. "table" is building the engine's rule table from the loaded scenario,
which `serve` and a PUT do next. Times are CPU seconds of this process (time.process_time), so
other load on the machine weighs less; wall-clock is printed alongside.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import yaml

from fakesmtp.engine import Engine
from fakesmtp.scenario import Scenario, collector_paused, load_scenario_text


def addresses_text(count: int) -> str:
    """One rule per refused address."""
    rule = (
        "  - on: rcpt\n    match: {{to: user{n}@example.test}}\n    reply: 550 5.1.1 No such user\n"
    )
    return "name: addresses\nrules:\n" + "".join(rule.format(n=n) for n in range(count))


def aliased_text(count: int) -> str:
    """One rule, repeated by alias."""
    first = "  - &r {on: rcpt, match: {to: '*@x.test'}, reply: 550 5.1.1 No such user}\n"
    return "name: aliased\nrules:\n" + first + "  - *r\n" * (count - 1)


def scenario_text(count: int) -> str:
    """``count`` rules of the shapes real scenarios use (every one different)."""
    lines = ["name: big", "rules:"]
    for n in range(count):
        kind = n % 5
        if kind == 0:
            lines += [
                "  - on: rcpt",
                f'    match: {{to: "*@x{n % 97}.test"}}',
                "    reply: 550 5.1.1 No such user",
            ]
        elif kind == 1:
            lines += [
                "  - on: rcpt",
                f'    match: {{to: ["u{n}@*", "*@y.test"]}}',
                "    reply: 450 4.2.1 Try later",
                "    times: 1",
            ]
        elif kind == 2:
            lines += [
                "  - on: mail",
                f'    match: {{from: "bounce-{n}@*"}}',
                "    reply: 553 5.7.1 Sender refused",
            ]
        elif kind == 3:
            lines += [
                "  - on: end_of_data",
                f'    match: {{subject: "*invoice {n}*"}}',
                "    reply: 554 5.7.1 Spam",
                f"    name: r{n}",
            ]
        else:
            lines += [
                "  - on: rcpt",
                f"    match: {{to: '/^u{n}[0-9]+@z[.]test$/'}}",
                "    reply: 550",
                "    times: 1",
                "    per: recipient",
            ]
    return "\n".join(lines) + "\n"


def timed(work: object, runs: int) -> tuple[float, float]:
    """Median CPU and wall seconds of ``runs`` calls."""
    cpu, wall = [], []
    for _ in range(runs):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        work()  # type: ignore[operator]
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rules", type=int, action="append", help="rule counts (default 1k, 10k, 100k)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", help="default: all")
    parser.add_argument("--profile", type=int, metavar="RULES", help="profile one load instead")
    args = parser.parse_args()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if args.profile:
        text = scenario_text(args.profile)
        profile = cProfile.Profile()
        profile.runcall(load_scenario_text, text, "big.yaml")
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return
    print(
        f"{'shape':>9} {'rules':>8} {'MiB':>5} {'fakesmtp cpu':>13} {'wall':>6}",
        f"{'table cpu':>10} {'yaml.load cpu':>14} {'ratio':>6}",
    )
    for shape in args.shape or list(SHAPES):
        for count in args.rules or [1_000, 10_000, 100_000]:
            text = SHAPES[shape](count)
            loaded = load_scenario_text(text, "big.yaml")
            assert len(loaded.rules) == count
            ours, ours_wall = timed(
                lambda text=text: load_scenario_text(text, "big.yaml"), args.runs
            )
            table, _ = timed(lambda loaded=loaded: build_table(loaded), args.runs)
            theirs, _ = timed(lambda text=text: yaml.load(text, Loader=loader), args.runs)
            print(
                f"{shape:>9} {count:>8,} {len(text) / 2**20:>5.1f} {ours:>12.3f}s"
                f" {ours_wall:>5.2f}s {table:>9.3f}s {theirs:>13.3f}s {ours / theirs:>5.2f}x"
            )


def build_table(scenario: Scenario) -> Engine:
    """The rule table, as the server builds it for a new scenario (collector paused)."""
    with collector_paused():
        return Engine(scenario)


SHAPES = {"mixed": scenario_text, "addresses": addresses_text, "aliased": aliased_text}


if __name__ == "__main__":
    main()
