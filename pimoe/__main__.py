import sys

from pimoe.cli.commands import main

sys.exit(main())
