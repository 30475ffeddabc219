import sys

from rwkvcpp.cli import main

sys.exit(main())
