import sys

from noisypref.cli import main

sys.exit(main())
