import sys

from builder.fetch.command import main

sys.exit(main(sys.argv[1:]))
