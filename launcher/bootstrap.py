"""`python -m launcher.bootstrap [--data_url=… --train_url=…]`, the training images' entrypoint:
see launcher.pod.bootstrap (and launcher.pod.modelarts for the arguments)."""

import sys

from launcher.pod.bootstrap import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
