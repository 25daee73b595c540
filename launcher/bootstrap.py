"""`python -m launcher.bootstrap [--data_url=… --train_url=…]`, the training images' entrypoint:
see launcher.pod.bootstrap (and launcher.pod.modelarts for the arguments)."""

import sys

from launcher.pod.bootstrap import run_as_program

if __name__ == "__main__":
    run_as_program(sys.argv[1:])
