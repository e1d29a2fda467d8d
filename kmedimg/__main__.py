import sys

from kmedimg.cli import main

sys.exit(main())
