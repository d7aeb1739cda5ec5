import sys

from chatd.cli import main

sys.exit(main())
