"""Entry point of the frozen kode-rpc executable: the same `main()` as the console script."""

import sys

from kode_rpc.cli import main

if __name__ == "__main__":
    sys.exit(main())
