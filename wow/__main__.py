import sys

from wow.cli.main import main

sys.exit(main())
