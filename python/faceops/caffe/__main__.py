"""`python -m faceops.caffe install|uninstall ...` (also `faceops caffe ...`)."""

import sys

from faceops.caffe.install import main

if __name__ == "__main__":
    sys.exit(main())
