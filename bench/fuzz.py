"""Longer fuzz run than tests/receive/test_fuzz.py: the same corpus with more rounds of random byte
flips (a new random draw each round), against a fresh ``radnode serve``.

    python3 -m bench.fuzz --rounds 20 --seed 23

Prints the outcome counts, the seconds taken and the node's resident memory before and after;
exits non-zero if any probe got no answer, the node died, or the spool kept a partial file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.support.fuzz_corpus import Sender, corpus, outcome_table
from tests.support.harness import NodeProcess, node_config
from tests.support.process_tree import tree_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds of mutations of the seed files")
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        config = node_config(workdir, node={"accept_all_storage": True})
        node = NodeProcess(config, workdir).start()
        try:
            probes = corpus(args.seed, byte_flip_rounds=args.rounds)
            rss_before = tree_rss(node.proc.pid)
            sender = Sender(node.port)
            started = time.monotonic()
            by_probe = [(p.name, sender.send(p)) for p in probes]
            outcomes = Counter(o for _, o in by_probe)
            sender.close()
            seconds = time.monotonic() - started
            rss_after = tree_rss(node.proc.pid)
            alive = node.proc.poll() is None
            partial = list((Path(config["node"]["spool"]) / "tmp").iterdir())
        finally:
            node.stop()
    print(f"{len(probes)} probes in {seconds:.0f} s: {dict(outcomes)}")
    print(outcome_table(by_probe))
    print(f"node RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB; alive: {alive}; "
          f"partial files: {len(partial)}")
    return 0 if alive and not partial else 1


if __name__ == "__main__":
    sys.exit(main())
