"""The reliability benchmark, as a script: same as ``skprompt bench``.

    python benchmarks/reliability.py --quick          # about 15 minutes on 2 cores
    python benchmarks/reliability.py --size full      # the larger size

See ``skprompt bench --help`` for the options and ``docs/results.md`` for the
measured table.
"""

import sys

from skprompt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
