"""`python -m tf_softprompt`: the `tf-softprompt` command line."""

import sys

from tf_softprompt.cli import main

sys.exit(main())
