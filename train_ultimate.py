#!/usr/bin/env python
"""Compatibility entry point: `python train_ultimate.py train ...` is `camodet train ...`."""

import sys

from camodet.cli import main

if __name__ == "__main__":
    sys.exit(main())
