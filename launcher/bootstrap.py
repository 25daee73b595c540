"""`python -m launcher.bootstrap`, the training images' entrypoint: see launcher.pod.bootstrap."""

import sys

from launcher.pod.bootstrap import run_as_program

if __name__ == "__main__":
    run_as_program(sys.argv[1:])
