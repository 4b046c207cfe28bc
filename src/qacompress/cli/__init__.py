"""The `qacompress` command: a thin layer over the library.

    qacompress compress  --model_name_or_path DIR --train_file F --target_speedup 2 --output_dir OUT
                                                        the fastest model for this CPU that keeps accuracy
    qacompress train     ...run_qa.py flags...          fine-tune with QAT / JPQD, evaluate, export
    qacompress evaluate  --model_name_or_path DIR ...   SQuAD EM/F1 of a torch or OpenVINO model dir
    qacompress prune     --model_name_or_path DIR --train_file F --target_macs 0.6 --output_dir OUT
    qacompress export    --model_name_or_path DIR --output_dir OUT [--variant auto|int8|int8_weights|fp32]
    qacompress predict   --model_name_or_path DIR --question Q --context C | --input_file F
    qacompress benchmark --model_name_or_path DIR [DIR ...]

User mistakes print one line and exit with status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import importlib
import sys

from qacompress.cli.common import setup_logging
from qacompress.core.errors import QACompressError

#: Verb -> its module under `qacompress.cli` (imported only when run: `qacompress --help` stays instant).
COMMANDS = ("compress", "train", "evaluate", "prune", "export", "predict", "benchmark")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qacompress` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nqacompress: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    setup_logging(debug)
    try:
        return importlib.import_module(f"qacompress.cli.{argv[0]}").run(argv[1:])
    except QACompressError as exc:
        if debug:
            raise
        print(f"qacompress: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qacompress: interrupted (completed checkpoints are kept; run the same command to resume)", file=sys.stderr)
        return 130
