import sys

from faceops.caffe.install import main

sys.exit(main())
