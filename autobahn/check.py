#!/usr/bin/env python3
"""Judge an Autobahn fuzzingclient run: compare with the committed baseline and with the policy.

The baseline (expected-results.json, case id -> {behavior, behaviorClose}) is only ever written
by --write-baseline from a real run, so that a regression in any case shows up as a diff.
Independently of the baseline, every case must be OK, except that 7.1.6 and 7.13.x may be
INFORMATIONAL (the suite only describes what happened there) as long as the suite's close check
found their close OK; a baseline that records a failure therefore never makes the check pass.

Exit status: 0 when the run matches the baseline and the policy, 1 otherwise, 2 on bad input.
"""

import argparse
import collections
import json
import os
import sys

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]


def case_key(case_id):
    # Numeric order, so 1.1.10 sorts after 1.1.9 in output and in the written baseline.
    return tuple(int(part) if part.isdigit() else part for part in case_id.split("."))


def informational_allowed(case_id):
    return case_id == "7.1.6" or case_id.startswith("7.13.")


def load_results(reports_dir, agent):
    index_path = os.path.join(reports_dir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("check: cannot read %s: %s" % (index_path, e), file=sys.stderr)
        sys.exit(2)
    if agent is None:
        if len(index) != 1:
            print("check: index.json has agents %s; pick one with --agent" % sorted(index), file=sys.stderr)
            sys.exit(2)
        agent = next(iter(index))
    if agent not in index:
        print("check: agent %r not in index.json (has %s)" % (agent, sorted(index)), file=sys.stderr)
        sys.exit(2)
    return index[agent]


def case_detail(reports_dir, entry):
    """The report's own words for what happened, for cases that are not OK."""
    name = entry.get("reportfile")
    if not name:
        return ""
    try:
        with open(os.path.join(reports_dir, name)) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return ""
    parts = []
    if report.get("remoteCloseCode") is not None:
        parts.append("server close code %s" % report["remoteCloseCode"])
    for key in ("result", "resultClose"):
        text = report.get(key)
        if text:
            parts.append("%s: %s" % (key, " ".join(str(text).split())))
    return "; ".join(parts)


def close_was_ok(reports_dir, entry):
    """Whether the suite's own close verdict was OK.

    7.1.6 and 7.13.x overwrite behaviorClose with INFORMATIONAL unconditionally, after the
    suite's generic close check has run; that check's verdict survives only as its resultClose
    text, which is "Connection was properly closed" exactly when it judged the close OK.
    """
    if entry.get("behaviorClose") == "OK":
        return True
    if entry.get("behaviorClose") != "INFORMATIONAL":
        return False
    try:
        with open(os.path.join(reports_dir, entry.get("reportfile", ""))) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    return report.get("resultClose") == "Connection was properly closed"


def policy_violations(results, reports_dir):
    bad = []
    for case_id in sorted(results, key=case_key):
        entry = results[case_id]
        behavior, close = entry.get("behavior"), entry.get("behaviorClose")
        if informational_allowed(case_id):
            ok = behavior in ("OK", "INFORMATIONAL") and close_was_ok(reports_dir, entry)
        else:
            ok = behavior == "OK" and close == "OK"
        if not ok:
            bad.append(case_id)
    return bad


def print_counts(results):
    for field in ("behavior", "behaviorClose"):
        counts = collections.Counter(entry.get(field, "MISSING") for entry in results.values())
        names = BEHAVIORS + sorted(set(counts) - set(BEHAVIORS))
        line = ", ".join("%s %d" % (name, counts.get(name, 0)) for name in names)
        print("%-13s %s" % (field + ":", line))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", default=os.path.join(here, "reports", "servers"),
                        help="directory holding the suite's index.json")
    parser.add_argument("--baseline", default=os.path.join(here, "expected-results.json"))
    parser.add_argument("--agent", help="agent name in index.json (default: the only one)")
    parser.add_argument("--write-baseline", action="store_true",
                        help="record this run as the baseline (the policy is still checked)")
    parser.add_argument("--skip", action="append", default=[], metavar="PREFIX",
                        help="baseline cases whose id starts with PREFIX were not run (repeatable)")
    args = parser.parse_args()

    if args.write_baseline and args.skip:
        parser.error("--write-baseline records every case: not with --skip")
    results = load_results(args.reports, args.agent)
    results = {k: v for k, v in results.items() if not any(k.startswith(p) for p in args.skip)}
    actual = {
        case_id: {"behavior": entry.get("behavior"), "behaviorClose": entry.get("behaviorClose")}
        for case_id, entry in results.items()
    }
    failed = False
    # Every case id seen on either side; a case fails on a baseline diff or a policy breach.
    all_cases = set(actual)
    failed_cases = set()

    print("autobahn: %d cases" % len(actual))
    print_counts(results)

    if args.write_baseline:
        ordered = collections.OrderedDict(
            (case_id, actual[case_id]) for case_id in sorted(actual, key=case_key))
        with open(args.baseline, "w") as f:
            json.dump(ordered, f, indent=1)
            f.write("\n")
        print("autobahn: baseline written to %s" % args.baseline)
    else:
        try:
            with open(args.baseline) as f:
                expected = json.load(f)
        except (OSError, ValueError) as e:
            print("check: cannot read baseline %s: %s" % (args.baseline, e), file=sys.stderr)
            sys.exit(2)
        expected = {k: v for k, v in expected.items() if not any(k.startswith(p) for p in args.skip)}
        diffs = []
        all_cases |= set(expected)
        for case_id in sorted(all_cases, key=case_key):
            if case_id not in actual:
                failed_cases.add(case_id)
                diffs.append("%-10s in baseline, not in this run" % case_id)
            elif case_id not in expected:
                failed_cases.add(case_id)
                diffs.append("%-10s not in baseline, got %s / %s" % (
                    case_id, actual[case_id]["behavior"], actual[case_id]["behaviorClose"]))
            elif actual[case_id] != {k: expected[case_id].get(k) for k in ("behavior", "behaviorClose")}:
                failed_cases.add(case_id)
                diffs.append("%-10s expected %s / %s, got %s / %s" % (
                    case_id, expected[case_id].get("behavior"), expected[case_id].get("behaviorClose"),
                    actual[case_id]["behavior"], actual[case_id]["behaviorClose"]))
        if diffs:
            failed = True
            print("autobahn: %d case(s) differ from the baseline (behavior / behaviorClose):" % len(diffs))
            for line in diffs:
                print("  " + line)

    bad = policy_violations(results, args.reports)
    failed_cases |= set(bad)
    if bad:
        failed = True
        print("autobahn: %d case(s) break the policy (all OK; 7.1.6 and 7.13.x may be "
              "INFORMATIONAL with an OK close):" % len(bad))
        for case_id in bad:
            entry = results[case_id]
            print("  %-10s %s / %s  %s" % (case_id, entry.get("behavior"), entry.get("behaviorClose"),
                                          case_detail(args.reports, entry)))

    # The plain "N passed, N failed" form, which CI logs are read for.
    print("autobahn: %d passed, %d failed" % (len(all_cases) - len(failed_cases), len(failed_cases)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
