"""`python -m launcher.bootstrap`, the training images' entrypoint: see launcher.pod.bootstrap."""

import sys

from launcher.pod.bootstrap import main

if __name__ == "__main__":
    sys.exit(main())
